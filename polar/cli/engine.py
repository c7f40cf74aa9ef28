"""Commands that run the engine: generate along programs, inspect programs, convert and list models, the demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from polar.cli.options import DeviceOpt, DtypeOpt, ModelOpt, app, console, fail
from polar.programs import DEFAULT_K_MAX, DEFAULT_MAX_VISITS, CompactProgram, Program, ProgramError

MaxVisitsOpt = Annotated[int, typer.Option(help="Most times one layer may run in a program (0: no limit).")]


def _resolve_program(text: str, depth: int, max_visits: int) -> Program:
    """Parse ``text`` (text form, compact form, or ``full``) and check it against the model."""
    text = text.strip()
    if text.lower() in ("full", "identity"):
        return Program.identity(depth)
    return Program.parse_any(text).validate(depth, max_visits=max_visits or None)


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
    dtype: DtypeOpt = "auto",
) -> None:
    """Generate text from PROMPT with the model run along one or more layer programs."""
    from polar.backbone import ModelSpecError, load
    from polar.executor import Sampling
    from polar.hf import UnsupportedModelError

    try:
        backbone = load(model, device=device, dtype=dtype, chat=False if raw else None)
        programs = [_resolve_program(p, backbone.depth, max_visits) for p in (program or ["full"])]
    except (ModelSpecError, UnsupportedModelError, ProgramError, ValueError) as err:
        fail(str(err))
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
        fail(str(err))
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
    from polar.backbone import ModelSpecError, model_depth

    try:
        return model_depth(spec)
    except ModelSpecError as err:
        fail(str(err))


@app.command()
def convert(
    spec: Annotated[str, typer.Argument(help="A bundled name, a .gguf file, a model directory or a hub id.")],
    out: Annotated[str | None, typer.Option(help="Output folder (default: models/<name>).")] = None,
) -> None:
    """Convert a model once to a safetensors folder that loads in about a second."""
    from polar.backbone import BUNDLED, ModelSpecError, model_slug, models_dir
    from polar.backbone import convert as do_convert
    from polar.hf import UnsupportedModelError

    if out is None:
        name = model_slug(spec if spec in BUNDLED or Path(spec).exists() else spec.replace("/", "--"))
    target = Path(out) if out else models_dir() / name
    try:
        path = do_convert(spec, target)
    except (ModelSpecError, UnsupportedModelError) as err:
        fail(str(err))
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
