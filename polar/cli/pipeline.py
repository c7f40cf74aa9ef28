"""`polar pipeline`: the main job, the Prefect flow of flows/pipeline.py over the DVC stages, and its summary."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from polar.cli.options import app, console, fail


@app.command(name="pipeline")
def pipeline_cmd(
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Base model of params.yaml to run (repeatable; default: all)."),
    ] = None,
    push: Annotated[bool, typer.Option(help="dvc push the outputs to the default remote at the end.")] = True,
    stack: Annotated[
        bool,
        typer.Option(
            "--stack",
            help="Run on the team stack of $POLAR_STACK_DIR (default ./stack; see `polar stack up`): its Prefect "
            "and MLflow servers, and its object store as the DVC remote. Without it, a stack's settings exported "
            "in the environment (polar stack env) are used as they are.",
        ),
    ] = False,
) -> None:
    """The main job: ingest, label, validate, train, evaluate and register every base model of params.yaml.

    Runs the Prefect flow of flows/pipeline.py over the DVC stages of dvc.yaml, from the project root; stages that DVC finds up to date are skipped.

    Uses $PREFECT_API_URL when set, else a temporary local Prefect server, and $MLFLOW_TRACKING_URI when set, else mlflow/mlflow.db; with $POLAR_STORE_URL (or --stack), the object store is the DVC remote. Exit 1 when a model's chain stops (e.g. its labels fail validation).
    """
    if stack:  # before Prefect is imported: it reads its settings from the environment once
        from polar.stack import load_stack

        try:
            os.environ.update(load_stack().client_env())
        except (ValueError, FileNotFoundError) as err:
            fail(str(err))
    # The temporary server's telemetry heartbeat races the flow for its SQLite file ("database is locked").
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Its first start creates the database; on a busy 2-core machine that took more than Prefect's 20 s default
    # ("Timed out while attempting to connect to ephemeral Prefect API server").
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from flows.api import check_prefect
    from flows.pipeline import check_models, pipeline, project_root, summary
    from polar.stack.client import check_store, store_url, use_store_remote
    from polar.tracking import default_tracking_uri

    try:
        root = project_root()
        check_models(root, model)
        prefect_url = check_prefect()
        remote = None
        if store_url() is not None:  # the team stack's object store: the DVC remote
            check_store()
            remote = use_store_remote(root)
        outcome = pipeline(models=model or None, cwd=str(root), push_outputs=push)
    except (ValueError, FileNotFoundError, ConnectionError, RuntimeError) as err:
        fail(str(err))
    for name, result in outcome.items():
        _print_summary(summary(root, name), result, root)
    console.print("\n[bold]Where to look[/]")
    uri = default_tracking_uri(root)
    ui = f"{uri}" if uri.startswith("http") else f"mlflow ui --backend-store-uri {uri}  (then http://127.0.0.1:5000)"
    where = prefect_url or "on a temporary server, gone with it (`prefect server start` keeps them)"
    for line in (
        f"  MLflow UI        {ui}",
        f"  Prefect runs     {where}",
        "  stage outputs    dvc status; dvc metrics show; dvc plots show",
        *([f"  DVC remote       {remote} (stack, in .dvc/config.local)"] if remote else []),
    ):
        console.print(line, soft_wrap=True)
    if any(result != "registered" for result in outcome.values()):
        raise typer.Exit(1)


def _print_summary(info: dict, result: str, root: Path) -> None:
    from polar.registry import registry_status

    console.print(f"\n[bold]{info['model']}[/]: {result}")
    if info["chain"] == "menu":
        return _print_study(info, root)
    if "metrics" in info:
        m = info["metrics"]
        table = Table(title=f"{m['inputs']} test inputs, D = {m['depth']}")
        for col in ("method", "pass@1", "95% CI", "avg layers", "p vs base"):
            table.add_column(col)
        for method, row in m["methods"].items():
            lo, hi = row["ci95"]
            table.add_row(
                method,
                f"{row['pass@1']:.1%}",
                f"{lo:.0%}-{hi:.0%}",
                f"{row['avg_layers']:.1f}",
                f"{row['p_vs_base']:.3g}",
            )
        console.print(table)
        console.print(f"  report           {info['report'].relative_to(root)}", soft_wrap=True)
    if "validation" in info:
        report = info["validation"].get("report") or info["validation"]["data_docs"]
        console.print(f"  validation       {report}", soft_wrap=True)
    if "registry" in info:
        reg = info["registry"]
        console.print(f"  registry         {registry_status(reg)}", soft_wrap=True, markup=False)
        console.print(f"  lineage          polar lineage models:/{reg['name']}/{reg['version']}", soft_wrap=True)


def _print_study(info: dict, root: Path) -> None:
    """The menu chain's summary: every candidate on test, the one-sentence verdict, the champion."""
    from polar.cli.options import scores_table
    from polar.registry import registry_status
    from polar.stats import MethodScore

    if "metrics" in info:
        m = info["metrics"]
        rows = [MethodScore.from_dict(r) for r in m["scores"].values()]
        title = f"{m['inputs']} test inputs; {m['candidates']} candidates, every choice frozen on validation"
        console.print(scores_table(rows, title))
        console.print(m["summary"], soft_wrap=True, markup=False)
        console.print(f"  report           {info['report'].relative_to(root)}", soft_wrap=True)
    if "validation" in info:
        report = info["validation"].get("report") or info["validation"].get("data_docs")
        console.print(f"  validation       {report}", soft_wrap=True)
    if "registry" in info:
        reg = info["registry"]
        console.print(f"  registry         {registry_status(reg)}", soft_wrap=True, markup=False)
        serve = f"mlflow models serve -m models:/{reg['name']}@champion --env-manager local"
        console.print(f"  serve            {serve}", soft_wrap=True)
        console.print(f"  lineage          polar lineage models:/{reg['name']}/{reg['champion']}", soft_wrap=True)
