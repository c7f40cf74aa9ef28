"""Deployments of the pipeline: scheduled retraining, and a run whenever a base model is added.

    python -m flows.serve            # long-running; needs a Prefect server (PREFECT_API_URL)

* ``polar-pipeline/scheduled-retraining`` re-runs the pipeline on ``schedule.cron`` of params.yaml: DVC
  re-runs only what is stale (new base models, changed parameters or code), and the registry promotes
  a new version only through its gates.
* ``polar-pipeline/new-base-model`` runs the pipeline for one model when the event
  ``polar.base-model.added`` names it (resource label ``polar.base-model``). ``polar-watch-base-models``
  (every ``schedule.watch_seconds``) emits that event once for each model of params.yaml that has no
  registered chain in dvc.lock yet; CI can emit it too:
  ``prefect event emit polar.base-model.added --resource '{"prefect.resource.id": "polar.base-model.NAME",
  "polar.base-model": "NAME"}'``.

``prefect deployment run polar-pipeline/scheduled-retraining`` starts a run by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import yaml
from prefect import flow, get_run_logger, serve
from prefect.events import DeploymentEventTrigger, emit_event
from prefect.variables import Variable

from flows.pipeline import CHAINS, ROOT, Chain, pipeline
from polar.config import load, setting

DEPLOYMENT = "scheduled-retraining"
TRIGGERED = "new-base-model"
EVENT = "polar.base-model.added"
ANNOUNCED = "polar-announced-base-models"  # Prefect variable: {checkout: [models announced]}


@dataclass(frozen=True)
class Schedule:
    """When the pipeline re-runs on its own (params.yaml ``schedule``)."""

    SECTION: ClassVar[str] = "schedule"

    cron: str = setting("", "Cron expression of scheduled retraining (empty: none).")
    models: list[str] | None = setting(None, "Base models the schedule re-runs (None: all).")
    watch_seconds: int = setting(300, "How often params.yaml is checked for base models without a registered chain.")


def _schedule(cwd: str | Path) -> Schedule:
    return load(Schedule, Path(cwd) / "params.yaml")


def _params(cwd: str | Path) -> dict:
    return yaml.safe_load((Path(cwd) / "params.yaml").read_text())


def retraining_deployment(cwd: str | Path = ROOT):
    """The scheduled deployment of the pipeline flow, from ``schedule`` in params.yaml."""
    schedule = _schedule(cwd)
    if not schedule.cron:
        raise ValueError("params.yaml has no schedule.cron: add e.g. `schedule: {cron: '0 3 * * 1'}`")
    return pipeline.to_deployment(
        name=DEPLOYMENT,
        cron=schedule.cron,
        parameters={"models": schedule.models, "cwd": str(cwd)},
        description="Re-run the polar pipeline on its schedule (DVC re-runs only what is stale).",
    )


def new_model_deployment(cwd: str | Path = ROOT):
    """The pipeline for one model, triggered by ``polar.base-model.added`` naming it."""
    trigger = DeploymentEventTrigger(
        name="polar: pipeline for a new base model",
        expect={EVENT},
        match={"prefect.resource.id": "polar.base-model.*"},
        parameters={"models": ["{{ event.resource['polar.base-model'] }}"], "cwd": str(cwd)},
    )
    return pipeline.to_deployment(
        name=TRIGGERED,
        triggers=[trigger],
        parameters={"cwd": str(cwd)},
        description="Run the polar pipeline for a base model just added to params.yaml.",
    )


def new_base_models(cwd: str | Path = ROOT) -> list[str]:
    """Base models of params.yaml whose chain has never been registered (no entry for the last stage of the chain
    params.yaml gives them, ``register-menu@<model>`` or ``register@<model>``, in dvc.lock). A model in no chain is
    not new: it runs nothing until it is given one."""
    lock = Path(cwd) / "dvc.lock"
    done = set((yaml.safe_load(lock.read_text()) or {}).get("stages", {})) if lock.exists() else set()
    chains = load(Chain, Path(cwd) / "params.yaml")
    new = []
    for model in _params(cwd)["base_models"]:
        try:
            last = CHAINS[chains.of(model)][-1]
        except ValueError:
            continue
        if f"{last}@{model}" not in done:
            new.append(model)
    return new


def announce(model: str) -> None:
    """Emit the event that runs the pipeline for ``model``."""
    emit_event(event=EVENT, resource={"prefect.resource.id": f"polar.base-model.{model}", "polar.base-model": model})


@flow(name="polar-watch-base-models")
def watch_base_models(cwd: str = str(ROOT)) -> list[str]:
    """Announce, once each, the base models of params.yaml that have no registered chain yet."""
    announced = Variable.get(ANNOUNCED, default={}) or {}
    seen = set(announced.get(cwd, []))
    fresh = [m for m in new_base_models(cwd) if m not in seen]
    for model in fresh:
        announce(model)
        get_run_logger().info("new base model %s: announced (%s)", model, EVENT)
    if fresh:
        Variable.set(ANNOUNCED, {**announced, cwd: sorted(seen | set(fresh))}, overwrite=True)
    return fresh


def watch_deployment(cwd: str | Path = ROOT):
    seconds = _schedule(cwd).watch_seconds
    return watch_base_models.to_deployment(
        name="params", interval=seconds, parameters={"cwd": str(cwd)}, description="Announce new base models."
    )


if __name__ == "__main__":
    serve(retraining_deployment(), new_model_deployment(), watch_deployment())
