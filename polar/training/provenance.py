"""What a trained predictor records about how it was made, and what a training run returns.

Both fitters train on label folders of one prompt, one generation budget and one base model
(:func:`label_source` refuses a mixture), and both write the same ``meta`` into the predictor's ``config.json``
(:func:`predictor_meta`): the base model, the embedder, the label files and their hash, the prompt and budget
that evaluation and serving must use, the settings the method read, what it trained on. A run returns a
:class:`TrainResult`, which ``meta["result"]`` holds too, so that the pipeline reads it back after the DVC stage.
This module imports nothing heavy.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from polar.hashing import sha256_files
from polar.labeling.folder import check_same_numerics, labels_prompt, read_settings

if TYPE_CHECKING:
    from polar.settings import TrainConfig
    from polar.tasks.prompts import PromptSpec

__all__ = ["LabelSource", "TrainResult", "label_source", "predictor_meta"]


@dataclass(frozen=True)
class LabelSource:
    """What every label folder of one training run shares."""

    prompt: PromptSpec
    max_new_tokens: int | None  # the generation budget the rewards were graded under
    model: str | None  # the base model as the folders' settings name it
    numerics: dict | None = None  # the dtype, device and CPU threads they were computed with (None: unrecorded)


def label_source(label_files: Sequence[str | Path]) -> LabelSource:
    """The one prompt, generation budget and base model that ``label_files`` were made with.

    Args:
        label_files: files inside label folders (``labels.jsonl`` of search folders, ``rewards.parquet`` of menu
            folders); each folder's ``settings.json`` is read.

    Returns:
        What they share.

    Raises:
        FileNotFoundError: a file or its folder's settings is missing.
        ValueError: the folders differ in prompt (:class:`polar.tasks.prompts.PromptMismatch`), budget or model.
    """
    prompt = labels_prompt(label_files)
    settings = {str(path): read_settings(Path(path).parent) for path in label_files}
    budgets = {path: s.get("config", {}).get("max_new_tokens") for path, s in settings.items()}
    models = {path: s.get("model") for path, s in settings.items()}
    for what, values in (("generation budgets", budgets), ("base models", models)):
        if len(set(values.values())) > 1:
            made = "; ".join(f"{path}: {value}" for path, value in values.items())
            raise ValueError(
                f"the label files were made with different {what} ({made}): a predictor is trained on labels of "
                "one base model and one budget, those it is evaluated and served with; label them again alike"
            )
    numerics = check_same_numerics({path: Path(path).parent for path in label_files})
    return LabelSource(prompt, next(iter(budgets.values())), next(iter(models.values())), numerics)


def predictor_meta(
    config: TrainConfig,
    *,
    base_model: str,
    embedder: str,
    label_files: Sequence[str | Path],
    hashed: Sequence[str | Path],
    source: LabelSource,
    data: dict,
) -> dict:
    """The ``meta`` of a trained predictor's ``config.json``.

    Args:
        config: the training settings (the ones ``config.method`` reads are recorded).
        base_model: the model spec the predictor runs on.
        embedder: the question embedder it reads.
        label_files: the label files it was trained on (recorded as given).
        hashed: the files whose content the ``labels_sha256`` covers (the label files, or a menu folder's matrix).
        source: their prompt and budget, which evaluation and serving must use as labeling did.
        data: counts of what it was trained on.

    Returns:
        The dict, in the order the network has always written it (``method`` after ``train``).
    """
    return {
        "base_model": base_model,
        "embedder": embedder,
        "label_files": [str(p) for p in label_files],
        "labels_sha256": sha256_files(hashed),
        "prompt": source.prompt.to_dict(),  # evaluation and serving prompt exactly as labeling did
        "max_new_tokens": source.max_new_tokens,  # and the same generation budget
        "numerics": source.numerics,  # and the same dtype (and CPU threads) as labeling computed with
        "train": config.method_settings(),
        "method": config.method,
        "data": data,
    }


@dataclass(frozen=True)
class TrainResult:
    """What one training run kept: which checkpoint, chosen by which validation metric, from which inputs."""

    out_dir: Path
    method: str  # network or menu
    best: int  # the epoch (network) or step (menu) of the kept checkpoint
    unit: str  # "epoch" or "step"
    trained: int  # epochs or steps run in all
    metric: str  # what chose the checkpoint: val_loss (the lowest) or val_right (the most held-out inputs right)
    value: float  # its value at ``best``
    label_files: tuple[str, ...]
    data: dict[str, int] = field(default_factory=dict)  # counts of the inputs used (and the menu's size)

    def to_dict(self) -> dict:
        return asdict(self) | {"out_dir": str(self.out_dir), "label_files": list(self.label_files)}

    def to_json(self) -> str:
        """The result as one line of JSON (``meta["result"]`` holds it as the dict :meth:`to_dict`)."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict, out_dir: str | Path | None = None) -> TrainResult:
        """The result of :meth:`to_dict`; ``out_dir`` given: the folder it was read from (it may have moved)."""
        values = data | {"label_files": tuple(data["label_files"])}
        return cls(**values | {"out_dir": Path(out_dir if out_dir is not None else data["out_dir"])})

    @classmethod
    def read(cls, predictor_dir: str | Path) -> TrainResult:
        """The result a trained predictor folder records in its ``config.json``.

        Raises:
            FileNotFoundError: no ``config.json`` there.
            ValueError: it records no result (trained before results were recorded: train it again).
        """
        path = Path(predictor_dir) / "config.json"  # polar.predictor.CONFIG, not imported: it loads torch
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: {predictor_dir} is no predictor folder (run `polar train`)")
        meta = json.loads(path.read_text()).get("meta", {})
        if "result" not in meta:
            raise ValueError(f"{path} records no training result: it predates them; run `polar train` again")
        return cls.from_dict(meta["result"], predictor_dir)
