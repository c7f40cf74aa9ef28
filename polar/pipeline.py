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

__all__ = ["check_models", "load_flows", "project_root", "summary"]

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


def check_models(root: Path, models: list[str] | None) -> None:
    """Refuse base models that params.yaml does not list (before any server starts)."""
    import yaml

    known = list(yaml.safe_load((root / "params.yaml").read_text()).get("base_models") or {})
    unknown = sorted(set(models or []) - set(known))
    if unknown:
        raise ValueError(f"unknown base models {unknown}: params.yaml lists {known} (add one under base_models)")


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
    out = {"model": model}
    base = root / "reports" / model
    for key, path in (
        ("metrics", base / "evaluation" / "metrics.json"),
        ("validation", base / "validation" / "validation.json"),
        ("registry", base / "registry.json"),
    ):
        if path.exists():
            out[key] = json.loads(path.read_text())
    out["report"] = base / "evaluation" / "report.md"
    return out
