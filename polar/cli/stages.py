"""The pipeline's stages as commands: ingest, label, validate, train, evaluate (and the diagnosis report).

Each command's settings are the fields of its class in :mod:`polar.settings`: an option each, or the class's
section of ``--params params.yaml`` (what the DVC stages pass). The commands only call the stage and print.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from polar.cli.options import DeviceOpt, ModelOpt, app, configured, console, err_console, fail, name_value
from polar.settings import (
    EngineConfig,
    EvalConfig,
    IngestConfig,
    LabelConfig,
    MenuConfig,
    PoolConfig,
    TrainConfig,
    ValidateConfig,
)


def _command() -> str:
    return "polar " + " ".join(sys.argv[1:])


@app.command()
@configured(config=IngestConfig)
def ingest(
    out: Annotated[
        str, typer.Option(help="Output folder: train, validation, test and shots (few-shot pool) Parquet files.")
    ] = "data/tasks",
    *,
    config: IngestConfig,
) -> None:
    """Split a task into train, validation and test files (and a few-shot pool) by a hash of each question.

    The same question always lands in the same split, in every file and every run, so the splits never overlap whatever their sizes. Synthetic levels give each size per level; for benchmarks and your own files a size caps a split per level (default: everything in it).
    """
    from polar.ingest import MANIFEST
    from polar.ingest import ingest as run

    try:
        _, bad = run(out, config)
    except (ValueError, FileNotFoundError, ConnectionError) as err:
        fail(str(err))
    for record in bad[:10]:
        err_console.print(f"[yellow]skipped[/] {record}", highlight=False)
    if len(bad) > 10:
        err_console.print(f"[yellow]... and {len(bad) - 10} more skipped records[/]")
    manifest = json.loads((Path(out) / MANIFEST).read_text())
    counts = ", ".join(f"{split} {info['examples']}" for split, info in manifest["splits"].items())
    console.print(f"wrote {counts} examples to {out}/ ({len(bad)} records skipped)")


@app.command(name="label")
@configured(config=LabelConfig, where=PoolConfig, dense=MenuConfig, engine=EngineConfig)
def label_cmd(
    model: ModelOpt = "smollm2-135m",
    tasks: Annotated[str, typer.Option(help="Task file written by `polar ingest` (its train split).")] = (
        "data/tasks/train.parquet"
    ),
    out: Annotated[
        str | None,
        typer.Option(
            help="Output folder: labels.jsonl, settings.json, manifest.json (default: data/labels/MODEL/SPACE)."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Label only the first N inputs.")] = None,
    worker: Annotated[str, typer.Option(help="Name of this worker's shards.")] = "0",
    restart_on_change: Annotated[
        bool, typer.Option(help="Start over when OUT holds labels made with other settings (instead of refusing).")
    ] = False,
    shard: Annotated[
        str | None, typer.Option(help="K/N: label only every N-th input from the K-th (one of N workers on OUT).")
    ] = None,
    device: DeviceOpt = "auto",
    *,
    config: LabelConfig,
    where: PoolConfig,
    dense: MenuConfig,
    engine: EngineConfig,
) -> None:
    """Search layer programs for every input of a task file. Resumable: run it again after a crash.

    With --menu, every program of a menu runs on every input instead of a search (a reward matrix: menu.jsonl, rewards.parquet, inputs.parquet). With --pool, the inputs are split into shards labeled by the pool's workers (one GPU each) and merged here when all are done, for either kind.
    """
    from polar.labeling.folder import parse_shard

    try:  # said before the model code loads (seconds)
        if where.pool and shard:
            raise ValueError("--shard and --pool do not mix: --pool makes the shards itself (--shards N)")
        k_of_n = parse_shard(shard) if shard else None
        if where.pool:
            from flows.api import require_prefect

            require_prefect(f"--pool {where.pool}")
    except (ValueError, ConnectionError) as err:
        fail(str(err))
    from polar.backbone import ModelSpecError, model_slug
    from polar.hf import UnsupportedModelError
    from polar.labeling.run import labeler_for, run_labeling
    from polar.tasks.files import read_examples

    labeler = labeler_for(config, dense, model, tasks, device, engine=engine)  # search, or a menu: chosen here once
    out = out or f"data/labels/{model_slug(model)}/{labeler.name}"
    try:
        if where.pool:
            from flows.labeling import label_on_pool

            merged = label_on_pool(
                model,
                tasks,
                out,
                config,
                where.pool,
                where.shards,
                limit,
                device,
                restart_on_change,
                dense=dense,
                engine=engine,
            )
        else:
            examples = read_examples(tasks)[:limit]
            merged = run_labeling(labeler, examples, out, k_of_n, worker, restart_on_change=restart_on_change)
    except (ValueError, FileNotFoundError, ModelSpecError, UnsupportedModelError, ConnectionError) as err:
        fail(str(err))
    except RuntimeError as err:  # shard runs on the pool failed; what they labeled is kept
        fail(str(err), code=1)
    if merged is None:
        console.print(f"shard {shard} done; other shards still label into {out} (the last one merges)")
    else:
        console.print(f"labels: {merged}")


@app.command(name="validate")
@configured(config=ValidateConfig)
def validate_cmd(
    out: Annotated[str, typer.Option(help="Output folder: validation.json, validation.html and Data Docs (gx/).")],
    labels: Annotated[
        str | None, typer.Option(help="Label folder written by `polar label` (labels.jsonl, settings.json).")
    ] = None,
    menu: Annotated[
        list[str] | None,
        typer.Option(
            help="SPLIT=FOLDER: the menu folder (`polar label --menu`) of one split of a menu chain, e.g. "
            "train=data/menus/m/train; repeatable, one per split (instead of --labels)."
        ),
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option(help="JSON of the last accepted labels' distributions for this base model (drift check)."),
    ] = None,
    accept: Annotated[bool, typer.Option(help="Make passing labels the new reference.")] = True,
    heldout: Annotated[
        list[str] | None,
        typer.Option(help="Validation or test task file whose questions must not be in the labels (repeatable)."),
    ] = None,
    *,
    config: ValidateConfig,
) -> None:
    """Check label files with a great-expectations suite; exit 1 (and keep the reference) when they fail.

    With --heldout, no question of those files may be among the training labels (compared by normalised text). With --menu SPLIT=FOLDER for each split, the reward matrices of a menu chain are checked instead: whole matrices, one menu, prompt and model, no question in two splits, and drift of the train split. Writes validation.json and validation.html, a report that reads offline.
    """
    from polar.validation import ValidationFailed, validate, validate_menus

    if (labels is None) == (not menu):
        given = "both --labels and --menu" if labels is not None else "neither --labels nor --menu"
        fail(
            f"{given} given: check search labels with --labels FOLDER, or the splits of a menu chain with "
            "--menu SPLIT=FOLDER once per split (e.g. --menu train=F1 --menu validation=F2 --menu test=F3)"
        )
    if menu and heldout:
        fail("--heldout is for --labels: with --menu, the splits are checked against each other (pass each as --menu)")
    try:
        if menu:
            splits: dict[str, str] = {}
            for given in menu:
                try:
                    split, folder = name_value(given)
                except ValueError:
                    raise ValueError(
                        f"--menu {given!r}: write SPLIT=FOLDER, e.g. --menu train=data/menus/m/train"
                    ) from None
                if split in splits:
                    raise ValueError(f"--menu names the split {split!r} twice: give each split once")
                splits[split] = folder
            summary = validate_menus(splits, out, config, reference, accept)
        else:
            summary = validate(labels, out, config, reference, accept, heldout or [])
    except ValidationFailed as err:
        fail(str(err), code=1)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    checks = sum(len(v) for v in summary["results"].values())
    if menu:
        inputs = ", ".join(f"{name} {n}" for name, n in summary["inputs"].items())
        console.print(
            f"menu folders valid: {checks} expectations passed on menu {summary['menu']} (inputs: {inputs}); drift "
            f"{summary['reference']}; report: {summary['report']}"
        )
        return
    drift = "with" if summary["drift_checked"] else "without (no reference yet)"
    console.print(f"labels valid: {checks} expectations passed, {drift} drift check; report: {summary['report']}")


@app.command(name="train")
@configured(config=TrainConfig)
def train_cmd(
    labels: Annotated[
        list[str],
        typer.Option(
            help="Merged label files (labels.jsonl) of one base model; with --method menu, menu run folders "
            "(`polar label --menu`); repeatable."
        ),
    ],
    out: Annotated[str, typer.Option(help="Output folder: predictor.safetensors, config.json, history.json.")],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Base model spec (default: the one named in the labels).")
    ] = None,
    device: DeviceOpt = "auto",
    *,
    config: TrainConfig,
) -> None:
    """Train the program predictor on label files; keeps the checkpoint with the best validation loss.

    With --method menu, train M2 on menu runs instead (its settings are the --m2-* options): the same network
    scored over the menu, keeping the checkpoint and gain threshold that answer the most held-out inputs right.
    A setting of the other method given a value other than its default is refused.
    """
    from polar.backbone import ModelSpecError
    from polar.embedder import EmbedderError
    from polar.training import train

    try:
        result = train(labels, out, config, base_model=model, device=device)
    except (ValueError, FileNotFoundError, ModelSpecError, EmbedderError) as err:
        fail(str(err))
    data = result.data
    if result.method == "menu":
        console.print(
            f"predictor: {result.out_dir} (menu of {data['menu_programs']} programs; best {result.unit} "
            f"{result.best}: {result.value:g}/{data['val_inputs']} held-out inputs right; trained on "
            f"{data['train_inputs']})"
        )
        return
    console.print(
        f"predictor: {result.out_dir} (best {result.unit} {result.best}, validation loss {result.value:.3f}; "
        f"{data['inputs_with_targets']}/{data['inputs']} inputs had a valid program)"
    )


@app.command(name="evaluate")
@configured(config=EvalConfig)
def evaluate_cmd(
    tasks: Annotated[str, typer.Option(help="Task file of the inputs to evaluate on (held out from training).")],
    out: Annotated[str, typer.Option(help="Output folder: metrics.json, results.jsonl, report.md, plot.")],
    predictor: Annotated[str | None, typer.Option(help="Predictor folder written by `polar train`.")] = None,
    selection: Annotated[
        str | None,
        typer.Option(
            help="Instead of --predictor: a `polar select` folder, whose winners are served on the test split."
        ),
    ] = None,
    selectors: Annotated[
        str | None, typer.Option(help="With --selection: its servable selectors (default: SELECTION/selectors).")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Base model (default: the predictor's base model).")
    ] = None,
    other: Annotated[
        list[str] | None, typer.Option(help="Another predictor to compare, as NAME=FOLDER (repeatable).")
    ] = None,
    oracle_labels: Annotated[
        str | None, typer.Option(help="labels.jsonl of the same inputs: the search oracle as upper bound.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N inputs.")] = None,
    device: DeviceOpt = "auto",
    *,
    config: EvalConfig,
) -> None:
    """Run the predictor's programs on the model against baselines; write the report and metrics.

    With --selection (the menu chain), serve the study's frozen winners instead: each servable selector chooses a
    program per test input as the registered model will, the choice must be the study's and each answer is checked
    against the reward matrix; ShortGPT runs at the efficiency winner's budget.
    """
    from polar.backbone import ModelSpecError
    from polar.evaluate import evaluate

    if (predictor is None) == (selection is None):
        fail("give either --predictor (a `polar train` folder) or --selection (a `polar select` folder)")
    if selection is not None:
        return _evaluate_selection(selection, selectors, tasks, out, model, device)
    try:
        others = dict(name_value(o) for o in other or [])
        metrics = evaluate(
            model, predictor, tasks, out, config, others, oracle_labels, limit, device, command=_command()
        )
    except (ValueError, FileNotFoundError, ModelSpecError) as err:
        fail(str(err))
    m = json.loads(metrics.read_text())
    table = Table(title=f"{m['model']}: {m['inputs']} inputs")
    for col in ("method", "pass@1", "95% CI", "layers / D"):
        table.add_column(col)
    for name, r in m["methods"].items():
        lo, hi = r["ci95"]
        table.add_row(name, f"{100 * r['pass@1']:.1f}%", f"{100 * lo:.0f}-{100 * hi:.0f}%", f"{r['layers_ratio']:.2f}")
    console.print(table)
    console.print(f"report: {metrics.with_name('report.md')}")


def _evaluate_selection(selection: str, selectors: str | None, tasks: str, out: str, model, device: str) -> None:
    from polar.backbone import ModelSpecError
    from polar.selection.served import evaluate_selection
    from polar.stats import MethodScore

    try:
        path = evaluate_selection(
            selection, selectors or f"{selection}/selectors", tasks, out, model, device, command=_command()
        )
    except (ValueError, FileNotFoundError, ModelSpecError) as err:
        fail(str(err))
    from polar.cli.options import scores_table

    m = json.loads(path.read_text())
    rows = [MethodScore.from_dict(r) for r in m["scores"].values()]
    console.print(scores_table(rows, f"{m['model']}: {m['inputs']} test inputs (served rows run on the model)"))
    console.print(m["summary"], soft_wrap=True, markup=False)
    console.print(f"report: {path.with_name('report.md')}")


@app.command()
def diagnose(
    labels: Annotated[str, typer.Option(help="Folder with skip/, loop/ and joint/ label folders of one model.")],
    out: Annotated[str, typer.Option(help="Report folder (report.md and PNG plots).")],
) -> None:
    """Write the diagnosis report (oracle accuracy, shorter programs, edited segments, layer heat map)."""
    from polar.diagnose import diagnose as run

    try:
        report = run(labels, out, command=_command())
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    console.print(f"report: {report}")
