"""The polar pipeline as a Prefect flow: the DVC stages, in order, with retries, logs and a report.

The flow drives ``dvc repro`` stage by stage (so caching, ``dvc.lock`` and lineage stay with DVC):
convert, ingest, label, validate, train, evaluate, register, for every base model in params.yaml
(or those given). A failing validation stops that model's chain before training; the registry is
left untouched. The evaluation tables become Markdown artifacts (``evaluation-<model>``).

    python flows/pipeline.py                        # every model, Prefect's temporary local server
    python flows/pipeline.py --models smollm2-135m
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

ROOT = Path(__file__).resolve().parents[1]
PER_MODEL = ("convert", "label", "validate", "train", "evaluate", "register")


def _dvc() -> str:
    """The dvc next to this interpreter (the project's .venv), else the one on PATH."""
    local = Path(sys.executable).with_name("dvc")
    return str(local) if local.exists() else (shutil.which("dvc") or "dvc")


class StageFailed(RuntimeError):
    pass


@task(retries=1, retry_delay_seconds=5, task_run_name="dvc repro {stage}")
def repro(stage: str, cwd: str = str(ROOT)) -> str:
    """Run one DVC stage (and anything stale before it); the stage's output goes to the flow's log."""
    logger = get_run_logger()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        [_dvc(), "repro", "--single-item", stage], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    for line in (proc.stdout + proc.stderr).splitlines()[-40:]:
        logger.info(line)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise StageFailed(f"dvc repro {stage} failed (exit {proc.returncode}):\n{tail}")
    return stage


@task
def evaluation_artifact(model: str, cwd: str = str(ROOT)) -> str | None:
    """Publish the model's evaluation table as a Markdown artifact; returns the table."""
    report = Path(cwd) / "reports" / model / "evaluation" / "report.md"
    if not report.exists():
        return None
    text = report.read_text()
    registry = Path(cwd) / "reports" / model / "registry.json"
    if registry.exists():
        info = json.loads(registry.read_text())
        decision = info.get("promotion", {})
        status = "champion" if decision.get("promoted") else "candidate only: " + "; ".join(decision.get("reasons", []))
        text += f"\n\nRegistered `{info['name']}` version {info['version']} ({status}).\n"
    key = "evaluation-" + "".join(c if c.isalnum() else "-" for c in model.lower())
    create_markdown_artifact(key=key, markdown=text, description=f"polar evaluation of {model}")
    return text


def base_models(cwd: str | Path = ROOT) -> list[str]:
    params = yaml.safe_load((Path(cwd) / "params.yaml").read_text())
    return list(params["base_models"])


@flow(name="polar-pipeline", log_prints=True)
def pipeline(models: list[str] | None = None, cwd: str = str(ROOT)) -> dict[str, str]:
    """Run the pipeline for ``models`` (default: every base model in params.yaml).

    Returns each model's outcome: ``registered``, or the stage where its chain stopped.
    """
    known = base_models(cwd)
    unknown = sorted(set(models or []) - set(known))
    if unknown:
        raise ValueError(f"unknown base models {unknown}: params.yaml lists {known}")
    outcome = {}
    for split in ("train", "test"):
        repro(f"ingest@{split}", cwd)
    for model in models or known:
        try:
            for stage in PER_MODEL:
                repro(f"{stage}@{model}", cwd)
        except StageFailed as err:
            outcome[model] = f"stopped at {str(err).split()[2]}"
            get_run_logger().error(str(err))
            continue
        evaluation_artifact(model, cwd)
        outcome[model] = "registered"
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=None)
    args = parser.parse_args()
    outcome = pipeline(args.models)
    print(json.dumps(outcome, indent=2))
    sys.exit(0 if all(v == "registered" for v in outcome.values()) else 1)


if __name__ == "__main__":
    main()
