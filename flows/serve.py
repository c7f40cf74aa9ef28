"""Scheduled retraining: serve the pipeline flow as a deployment with the cron schedule of params.yaml.

    python flows/serve.py            # long-running; needs a Prefect server (PREFECT_API_URL) to schedule runs

The schedule (``schedule.cron`` in params.yaml) re-runs the pipeline: DVC re-runs only what is stale
(new base models, changed parameters or code), and the registry promotes a new version only through its
gates. ``prefect deployment run polar-pipeline/scheduled-retraining`` starts a run by hand.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pipeline import ROOT, pipeline
from prefect import serve

DEPLOYMENT = "scheduled-retraining"


def retraining_deployment(cwd: str | Path = ROOT):
    """The scheduled deployment of the pipeline flow, from ``schedule`` in params.yaml."""
    params = yaml.safe_load((Path(cwd) / "params.yaml").read_text())
    schedule = params.get("schedule") or {}
    if not schedule.get("cron"):
        raise ValueError("params.yaml has no schedule.cron: add e.g. `schedule: {cron: '0 3 * * 1'}`")
    return pipeline.to_deployment(
        name=DEPLOYMENT,
        cron=schedule["cron"],
        parameters={"models": schedule.get("models"), "cwd": str(cwd)},
        description="Re-run the polar pipeline on its schedule (DVC re-runs only what is stale).",
    )


if __name__ == "__main__":
    serve(retraining_deployment())
