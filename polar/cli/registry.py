"""Registry commands: register a predictor with its evaluation, promote it through the gates, walk its lineage."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from polar.cli.options import TrackingOpt, app, configured, console, fail, name_value
from polar.settings import Gates


@app.command(name="register")
@configured(gates=Gates)
def register_cmd(
    predictor: Annotated[str | None, typer.Option(help="Predictor folder written by `polar train`.")] = None,
    metrics: Annotated[
        str | None, typer.Option(help="metrics.json written by `polar evaluate` for this predictor.")
    ] = None,
    selection: Annotated[
        str | None,
        typer.Option(
            help="Instead of --predictor: a `polar select` folder; registers its baseline and servable winners."
        ),
    ] = None,
    selectors: Annotated[
        str | None, typer.Option(help="With --selection: its selectors (default: SELECTION/selectors).")
    ] = None,
    evaluation: Annotated[
        str | None, typer.Option(help="With --selection: the `polar evaluate --selection` folder.")
    ] = None,
    artifact: Annotated[
        list[str] | None, typer.Option(help="More files to attach (report, plots); repeatable.")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option(help="More tags KEY=VALUE on the version; repeatable.")] = None,
    promote: Annotated[bool, typer.Option(help="Then promote the new version if it passes the gates.")] = False,
    out: Annotated[str | None, typer.Option(help="Write the version and the promotion decision as JSON here.")] = None,
    tracking_uri: TrackingOpt = None,
    *,
    gates: Gates,
) -> None:
    """Log the predictor and its evaluation to MLflow and register a new version (alias: candidate).

    The same predictor with the same evaluation and tags is one change: registering it again, or from several
    clones at once, gives its existing version.

    The version is tagged with the git commit and the DVC hashes (dvc.lock) of its base model, task files, labels and weights, for `polar lineage`.
    """
    from mlflow.exceptions import MlflowException

    from polar.registry import publish, publish_study, registry_status

    if selection is not None:
        if predictor or metrics or not evaluation:
            fail("with --selection give --evaluation (the served evaluation), and neither --predictor nor --metrics")
        try:
            study = publish_study(
                selectors or f"{selection}/selectors", selection, evaluation, gates, out, tracking_uri, artifact or []
            )
        except (ValueError, FileNotFoundError, ConnectionError) as err:
            fail(str(err))
        except MlflowException as err:
            fail(
                f"the tracking server failed while registering: {err.message[:300]}; run the same command again "
                "when it answers: registering is idempotent (a change gets one version)"
            )
        for role, v in study["versions"].items():
            reasons = "; ".join(v["promotion"]["reasons"])
            line = f"{role}: {study['name']} v{v['version']} ({v['method']}){': ' + reasons if reasons else ''}"
            console.print(line, markup=False, soft_wrap=True)
        console.print(study["summary"], soft_wrap=True, markup=False)
        return
    if not (predictor and metrics):
        fail("give --predictor and --metrics (a `polar train` folder and its evaluation), or --selection")
    try:
        tags = dict(name_value(t) for t in tag or [])
        info = publish(predictor, metrics, gates if promote else None, out, tracking_uri, tags, artifact or [])
    except (ValueError, FileNotFoundError, ConnectionError) as err:
        fail(str(err))
    except MlflowException as err:  # the tracking server or its database failed half-way
        fail(
            f"the tracking server failed while registering: {err.message[:300]}; run the same command again "
            "when it answers: registering is idempotent (a change gets one version)"
        )
    if info["reused"]:
        console.print(
            f"{info['name']} already registered as version {info['version']} (alias candidate; same "
            "predictor, evaluation and tags)"
        )
    else:
        console.print(f"registered {info['name']} version {info['version']} (alias candidate; run {info['run_id']})")
    if promote:
        console.print(registry_status(info), markup=False)


@app.command(name="promote")
@configured(gates=Gates)
def promote_cmd(
    name: Annotated[str, typer.Argument(help="Registered model, e.g. polar-smollm2-135m.")],
    version: Annotated[str | None, typer.Option(help="Version to promote (default: the candidate).")] = None,
    tracking_uri: TrackingOpt = None,
    *,
    gates: Gates,
) -> None:
    """Move the champion alias to a version that passes the gates; exit 1 with the reasons if it does not."""
    from polar.registry import promote

    try:
        decision = promote(name, version, gates, tracking_uri)
    except (ValueError, ConnectionError) as err:
        fail(str(err))
    if not decision["promoted"]:
        fail(f"{name} v{decision['version']} stays out: " + "; ".join(decision["reasons"]), code=1)
    console.print(f"{name} v{decision['version']} is now @champion")


@app.command(name="lineage")
def lineage_cmd(
    model_uri: Annotated[str, typer.Argument(help="models:/NAME/VERSION or models:/NAME@ALIAS.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Walk a registered predictor back to its git commit and the DVC hashes of its inputs; check DVC has them."""
    from polar.lineage import lineage

    try:
        info = lineage(model_uri, tracking_uri)
    except (ValueError, ConnectionError) as err:
        fail(str(err))
    if as_json:
        console.print_json(json.dumps(info))
    else:
        _print_lineage(info)
    if any(not i["found_in"] for i in info["inputs"]):
        fail("some inputs are not in the DVC cache or remote: `dvc pull` or re-run `dvc repro`", code=1)


def _print_lineage(info: dict) -> None:
    console.print(
        f"{info['name']} v{info['version']} {info['aliases']} <- run {info['run_id']} <- git {info['git_commit']}"
    )
    table = Table()
    for col in ("input", "path", "md5", "in DVC", "dvc.lock now"):
        table.add_column(col)
    now = {True: "same", False: "[yellow]changed[/]", None: "-"}
    for i in info["inputs"]:
        found = ", ".join(i["found_in"]) or "[red]missing[/]"
        table.add_row(i["role"], str(i["path"]), i["md5"], found, now[i["matches"]])
    console.print(table)
    if any(i["matches"] is False for i in info["inputs"]):
        console.print(
            "[yellow]some outputs changed since this version was registered[/]: dvc.lock records other hashes "
            "for them now (`git log dvc.lock` and `dvc diff` show when)",
            soft_wrap=True,
        )
