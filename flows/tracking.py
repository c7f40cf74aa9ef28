"""One MLflow run per pipeline run: its parameters, and what every stage wrote, model by model.

The pipeline flow opens the run (``start_pipeline_run``), logs each stage's outputs after the stage
(``log_stage``: whether DVC ran it or found it up to date, the run records the state the pipeline
ended in) and closes it. ``polar register`` nests its own run, which holds the registered model,
under the pipeline's run (``POLAR_PIPELINE_RUN_ID``).
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

from polar.labeling.folder import MANIFEST, MERGED, read_labels, read_timings
from polar.layout import Outputs
from polar.tracking import configure, git_commit
from polar.training import TrainResult

__all__ = ["end_pipeline_run", "log_stage", "start_pipeline_run"]


def _flatten(data: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _metric(name: str) -> str:
    """An MLflow-safe metric name (letters, digits, ``_ - . / space``)."""
    return re.sub(r"[^\w\-./ ]", "_", name.replace("@", "_at_"))


def start_pipeline_run(root: str | Path, name: str, tags: dict[str, str] | None = None) -> str:
    """Open the pipeline's MLflow run, log params.yaml flattened; returns the run id."""
    import mlflow
    import yaml

    configure(root=root)
    params = yaml.safe_load((Path(root) / "params.yaml").read_text())
    run = mlflow.start_run(
        run_name=name, tags={"polar.kind": "pipeline", "git_commit": git_commit(root), **(tags or {})}
    )
    mlflow.log_params({k: "null" if v is None else v for k, v in _flatten(params).items()})
    return run.info.run_id


def end_pipeline_run(outcome: dict[str, str] | None) -> None:
    """Close the pipeline's run: FINISHED when every model registered, else FAILED (with each outcome as a tag)."""
    import mlflow

    if outcome:
        mlflow.set_tags({f"outcome.{model}": result for model, result in outcome.items()})
    ok = outcome is not None and all(v == "registered" for v in outcome.values())
    mlflow.end_run("FINISHED" if ok else "FAILED")


def log_stage(root: str | Path, model: str, stage: str) -> None:
    """Log what ``stage`` wrote for ``model`` (metrics and files under ``<model>/<stage>/``) to the active run."""
    import mlflow

    out = Outputs(Path(root), model)
    metrics: dict[str, float] = {}
    files: list[Path] = []
    if stage == "label":
        records = read_labels(out.labels) if (out.labels / MERGED).exists() else []
        if records:
            metrics["inputs"] = len(records)
            metrics["base_correct_share"] = sum(r.base_correct for r in records) / len(records)
            metrics["valid_share"] = sum(bool(r.valid) for r in records) / len(records)
        timings = read_timings(out.labels)  # not a DVC output: the run's own search times
        if timings:
            metrics["search_seconds"] = sum(timings.values())
        files = [out.labels / "manifest.json", out.labels / "settings.json"]
    elif stage == "validate":
        if out.validation.exists():
            metrics["success"] = float(json.loads(out.validation.read_text())["success"])
        files = [out.validation, out.validation.with_name("validation.html")]
    elif stage == "train":
        # Not trained, or a predictor older than recorded results (a failed run leaves one): its files only.
        with contextlib.suppress(FileNotFoundError, ValueError):
            metrics |= _train_metrics(TrainResult.read(out.predictor))
        files = [out.predictor / "config.json", out.predictor / "history.json"]
    elif stage == "evaluate":
        path = out.evaluation / "metrics.json"
        if path.exists():
            data = json.loads(path.read_text())
            for method, row in data["methods"].items():
                metrics[f"{method}.pass@1"] = row["pass@1"]
                metrics[f"{method}.layers_ratio"] = row["layers_ratio"]
            metrics["identity_share"] = data["identity_share"]
        timings = out.evaluation / "timings.json"  # not a DVC output
        if timings.exists():
            metrics |= {k: v for k, v in json.loads(timings.read_text()).items() if isinstance(v, int | float)}
        files = [path, out.evaluation / "report.md", out.evaluation / "accuracy_vs_layers.png", timings]
    elif stage == "register":
        if out.registry.exists():
            info = json.loads(out.registry.read_text())
            mlflow.set_tag(f"{model}.registered", f"{info['name']} v{info['version']}")
        files = [out.registry]
    metrics_, files_ = _menu_stage(out, stage)
    metrics |= metrics_
    files += files_
    if metrics:
        mlflow.log_metrics({_metric(f"{model}/{stage}/{k}"): float(v) for k, v in metrics.items()})
    for path in files:
        if path.exists():
            mlflow.log_artifact(str(path), artifact_path=f"{model}/{stage}")


def _train_metrics(result: TrainResult) -> dict[str, float]:
    """A training run's kept checkpoint, whichever method made it: e.g. best_val_loss and best_epoch, epochs."""
    return {
        f"best_{result.metric}": result.value,
        f"best_{result.unit}": result.best,
        f"{result.unit}s": result.trained,
    }


def _menu_stage(out: Outputs, stage: str) -> tuple[dict[str, float], list[Path]]:
    """What a menu-chain stage wrote: the menu, each split's matrix size, the gate, every candidate's scores."""
    import mlflow

    metrics: dict[str, float] = {}
    files: list[Path] = []
    if stage == "menu":
        files = [out.menu_file]
    elif stage.startswith("label-"):
        manifest = out.menus / stage.removeprefix("label-") / MANIFEST
        if manifest.exists():
            data = json.loads(manifest.read_text())
            metrics = {"inputs": data["inputs"], "base_correct": data.get("base_correct") or 0}
        files = [manifest]
    elif stage == "validate-menu":
        if out.menu_validation.exists():
            metrics["success"] = float(json.loads(out.menu_validation.read_text())["success"])
        files = [out.menu_validation, out.menu_validation.with_name("validation.html")]
    elif stage == "select":
        frozen = out.selection / "frozen.json"
        if frozen.exists():  # every candidate's validation score: how many were tried
            for name, row in json.loads(frozen.read_text())["validation_scores"].items():
                metrics[f"val.{name}.pass@1"] = row["pass1"]
        files = [frozen, out.selection / "test.json"]
    elif stage == "evaluate-menu":
        path = out.study_evaluation / "metrics.json"
        if path.exists():
            data = json.loads(path.read_text())
            for name, row in data["scores"].items():
                metrics[f"test.{name}.pass@1"] = row["pass1"]
                metrics[f"test.{name}.layers_ratio"] = row["layers_ratio"]
            mlflow.set_tag(f"{out.model}.summary", data["summary"][:5000])
        files = [path, out.study_evaluation / "report.md", out.study_evaluation / "accuracy_vs_layers.png"]
    elif stage == "register-menu":
        if out.study_registry.exists():
            info = json.loads(out.study_registry.read_text())
            mlflow.set_tag(f"{out.model}.champion", f"{info['name']} v{info['champion']} ({info['champion_method']})")
        files = [out.study_registry]
    return metrics, files
