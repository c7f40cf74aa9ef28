"""Where the pipeline's stages write, per base model: the one copy of dvc.yaml's layout (a test holds them equal).

The pipeline summary, its MLflow run and the registry read the stages' outputs through :class:`Outputs`;
``dvc.yaml`` spells the same paths with ``${key}`` for the model (``tests/test_settings.py`` checks them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["TASKS", "Outputs"]

TASKS = Path("data/tasks")  # the ingest stage: train, validation, test and shots Parquet files, manifest.json


@dataclass(frozen=True)
class Outputs:
    """The files of one base model's chain, under the project ``root``."""

    root: Path
    model: str

    @property
    def weights(self) -> Path:  # convert
        return self.root / "models" / self.model

    @property
    def labels(self) -> Path:  # label: labels.jsonl, settings.json, manifest.json
        return self.root / "data" / "labels" / self.model

    @property
    def validation(self) -> Path:  # validate: validation.json (the gate's summary), validation.html, gx/
        return self.root / "reports" / self.model / "validation" / "validation.json"

    @property
    def accepted(self) -> Path:  # validate: the distributions of the last accepted labels
        return self.root / "data" / "accepted" / f"{self.model}.json"

    @property
    def predictor(self) -> Path:  # train
        return self.root / "models" / "predictors" / self.model

    @property
    def evaluation(self) -> Path:  # evaluate: metrics.json, results.jsonl, report.md, the plot, timings.json
        return self.root / "reports" / self.model / "evaluation"

    @property
    def registry(self) -> Path:  # register: the version and the promotion decision
        return self.root / "reports" / self.model / "registry.json"

    def stage_outputs(self) -> dict[str, list[Path]]:
        """What each per-model stage of dvc.yaml declares as its outputs (outs, metrics and plots)."""
        ev = self.evaluation
        return {
            "convert": [self.weights],
            "label": [self.labels],
            "validate": [self.validation, self.accepted],
            "train": [self.predictor],
            "evaluate": [ev / "results.jsonl", ev / "report.md", ev / "metrics.json", ev / "accuracy_vs_layers.png"],
            "register": [self.registry],
        }
