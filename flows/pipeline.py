"""The polar pipeline as a Prefect flow: the DVC stages, in order, with retries, logs and a report.

The flow drives ``dvc repro`` stage by stage (so caching, ``dvc.lock`` and lineage stay with DVC):
convert, ingest, label, validate, train, evaluate, register, for every base model in params.yaml
(or those given), then ``dvc push`` to the default remote. A failing validation stops that model's
chain before training; the registry is left untouched. The evaluation tables become Markdown
artifacts (``evaluation-<model>``). One run at a time per repository: a second run (a schedule firing
during a manual run) waits for the first, then finds DVC's stages up to date.

    polar pipeline                                  # every model, Prefect's temporary local server
    python -m flows.pipeline --models smollm2-135m
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from filelock import FileLock, Timeout
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.tracking import end_pipeline_run, log_stage, start_pipeline_run
from polar.config import load, names, setting
from polar.layout import Outputs
from polar.registry import registry_status
from polar.tracking import PARENT_ENV

__all__ = [
    "CHAINS",
    "ROOT",
    "Chain",
    "base_models",
    "chain_name",
    "chain_of",
    "check_models",
    "pipeline",
    "project_root",
    "summary",
]

ROOT = Path(__file__).resolve().parents[1]
# Each chain's per-model stages of dvc.yaml, in order.
CHAINS = {
    # The study: one menu, dense matrices for every split, a selector frozen on validation, a champion always.
    "menu": (
        "convert",
        "menu",
        "label-train",
        "label-validation",
        "label-test",
        "validate-menu",
        "select",
        "evaluate-menu",
        "register-menu",
    ),
    # MCTS labels of the training split, the PoLar network trained on them (the method as published).
    "network": ("convert", "label", "validate", "train", "evaluate", "register"),
}


@dataclass(frozen=True)
class Chain:
    """Which chain of stages each base model runs (params.yaml ``pipeline``): dvc.yaml's per-chain stages loop over
    these lists, so that only the stages of a chain that runs exist (``dvc status`` has nothing else to report)."""

    SECTION: ClassVar[str] = "pipeline"

    menu: tuple[str, ...] = setting(
        (),
        "Base models that run the selection study (dense menu matrices, every selector frozen on validation, the "
        "served winner or the full depth as champion).",
        parse=names,
    )
    network: tuple[str, ...] = setting(
        (), "Base models that run MCTS labels and the PoLar network trained on them.", parse=names
    )

    def __post_init__(self) -> None:
        both = sorted(set(self.menu) & set(self.network))
        if both:
            raise ValueError(
                f"pipeline: {', '.join(both)} listed under both menu and network; give each model one chain"
            )

    def of(self, model: str) -> str:
        """The chain ``model`` runs."""
        for name in CHAINS:
            if model in getattr(self, name):
                return name
        raise ValueError(
            f"base model {model!r} runs no chain: add it to pipeline.menu (the selection study) or pipeline.network "
            "in params.yaml"
        )


def chain_name(root: str | Path, model: str) -> str:
    """The chain (``menu`` or ``network``) that params.yaml's ``pipeline`` gives ``model``."""
    return load(Chain, Path(root) / "params.yaml").of(model)


def chain_of(root: str | Path, model: str) -> tuple[str, ...]:
    """The per-model stages of the chain ``model`` runs."""
    return CHAINS[chain_name(root, model)]


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
    chains = load(Chain, Path(root) / "params.yaml")
    strays = sorted({*chains.menu, *chains.network} - set(known))
    if strays:
        raise ValueError(f"pipeline lists {strays}, which base_models does not: add them there, or take them out")
    for model in models or known:
        chains.of(model)  # each runs one chain


def summary(root: Path, model: str) -> dict:
    """What the stages of params.yaml's chain wrote for ``model``: evaluation metrics, validation, registry (those
    that exist), and ``chain``."""
    out = Outputs(Path(root), model)
    menu = chain_name(root, model) == "menu"
    evaluation = out.study_evaluation if menu else out.evaluation
    info = {"model": model, "chain": "menu" if menu else "network", "report": evaluation / "report.md"}
    for key, path in (
        ("metrics", evaluation / "metrics.json"),
        ("validation", out.menu_validation if menu else out.validation),
        ("registry", out.study_registry if menu else out.registry),
    ):
        if path.exists():
            info[key] = json.loads(path.read_text())
    return info


def _dvc() -> str:
    """The dvc next to this interpreter (the project's .venv), else the one on PATH."""
    local = Path(sys.executable).with_name("dvc")
    return str(local) if local.exists() else (shutil.which("dvc") or "dvc")


class StageFailed(RuntimeError):
    pass


def _stream(proc: subprocess.Popen, log, every: float = 15.0) -> list[str]:
    """Log a child's output as it comes: every finished line, and its progress bar (``\\r`` updates)
    at most once per ``every`` seconds. Returns the finished lines."""
    lines, pending, progress, last = [], "", None, 0.0
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a read may end inside a character
    while raw := os.read(proc.stdout.fileno(), 65536):
        pending += decoder.decode(raw)
        *parts, pending = re.split(r"(\r|\n)", pending)
        for text, sep in zip(parts[::2], parts[1::2], strict=True):
            if not text.strip():
                continue
            if sep == "\n":
                lines.append(text)
                log(text)
                progress = None  # a finished bar's last state is that line
            else:
                progress = text
        if progress and time.monotonic() - last > every:
            log(progress.strip())
            progress, last = None, time.monotonic()
    if pending.strip():
        lines.append(pending)
        log(pending)
    proc.wait()
    return lines


@task(retries=1, retry_delay_seconds=5, task_run_name="dvc repro {stage}")
def repro(stage: str, cwd: str = str(ROOT)) -> str:
    """Run one DVC stage (and anything stale before it), logging its output as it runs."""
    logger = get_run_logger()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.setdefault("COLUMNS", "160")  # the stages' tables and messages, unwrapped in the log
    proc = subprocess.Popen(
        [_dvc(), "repro", "--single-item", stage], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    lines = _stream(proc, logger.info)
    if proc.returncode != 0:
        tail = "\n".join(lines[-15:])
        raise StageFailed(f"dvc repro {stage} failed (exit {proc.returncode}):\n{tail}")
    return stage


@task(retries=1, retry_delay_seconds=5)
def push(cwd: str = str(ROOT)) -> bool:
    """Push DVC's cache to the default remote (lineage checks against it); False when none is configured."""
    logger = get_run_logger()
    remote = subprocess.run([_dvc(), "remote", "default"], cwd=cwd, capture_output=True, text=True, check=False)
    if remote.returncode != 0 or not remote.stdout.strip():
        logger.warning("no default DVC remote: outputs stay in the local cache (dvc remote add -d NAME URL)")
        return False
    proc = subprocess.run([_dvc(), "push"], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise StageFailed(f"dvc push to {remote.stdout.strip()} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    logger.info(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "dvc push: nothing to push")
    return True


@task
def evaluation_artifact(model: str, cwd: str = str(ROOT)) -> str | None:
    """Publish the model's evaluation table as a Markdown artifact; returns the table."""
    info = summary(Path(cwd), model)
    report = info["report"]
    if not report.exists():
        return None
    text = report.read_text()
    if "registry" in info:
        text += f"\n\nRegistered: {registry_status(info['registry'])}.\n"
    key = "evaluation-" + "".join(c if c.isalnum() else "-" for c in model.lower())
    create_markdown_artifact(key=key, markdown=text, description=f"polar evaluation of {model}")
    return text


def _repo_lock(cwd: str | Path) -> FileLock:
    """The lock that keeps pipeline runs in one repository one at a time (beside DVC's own lock)."""
    path = Path(cwd) / ".dvc" / "tmp" / "polar-pipeline.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path)


@flow(name="polar-pipeline", log_prints=True)
def pipeline(models: list[str] | None = None, cwd: str = str(ROOT), push_outputs: bool = True) -> dict[str, str]:
    """Run the pipeline for ``models`` (default: every base model in params.yaml).

    Returns each model's outcome: ``registered``, or the stage where its chain stopped.
    """
    check_models(cwd, models)
    lock = _repo_lock(cwd)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        get_run_logger().info("another pipeline run holds %s: waiting for it to finish", lock.lock_file)
        lock.acquire()
    outcome = None
    try:
        run_id = start_pipeline_run(cwd, f"pipeline {flow_run.name}", {"prefect.flow_run_id": str(flow_run.id)})
        os.environ[PARENT_ENV] = run_id  # `polar register` nests its run under this one
        get_run_logger().info("MLflow run %s (experiment polar)", run_id)
        outcome = {}
        repro("ingest", cwd)
        for model in models or base_models(cwd):
            outcome[model] = run_model(model, cwd)
        if push_outputs:
            push(cwd)
        return outcome
    finally:
        os.environ.pop(PARENT_ENV, None)
        end_pipeline_run(outcome)
        lock.release()


def run_model(model: str, cwd: str) -> str:
    """One base model's chain, each stage's outputs logged to the pipeline's MLflow run; returns its outcome."""
    for stage in chain_of(cwd, model):
        try:
            repro(f"{stage}@{model}", cwd)
        except StageFailed as err:
            get_run_logger().error(str(err))
            log_stage(cwd, model, stage)  # e.g. the failed validation's report
            return f"stopped at {stage}@{model}"
        log_stage(cwd, model, stage)
    evaluation_artifact(model, cwd)
    return "registered"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=None)
    args = parser.parse_args()
    outcome = pipeline(args.models)
    print(json.dumps(outcome, indent=2))
    sys.exit(0 if all(v == "registered" for v in outcome.values()) else 1)


if __name__ == "__main__":
    main()
