"""`polar pipeline`: run the Prefect pipeline flow (flows/pipeline.py) on this DVC project and sum it up.

The flow itself lives in ``flows/`` (orchestration beside the library, as Prefect projects lay it out);
this module finds it, checks the request, and reads back what the stages wrote for the summary.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["base_models", "check_models", "load_flows", "outputs", "project_root", "registry_status", "summary"]

FLOWS = Path(__file__).resolve().parents[1] / "flows"


def project_root(cwd: str | Path = ".") -> Path:
    """The DVC project to run: ``cwd`` when it has dvc.yaml and params.yaml."""
    root = Path(cwd).resolve()
    missing = [name for name in ("dvc.yaml", "params.yaml") if not (root / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"{root} has no {' or '.join(missing)}: run `polar pipeline` from the root of a polar checkout"
        )
    return root


def base_models(root: str | Path) -> list[str]:
    """The base models of params.yaml, in order."""
    import yaml

    return list(yaml.safe_load((Path(root) / "params.yaml").read_text()).get("base_models") or {})


def check_models(root: str | Path, models: list[str] | None) -> None:
    """Refuse base models that params.yaml does not list (before any server starts)."""
    known = base_models(root)
    unknown = sorted(set(models or []) - set(known))
    if unknown:
        raise ValueError(f"unknown base models {unknown}: params.yaml lists {known} (add one under base_models)")


def outputs(root: str | Path, model: str) -> dict[str, Path]:
    """Where the stages of dvc.yaml write ``model``'s outputs (the one copy of that layout outside dvc.yaml)."""
    root, reports = Path(root), Path(root) / "reports" / model
    return {
        "labels": root / "data" / "labels" / model,
        "validation": reports / "validation" / "validation.json",
        "predictor": root / "models" / "predictors" / model,
        "evaluation": reports / "evaluation",
        "registry": reports / "registry.json",
    }


def registry_status(info: dict) -> str:
    """One line for a registration (registry.json): the version and what the gates decided."""
    decision = info.get("promotion", {})
    alias = (
        "@champion"
        if decision.get("promoted")
        else "@candidate (not champion: " + "; ".join(decision.get("reasons", [])) + ")"
    )
    return f"{info['name']} v{info['version']} {alias}"


def load_flows(name: str = "pipeline") -> ModuleType:
    """Import ``flows/<name>.py`` of this checkout (by module name, so that Prefect can deploy its flows)."""
    path = FLOWS / f"{name}.py"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: polar must be installed from a checkout (pip install -e .)")
    if str(FLOWS) not in sys.path:
        sys.path.insert(0, str(FLOWS))  # the flows import one another by name, as `python flows/serve.py` does
    return importlib.import_module(name)


def summary(root: Path, model: str) -> dict:
    """What the stages wrote for ``model``: evaluation metrics, validation, registry (those that exist)."""
    out = outputs(root, model)
    info = {"model": model, "report": out["evaluation"] / "report.md"}
    for key, path in (
        ("metrics", out["evaluation"] / "metrics.json"),
        ("validation", out["validation"]),
        ("registry", out["registry"]),
    ):
        if path.exists():
            info[key] = json.loads(path.read_text())
    return info
