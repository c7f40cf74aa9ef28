"""The menu fitter of the train stage (``polar train --method menu``): M2 on dense menu runs.

M2 (:class:`polar.selection.menu_network.MenuNetwork`, the PoLar network scored over a menu) is fitted on the
reward matrix of ``polar label --menu`` folders with exactly the settings ``TrainConfig.menu`` declares
(params.yaml ``train.m2_*``), whole questions held out (:func:`polar.training.split.split_matrix`), and saved as a
predictor that ranks its menu: the accuracy mode's checkpoint and gain threshold, those that answer the most
held-out inputs right. It trains on the CPU: the network is small and every question is embedded alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from polar.embedder import load_embedder
from polar.labeling.folder import INPUTS, REWARDS
from polar.predictor import save
from polar.selection.matrix import Matrix
from polar.selection.menu_network import MenuNetwork, embed_each
from polar.settings import TrainConfig
from polar.training.provenance import TrainResult, label_source, predictor_meta
from polar.training.split import split_matrix

__all__ = ["train_menu"]


def train_menu(
    label_paths: Sequence[str | Path], out_dir: str | Path, config: TrainConfig, base_model: str | None = None
) -> TrainResult:
    """Fit M2 on menu runs and save it, with its ``history.json``, into ``out_dir``.

    Args:
        label_paths: ``polar label --menu`` folders, or a file in one (their matrices are joined).
        out_dir: folder for ``predictor.safetensors``, ``config.json`` and ``history.json``.
        config: training settings (``method`` menu): ``menu`` (M2's), ``val_fraction`` and ``m2_margin``.
        base_model: the model spec the predictor records (default: the one the menu runs name).

    Returns:
        The kept checkpoint (the step whose choice answers the most held-out inputs right).
    """
    folders = [Path(p) if Path(p).is_dir() else Path(p).parent for p in label_paths]
    matrix = Matrix.concat([Matrix.load(f) for f in folders])
    label_files = [f / REWARDS for f in folders]
    source = label_source(label_files)
    m2 = config.menu
    train, validation = split_matrix(matrix, config.val_fraction, m2.m2_seed)
    embedder = load_embedder(m2.m2_embedder)
    net = MenuNetwork(m2, matrix.programs, matrix.depth, embedder.dim)
    net.fit(
        train,
        *embed_each(list(train.inputs["question"]), embedder),
        validation,
        *embed_each(list(validation.inputs["question"]), embedder),
        config.m2_margin,
    )
    data = {"inputs": len(matrix.ids), "train_inputs": len(train.ids), "val_inputs": len(validation.ids)}
    best = net.best["accuracy"]
    result = TrainResult(
        Path(out_dir),
        "menu",
        best["step"],
        "step",
        m2.m2_steps,
        "val_right",
        float(best["value"]),
        tuple(str(p) for p in label_files),
        data | {"menu_programs": len(matrix.programs)},
    )
    meta = predictor_meta(
        config,
        base_model=base_model or source.model,
        embedder=m2.m2_embedder,
        label_files=label_files,
        hashed=[f / name for f in folders for name in (REWARDS, INPUTS)],
        source=source,
        data=data,
    )
    meta |= {"best": {"step": best["step"], "val_right": best["value"]}, "result": result.to_dict()}
    save(net.predictor("accuracy", meta), out_dir)
    Path(out_dir, "history.json").write_text(json.dumps(net.history, indent=2) + "\n")
    return result
