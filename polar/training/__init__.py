"""The train stage: one entry, :func:`train`, and one fitter per ``TrainConfig.method``.

- :mod:`~polar.training.network`: the PoLar network on search labels (``labels.jsonl``), decoded into programs.
- :mod:`~polar.training.menu`: M2, the same network scored over a menu, on dense menu runs.
- :mod:`~polar.training.provenance`: what both record in a predictor's ``meta`` and return (:class:`TrainResult`).
- :mod:`~polar.training.split`: the one question-level split both hold validation out by.

Which settings each method reads is declared beside :class:`polar.settings.TrainConfig` (``TRAIN_SETTINGS``);
the other method's settings are refused there. Importing this package loads nothing heavy: the fitters load
when :func:`train` runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from polar.training.provenance import TrainResult

if TYPE_CHECKING:
    from polar.settings import TrainConfig

__all__ = ["TrainResult", "train"]


def train(
    label_paths: Sequence[str | Path],
    out_dir: str | Path,
    config: TrainConfig,
    base_model: str | None = None,
    device: str = "auto",
    backbone=None,
) -> TrainResult:
    """Train what ``config.method`` names on ``label_paths`` and save it as a predictor folder in ``out_dir``.

    Args:
        label_paths: method network, merged label files of one base model (``labels.jsonl``); method menu, menu
            run folders (``polar label --menu``) or files in them.
        out_dir: folder for ``predictor.safetensors``, ``config.json`` and ``history.json``.
        config: training settings.
        base_model: the model spec the predictor records and ``backbone:N`` embedders load (default: the one the
            labels name).
        device: where the network trains (method network; M2 trains on the CPU).
        backbone: an already loaded base model for ``backbone:N`` embedders (spares loading it again).

    Returns:
        The kept checkpoint: its epoch or step, the validation metric that chose it, the inputs used.
    """
    from polar.backbone import pinned_threads
    from polar.labeling.folder import check_same_numerics
    from polar.settings import recorded_threads

    # Labels of one dtype, device and thread count; the training's own arithmetic on the labels' threads, so that
    # the checkpoint does not depend on the machine's cores.
    try:
        numerics = check_same_numerics({str(p): Path(p) if Path(p).is_dir() else Path(p).parent for p in label_paths})
    except FileNotFoundError:
        numerics = None  # not label folders: the method's own reading says what is missing
    with pinned_threads(recorded_threads(numerics)):
        if config.method == "menu":
            from polar.training.menu import train_menu

            return train_menu(label_paths, out_dir, config, base_model)
        from polar.training.network import train_network

        return train_network(label_paths, out_dir, config, base_model, device, backbone)
