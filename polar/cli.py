"""The ``polar`` command: one sub-command per task. Thin shells over the library."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from polar.programs import DEFAULT_K_MAX, DEFAULT_MAX_VISITS, CompactProgram, Program, ProgramError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    help="polar: run a frozen LLM along programs of layers that skip or loop its layers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Base model: a bundled name (smollm2-135m, gemma3-270m), a local directory, a .gguf file or a hub id.",
    ),
]
DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA when available), cpu, cuda, cuda:N.")]
MaxVisitsOpt = Annotated[int, typer.Option(help="Most times one layer may run in a program (0: no limit).")]


def _fail(message: str, code: int = 2) -> None:
    # Unwrapped: the commands that errors suggest must survive a copy and paste.
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _resolve_program(text: str, depth: int, max_visits: int) -> Program:
    """Parse ``text`` (text form, compact form, or ``full``) and check it against the model."""
    text = text.strip()
    if text.lower() in ("full", "identity"):
        return Program.identity(depth)
    program = CompactProgram.parse(text).to_program() if "(" in text else Program.parse(text)
    return program.validate(depth, max_visits=max_visits or None)


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="The user prompt (chat models get their chat template).")],
    model: ModelOpt = "smollm2-135m",
    program: Annotated[
        list[str] | None,
        typer.Option(
            "--program",
            "-p",
            help="Layer program: '0-7,6-7,8-29', a compact form 'keep(0-3) repeat(4-5) ...' or 'full'. "
            "Repeat the option to run several programs over the prompt in one batch.",
        ),
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Recompute the whole sequence at every step (slow reference semantics).")
    ] = False,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Most tokens to generate.")] = 64,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 for greedy decoding.")] = 0.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    seed: int = 0,
    max_visits: MaxVisitsOpt = DEFAULT_MAX_VISITS,
    raw: Annotated[bool, typer.Option("--raw", help="Do not apply the chat template.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per program.")] = False,
    device: DeviceOpt = "auto",
) -> None:
    """Generate text from PROMPT with the model run along one or more layer programs."""
    from polar.backbone import ModelSpecError, load
    from polar.executor import Sampling
    from polar.hf import UnsupportedModelError

    try:
        backbone = load(model, device=device, chat=False if raw else None)
        programs = [_resolve_program(p, backbone.depth, max_visits) for p in (program or ["full"])]
    except (ModelSpecError, UnsupportedModelError, ProgramError) as err:
        _fail(str(err))
    ids = backbone.encode_prompt(prompt)
    sampling = Sampling(temperature=temperature, top_p=top_p, seed=seed)
    results = backbone.executor.generate([ids], programs, max_new_tokens, sampling, use_cache=not no_cache)
    for g in results:
        if as_json:
            record = {"model": model, "prompt_style": backbone.prompt_style, "cache": not no_cache, **g.to_dict()}
            print(json.dumps(record))
        else:
            console.print(
                f"[dim]program {g.program} - {g.layers_per_token}/{g.depth} layers per token - "
                f"{len(g.tokens)} tokens, {g.finish_reason}[/]",
                highlight=False,
            )
            console.print(g.text, highlight=False, markup=False)


@app.command(name="program")
def program_cmd(
    text: Annotated[
        str, typer.Argument(help="A program in text form ('0-7,6-7,8-29') or compact form ('keep(0-3) ...').")
    ],
    depth: Annotated[int | None, typer.Option(help="Layers of the model (or give --model).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Read the depth from this model's config.")] = None,
    k_max: Annotated[int, typer.Option(min=1, help="Longest segment of the compact form.")] = DEFAULT_K_MAX,
    max_visits: MaxVisitsOpt = DEFAULT_MAX_VISITS,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Parse and validate a program, and convert between its text and compact forms."""
    try:
        compact_in = "(" in text
        parsed = CompactProgram.parse(text, k_max) if compact_in else None
        program = parsed.to_program() if parsed else Program.parse(text)
        if depth is None and model is not None:
            depth = _model_depth(model)
        if depth is None:
            depth = parsed.depth if parsed else max(program.layers) + 1
        program.validate(depth, max_visits=max_visits or None)
    except ProgramError as err:
        _fail(str(err))
    try:
        compact, why = str(CompactProgram.from_program(program, depth, k_max)), None
    except ProgramError as err:
        compact, why = None, str(err)
    visits = program.visits()
    info = {
        "program": program.text,
        "layers": list(program.layers),
        "length": len(program),
        "depth": depth,
        "ratio": round(len(program) / depth, 4),
        "identity": program.is_identity(depth),
        "skipped": program.skipped(depth),
        "repeated": sorted(i for i, n in visits.items() if n > 1),
        "compact": compact,
        "compact_error": why,
    }
    if as_json:
        print(json.dumps(info))
        return
    table = Table(show_header=False, box=None)
    for key in ("program", "length", "depth", "ratio", "skipped", "repeated", "compact"):
        value = info[key] if info[key] is not None else f"[yellow]none[/]: {why}"
        table.add_row(f"[bold]{key}[/]", str(value))
    console.print(table)


def _model_depth(spec: str) -> int:
    from transformers import AutoConfig

    from polar.backbone import BUNDLED, ModelSpecError

    if spec in BUNDLED:
        return BUNDLED[spec].depth
    try:
        return AutoConfig.from_pretrained(spec).num_hidden_layers
    except (OSError, ValueError) as err:
        _fail(str(ModelSpecError(f"cannot read the config of {spec!r}: {err}")))
        raise  # unreachable


@app.command()
def convert(
    spec: Annotated[str, typer.Argument(help="A bundled name, a .gguf file, a model directory or a hub id.")],
    out: Annotated[str | None, typer.Option(help="Output folder (default: models/<name>).")] = None,
) -> None:
    """Convert a model once to a safetensors folder that loads in about a second."""
    from polar.backbone import BUNDLED, ModelSpecError, models_dir
    from polar.backbone import convert as do_convert
    from polar.hf import UnsupportedModelError

    if out is None:
        name = spec if spec in BUNDLED or Path(spec).exists() else spec.replace("/", "--")
        name = Path(name.rstrip("/")).name.removesuffix(".gguf")
    target = Path(out) if out else models_dir() / name
    try:
        path = do_convert(spec, target)
    except (ModelSpecError, UnsupportedModelError) as err:
        _fail(str(err))
    console.print(f"converted {spec} -> {path}")


@app.command()
def models() -> None:
    """List the bundled models and whether they are converted."""
    from polar.backbone import BUNDLED, models_dir

    table = Table("name", "converted", "about")
    for name, bundled in BUNDLED.items():
        done = (models_dir() / name / "polar.json").exists()
        table.add_row(name, str(models_dir() / name) if done else "no (converted on first use)", bundled.about)
    console.print(table)


@app.command()
def demo(
    model: ModelOpt = "smollm2-135m",
    prompt: Annotated[str | None, typer.Option(help="Prompt (default: a small arithmetic question).")] = None,
    max_new_tokens: int = 40,
    device: DeviceOpt = "auto",
) -> None:
    """The main job: run the full-depth program, a skip program and a loop program side by side."""
    from polar.demo import run_demo

    run_demo(model=model, prompt=prompt, max_new_tokens=max_new_tokens, device=device, console=console)


def _levels(text: str) -> list[int]:
    try:
        return sorted(set(Program.parse(text).layers))
    except ProgramError:
        raise typer.BadParameter(f"levels must look like '1-5' or '1,3', got {text!r}") from None


def _level_names(text: str) -> tuple[str, ...]:
    """Level names from '1-3', '1,4' or names such as 'train,test' (ranges of numbers expand)."""
    out: list[str] = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        a, sep, b = item.partition("-")
        out += [str(i) for i in range(int(a), int(b) + 1)] if sep and a.isdigit() and b.isdigit() else [item]
    return tuple(out)


@app.command()
def ingest(
    out: Annotated[
        str, typer.Option(help="Output folder: train, validation, test and shots (few-shot pool) Parquet files.")
    ] = "data/tasks",
    task: Annotated[
        str,
        typer.Option(
            help="arith (synthetic levels), a benchmark (gsm8k, mawps, asdiv, math, math500, mmlu-pro-math, arc), "
            "or any name for a file of your own (with --question-field and --answer-field)."
        ),
    ] = "arith",
    levels: Annotated[str, typer.Option(help="Synthetic levels, e.g. 1-5.")] = "1-5",
    train: Annotated[
        int | None, typer.Option(min=0, help="Train questions per level (synthetic: 40; else default all).")
    ] = None,
    validation: Annotated[
        int | None, typer.Option(min=0, help="Validation questions per level (synthetic: 10; else default all).")
    ] = None,
    test: Annotated[int | None, typer.Option(min=0, help="Test questions per level (synthetic: 20; else all).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic draw (splits do not depend on it).")] = 0,
    source: Annotated[str | None, typer.Option(help="Benchmark or own file, folder or hub id.")] = None,
    source_split: Annotated[str, typer.Option(help="Split to read from a folder or hub id.")] = "test",
    limit: Annotated[int | None, typer.Option(help="Read at most this many usable records of the source.")] = None,
    question_field: Annotated[str | None, typer.Option(help="Own file: the question's field.")] = None,
    answer_field: Annotated[str, typer.Option(help="Own file: the reference answer's field.")] = "answer",
    level_field: Annotated[str | None, typer.Option(help="Own file: a level's field (default: none).")] = None,
    answer_kind: Annotated[str, typer.Option(help="Own file: number, math or choice.")] = "number",
) -> None:
    """Split a task into train, validation and test files (and a few-shot pool) by a hash of each question.

    The same question always lands in the same split, in every file and every run, so the splits never overlap whatever their sizes. Synthetic levels give each size per level; for benchmarks and your own files a size caps a split per level (default: everything in it).
    """
    from polar.ingest import MANIFEST
    from polar.ingest import ingest as do_ingest
    from polar.tasks.benchmarks import Fields

    fields = Fields(question_field, answer_field, level_field, answer_kind) if question_field else None
    if task == "arith":  # the synthetic levels need a size per split: 40 / 10 / 20 per level unless given
        train, validation, test = (d if v is None else v for v, d in ((train, 40), (validation, 10), (test, 20)))
    try:
        sizes = {"train": train, "validation": validation, "test": test}
        paths, bad = do_ingest(out, task, _levels(levels), sizes, seed, source, source_split, limit, fields)
    except (ValueError, FileNotFoundError, ConnectionError) as err:
        _fail(str(err))
    for record in bad[:10]:
        err_console.print(f"[yellow]skipped[/] {record}", highlight=False)
    if len(bad) > 10:
        err_console.print(f"[yellow]... and {len(bad) - 10} more skipped records[/]")
    manifest = json.loads((Path(out) / MANIFEST).read_text())
    counts = ", ".join(f"{split} {info['examples']}" for split, info in manifest["splits"].items())
    console.print(f"wrote {counts} examples to {out}/ ({len(bad)} records skipped)")


@app.command(name="label")
def label_cmd(
    model: ModelOpt = "smollm2-135m",
    tasks: Annotated[str, typer.Option(help="Task file written by `polar ingest` (its train split).")] = (
        "data/tasks/train.parquet"
    ),
    out: Annotated[
        str | None,
        typer.Option(help="Output folder: shards, labels.jsonl, manifest.json (default: data/labels/MODEL/SPACE)."),
    ] = None,
    space: Annotated[str, typer.Option(help="Search space: skip, loop or joint.")] = "joint",
    simulations: Annotated[int, typer.Option(min=0, help="MCTS simulations per input.")] = 100,
    length_penalty: float = 5.0,
    exploration: float = 2.0,
    min_length_ratio: float = 0.55,
    max_length_ratio: float = 1.2,
    max_visits: Annotated[int, typer.Option(min=1)] = DEFAULT_MAX_VISITS,
    batch: Annotated[int, typer.Option(min=1, help="Programs evaluated together (rewards do not depend on it).")] = 16,
    shots: Annotated[int, typer.Option(min=0, help="Few-shot examples per prompt.")] = 3,
    prompt: Annotated[
        str, typer.Option(help="Prompt style: plain (Question/Answer blocks) or chat (the model's chat template).")
    ] = "plain",
    shots_from: Annotated[
        str, typer.Option(help="Few-shot pool (default: shots.parquet beside the task file, from `polar ingest`).")
    ] = "",
    max_new_tokens: int = 50,
    seed: int = 0,
    limit: Annotated[int | None, typer.Option(help="Label only the first N inputs.")] = None,
    worker: Annotated[str, typer.Option(help="Name of this worker's shards.")] = "0",
    restart_on_change: Annotated[
        bool, typer.Option(help="Start over when OUT holds labels made with other settings (instead of refusing).")
    ] = False,
    shard: Annotated[
        str | None, typer.Option(help="K/N: label only every N-th input from the K-th (one of N workers on OUT).")
    ] = None,
    pool: Annotated[
        str,
        typer.Option(
            help="Prefect work pool to label on, one flow run per shard (e.g. gpu; needs PREFECT_API_URL and "
            "workers: prefect worker start --pool gpu --limit 1). Empty: label in this process."
        ),
    ] = "",
    shards: Annotated[int, typer.Option(min=0, help="With --pool: number of shards (0: one per online worker).")] = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Search layer programs for every input of a task file. Resumable: run it again after a crash.

    With --pool, the inputs are split into shards labeled by the pool's workers (one GPU each) and merged here when all are done.
    """
    from polar.backbone import ModelSpecError
    from polar.hf import UnsupportedModelError
    from polar.label import LabelConfig, label
    from polar.search import SearchConfig

    try:
        search_cfg = SearchConfig(
            space=space,
            simulations=simulations,
            length_penalty=length_penalty,
            exploration=exploration,
            min_length_ratio=min_length_ratio,
            max_length_ratio=max_length_ratio,
            max_visits=max_visits,
            batch=batch,
            seed=seed,
        )
        config = LabelConfig(
            shots=shots, prompt=prompt, max_new_tokens=max_new_tokens, shots_from=shots_from, search=search_cfg
        )
        if out is None:
            out = f"data/labels/{Path(model.rstrip('/')).name.removesuffix('.gguf')}/{space}"
        if pool:
            if shard:
                raise ValueError("--shard and --pool do not mix: --pool makes the shards itself (--shards N)")
            from polar.pipeline import load_flows

            dispatch = load_flows("labeling").label_on_pool
            merged = dispatch(model, tasks, out, config, pool, shards, limit, device, restart_on_change)
            console.print(f"labels: {merged}")
            return
        shard_kn = _shard(shard) if shard else None
        merged = label(
            model,
            tasks,
            out,
            config,
            limit=limit,
            worker=worker,
            device=device,
            restart_on_change=restart_on_change,
            shard=shard_kn,
        )
    except (ValueError, FileNotFoundError, ModelSpecError, UnsupportedModelError, ConnectionError) as err:
        _fail(str(err))
    except RuntimeError as err:  # shard runs on the pool failed; what they labeled is kept
        _fail(str(err), code=1)
    if merged is None:
        console.print(f"shard {shard} done; other shards still label into {out} (the last one merges)")
    else:
        console.print(f"labels: {merged}")


def _shard(text: str) -> tuple[int, int]:
    k, sep, n = text.partition("/")
    if not sep or not k.isdigit() or not n.isdigit():
        raise ValueError(f"--shard {text!r}: write K/N, e.g. 0/4")
    return int(k), int(n)


@app.command()
def diagnose(
    labels: Annotated[str, typer.Option(help="Folder with skip/, loop/ and joint/ label folders of one model.")],
    out: Annotated[str, typer.Option(help="Report folder (report.md and PNG plots).")],
) -> None:
    """Write the diagnosis report (oracle accuracy, shorter programs, edited segments, layer heat map)."""
    from polar.diagnose import diagnose as do_diagnose

    command = "polar diagnose " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else None
    try:
        report = do_diagnose(labels, out, command=command)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    console.print(f"report: {report}")


@app.command(name="validate")
def validate_cmd(
    labels: Annotated[str, typer.Option(help="Label folder written by `polar label` (labels.jsonl, settings.json).")],
    out: Annotated[str, typer.Option(help="Output folder: validation.json and the Data Docs HTML (gx/).")],
    reference: Annotated[
        str | None,
        typer.Option(help="JSON of the last accepted labels' distributions for this base model (drift check)."),
    ] = None,
    min_valid_share: Annotated[float, typer.Option(help="Least share of inputs with a valid program.")] = 0.2,
    max_kl: Annotated[float, typer.Option(help="Drift bound (KL, nats) of op and length distributions.")] = 0.5,
    accept: Annotated[bool, typer.Option(help="Make passing labels the new reference.")] = True,
    heldout: Annotated[
        list[str] | None,
        typer.Option(help="Validation or test task file whose questions must not be in the labels (repeatable)."),
    ] = None,
) -> None:
    """Check label files with a great-expectations suite; exit 1 (and keep the reference) when they fail.

    With --heldout, no question of those files may be among the training labels (compared by normalised text). Writes validation.json and validation.html, a report that reads offline.
    """
    from polar.validation import ValidateConfig, ValidationFailed, validate

    try:
        summary = validate(labels, out, ValidateConfig(min_valid_share, max_kl), reference, accept, heldout or [])
    except ValidationFailed as err:
        _fail(str(err), code=1)
    except (ValueError, FileNotFoundError) as err:
        _fail(str(err))
    checks = sum(len(v) for v in summary["results"].values())
    drift = "with" if summary["drift_checked"] else "without (no reference yet)"
    console.print(f"labels valid: {checks} expectations passed, {drift} drift check; report: {summary['report']}")


@app.command(name="train")
def train_cmd(
    labels: Annotated[list[str], typer.Option(help="Merged label files (labels.jsonl) of one base model; repeatable.")],
    out: Annotated[str, typer.Option(help="Output folder: predictor.safetensors, config.json, history.json.")],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Base model spec (default: the one named in the labels).")
    ] = None,
    embedder: Annotated[
        str,
        typer.Option(
            help="minilm (all-MiniLM-L6-v2), backbone:N (the base model's hidden states after N layers), or an encoder folder / hub id."
        ),
    ] = "minilm",
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    lr: float = 5e-4,
    batch: Annotated[int, typer.Option(min=1)] = 128,
    full_weight: Annotated[
        float, typer.Option(help="Weight of the full-depth target where a shorter one exists.")
    ] = 0.3,
    space: Annotated[
        str, typer.Option(help="Learn only valid programs of this space: skip (no repeats), loop (no skips), joint.")
    ] = "joint",
    levels: Annotated[
        str | None, typer.Option(help="Train on these levels only, e.g. 1-3 (out-of-distribution tests).")
    ] = None,
    max_targets: Annotated[
        int, typer.Option(min=1, help="Valid programs per input used as targets, shortest first.")
    ] = 8,
    val_fraction: float = 0.2,
    identity_rule: Annotated[
        str,
        typer.Option(
            help="Decoding: mass ranks the full-depth program first only when the model gives it at least half "
            "the probability; marginal keeps the plain beam order (which ranks it first whenever edits disagree)."
        ),
    ] = "mass",
    seed: int = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Train the program predictor on label files; keeps the checkpoint with the best validation loss."""
    from polar.backbone import ModelSpecError
    from polar.embedder import EmbedderError
    from polar.train import TrainConfig, train

    try:
        config = TrainConfig(
            embedder=embedder,
            epochs=epochs,
            lr=lr,
            batch=batch,
            full_weight=full_weight,
            val_fraction=val_fraction,
            seed=seed,
            space=space,
            levels=_level_names(levels) if levels else (),
            max_targets=max_targets,
            identity_rule=identity_rule,
        )
        path = train(labels, out, config, base_model=model, device=device)
    except (ValueError, FileNotFoundError, ModelSpecError, EmbedderError) as err:
        _fail(str(err))
    meta = json.loads((path / "config.json").read_text())["meta"]
    console.print(
        f"predictor: {path} (best epoch {meta['best']['epoch']}, validation loss {meta['best']['val_loss']:.3f}; "
        f"{meta['data']['inputs_with_targets']}/{meta['data']['inputs']} inputs had a valid program)"
    )


@app.command(name="evaluate")
def evaluate_cmd(
    predictor: Annotated[str, typer.Option(help="Predictor folder written by `polar train`.")],
    tasks: Annotated[str, typer.Option(help="Task file of the inputs to evaluate on (held out from training).")],
    out: Annotated[str, typer.Option(help="Output folder: metrics.json, results.jsonl, report.md, plot.")],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Base model (default: the predictor's base model).")
    ] = None,
    other: Annotated[
        list[str] | None, typer.Option(help="Another predictor to compare, as NAME=FOLDER (repeatable).")
    ] = None,
    oracle_labels: Annotated[
        str | None, typer.Option(help="labels.jsonl of the same inputs: the search oracle as upper bound.")
    ] = None,
    k: Annotated[int, typer.Option(min=1, help="pass@1..k.")] = 5,
    prompt: Annotated[
        str | None, typer.Option(help="Prompt style; must be the labels' (default: the predictor's recorded prompt).")
    ] = None,
    shots: Annotated[int | None, typer.Option(min=0, help="Few-shot examples; must be the labels'.")] = None,
    shots_from: Annotated[
        str, typer.Option(help="Few-shot pool; its shots must be the labels' (default: the predictor's).")
    ] = "",
    temperature: Annotated[float, typer.Option(help="Base model's sampling temperature for its pass@k.")] = 0.7,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Generation budget (use the labels' budget).")] = 50,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N inputs.")] = None,
    seed: int = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Run the predictor's programs on the model against baselines; write the report and metrics."""
    from polar.backbone import ModelSpecError
    from polar.evaluate import EvalConfig, evaluate
    from polar.predictor import load as load_predictor
    from polar.report import write_report

    try:
        others = dict(_name_path(o) for o in other or [])
        spec = model or load_predictor(predictor).config.meta.get("base_model")
        if not spec:
            raise ValueError(f"{predictor} does not record its base model; pass --model")
        config = EvalConfig(
            k=k,
            shots=shots,
            prompt=prompt,
            shots_from=shots_from,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
        )
        metrics = evaluate(spec, predictor, tasks, out, config, others, oracle_labels, limit=limit, device=device)
    except (ValueError, FileNotFoundError, ModelSpecError) as err:
        _fail(str(err))
    report = write_report(metrics, command="polar evaluate " + " ".join(sys.argv[2:]))
    m = json.loads(metrics.read_text())
    table = Table(title=f"{spec}: {m['inputs']} inputs")
    for col in ("method", "pass@1", "95% CI", "layers / D"):
        table.add_column(col)
    for name, r in m["methods"].items():
        table.add_row(
            name,
            f"{100 * r['pass@1']:.1f}%",
            f"{100 * r['ci95'][0]:.0f}-{100 * r['ci95'][1]:.0f}%",
            f"{r['layers_ratio']:.2f}",
        )
    console.print(table)
    console.print(f"report: {report}")


TrackingOpt = Annotated[
    str | None,
    typer.Option(help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow/mlflow.db)."),
]


@app.command(name="register")
def register_cmd(
    predictor: Annotated[str, typer.Option(help="Predictor folder written by `polar train`.")],
    metrics: Annotated[str, typer.Option(help="metrics.json written by `polar evaluate` for this predictor.")],
    artifact: Annotated[
        list[str] | None, typer.Option(help="More files to attach (report, plots); repeatable.")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option(help="More tags KEY=VALUE on the version; repeatable.")] = None,
    promote: Annotated[bool, typer.Option(help="Then promote the new version if it passes the gates.")] = False,
    tolerance: Annotated[float, typer.Option(help="Gate: largest pass@1 drop against the champion.")] = 0.02,
    layer_budget: Annotated[float, typer.Option(help="Gate: largest average layers / D.")] = 1.0,
    out: Annotated[str | None, typer.Option(help="Write the version and the promotion decision as JSON here.")] = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Log the predictor and its evaluation to MLflow and register a new version (alias: candidate).

    The version is tagged with the git commit and the DVC hashes (dvc.lock) of its base model, task
    files, labels and weights, for `polar lineage`.
    """
    from polar.registry import Gates, register
    from polar.registry import promote as do_promote

    try:
        tags = dict(_name_path(t) for t in tag or [])
        info = register(predictor, metrics, tracking_uri, tags, artifact or [])
        if promote:
            info["promotion"] = do_promote(info["name"], info["version"], Gates(tolerance, layer_budget), tracking_uri)
    except (ValueError, FileNotFoundError, ConnectionError) as err:
        _fail(str(err))
    console.print(f"registered {info['name']} version {info['version']} (alias candidate; run {info['run_id']})")
    if promote:
        decision = info["promotion"]
        verdict = "now @champion" if decision["promoted"] else "not promoted: " + "; ".join(decision["reasons"])
        console.print(f"{info['name']} v{info['version']} {verdict}")
    if out:  # a DVC output: what a fresh registry gives for the same inputs (the run id lives in MLflow only)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({k: v for k, v in info.items() if k != "run_id"}, indent=2) + "\n")


@app.command(name="promote")
def promote_cmd(
    name: Annotated[str, typer.Argument(help="Registered model, e.g. polar-smollm2-135m.")],
    version: Annotated[str | None, typer.Option(help="Version to promote (default: the candidate).")] = None,
    tolerance: Annotated[float, typer.Option(help="Largest pass@1 drop allowed against the current champion.")] = 0.02,
    layer_budget: Annotated[float, typer.Option(help="Largest average layers / D allowed.")] = 1.0,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Move the champion alias to a version that passes the gates; exit 1 with the reasons if it does not."""
    from polar.registry import Gates, promote

    try:
        decision = promote(name, version, Gates(tolerance, layer_budget), tracking_uri)
    except (ValueError, ConnectionError) as err:
        _fail(str(err))
    if not decision["promoted"]:
        _fail(f"{name} v{decision['version']} stays out: " + "; ".join(decision["reasons"]), code=1)
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
        _fail(str(err))
    if as_json:
        console.print_json(json.dumps(info))
    else:
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
    if any(not i["found_in"] for i in info["inputs"]):
        _fail("some inputs are not in the DVC cache or remote: `dvc pull` or re-run `dvc repro`", code=1)


@app.command(name="pipeline")
def pipeline_cmd(
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Base model of params.yaml to run (repeatable; default: all)."),
    ] = None,
    push: Annotated[bool, typer.Option(help="dvc push the outputs to the default remote at the end.")] = True,
) -> None:
    """The main job: ingest, label, validate, train, evaluate and register every base model of params.yaml.

    Runs the Prefect flow of flows/pipeline.py over the DVC stages of dvc.yaml, from the project root; stages that DVC finds up to date are skipped.

    Uses $PREFECT_API_URL when set, else a temporary local Prefect server, and $MLFLOW_TRACKING_URI when set, else mlflow/mlflow.db. Exit 1 when a model's chain stops (e.g. its labels fail validation).
    """
    from polar.pipeline import check_models, load_flows, project_root, summary
    from polar.registry import default_tracking_uri

    # The temporary server's telemetry heartbeat races the flow for its SQLite file ("database is locked").
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    try:
        root = project_root()
        check_models(root, model)
        flows = load_flows()
        prefect_url = flows.check_prefect()
        outcome = flows.pipeline(models=model or None, cwd=str(root), push_outputs=push)
    except (ValueError, FileNotFoundError, ConnectionError) as err:
        _fail(str(err))
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
    ):
        console.print(line, soft_wrap=True)
    if any(result != "registered" for result in outcome.values()):
        raise typer.Exit(1)


def _print_summary(info: dict, result: str, root: Path) -> None:
    from polar.pipeline import registry_status

    console.print(f"\n[bold]{info['model']}[/]: {result}")
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
        console.print(f"  registry         {registry_status(reg)}", soft_wrap=True)
        console.print(f"  lineage          polar lineage models:/{reg['name']}/{reg['version']}", soft_wrap=True)


def _name_path(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"{text!r}: write NAME=VALUE, e.g. skip-only=models/predictors/m/skip")
    return name, path


def main() -> None:  # pragma: no cover - entry point
    sys.exit(app())
