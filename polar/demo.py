"""The main job for now: one prompt through the full-depth program, a skip program and a loop program."""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from polar.backbone import load
from polar.programs import Program

DEFAULT_PROMPTS = {
    "chat": "What is 7 + 5?",
    "base": "Question: What is 7 + 5?\nAnswer:",
}


# Programs found by running the one- and two-layer skip and loop variants of the full program on the
# default prompt. SmolLM2: both still answer 12, the skip one with 27 of 30 layers. Gemma-3-270M answers
# 14 at full depth; skipping layers 11-12 makes it answer 12 with 16 of 18 layers (no loop of one or two
# layers does).
KNOWN_PROGRAMS = {
    "smollm2-135m": {"skip": "0-4,8-29", "loop": "0-6,6-29"},
    "gemma3-270m": {"skip": "0-10,13-17", "loop": "0-9,8-17"},
}


def demo_programs(model: str, depth: int) -> dict[str, Program]:
    """Full depth, a skip program and a loop program (generic ones for models without known programs)."""
    if model in KNOWN_PROGRAMS:
        known = {k: Program.parse(v) for k, v in KNOWN_PROGRAMS[model].items()}
        return {"full depth": Program.identity(depth), **known}
    skip_start, loop_start = (2 * depth) // 3 - 1, depth // 2 - 1
    return {
        "full depth": Program.identity(depth),
        "skip": Program(tuple(i for i in range(depth) if not skip_start <= i < skip_start + 3)),
        "loop": Program(
            tuple(range(loop_start + 2)) + (loop_start, loop_start + 1) + tuple(range(loop_start + 2, depth))
        ),
    }


def run_demo(model: str, prompt: str | None, max_new_tokens: int, device: str, console: Console) -> None:
    t0 = time.perf_counter()
    backbone = load(model, device=device)
    load_s = time.perf_counter() - t0
    prompt = prompt or DEFAULT_PROMPTS[backbone.prompt_style]
    ids = backbone.encode_prompt(prompt)
    programs = demo_programs(model, backbone.depth)
    console.print(
        f"[bold]{model}[/] ({backbone.model_type}, {backbone.depth} layers, {backbone.prompt_style} prompts, "
        f"{backbone.model.device}) loaded in {load_s:.1f} s\n[bold]prompt:[/] {prompt}",
        highlight=False,
    )
    backbone.executor.generate([ids], [Program.identity(backbone.depth)], 2)  # warm-up, so speeds compare
    table = Table("program", "layers/token", "text", "tokens/s", show_lines=True)
    results = {}
    for label, program in programs.items():  # one at a time, so that each row's speed is its own
        g = backbone.executor.generate([ids], [program], max_new_tokens)[0]
        results[label] = g
        table.add_row(
            f"{label}\n[dim]{g.program}[/]",
            f"{g.layers_per_token}/{g.depth}",
            g.text,
            f"{len(g.tokens) / g.seconds:.1f}",
        )
    console.print(table)
    # The per-visit KV cache at work: cached decoding of the loop program equals full recomputation.
    loop = programs["loop"]
    recomputed = backbone.executor.generate([ids], [loop], max_new_tokens, use_cache=False)[0]
    same = recomputed.tokens == results["loop"].tokens
    console.print(
        f"loop program, cached vs recomputed at every step: "
        f"{'[green]identical tokens[/]' if same else '[red]DIFFERENT tokens[/]'} "
        f"(cached {results['loop'].seconds:.1f} s, recomputed {recomputed.seconds:.1f} s)"
    )
    console.print(
        f"Try your own: polar generate --model {model} --program '{loop.text}' 'your prompt'   |   "
        "polar program --help",
        style="dim",
        highlight=False,
    )
    if not same:
        raise SystemExit("cached decoding diverged from recomputation: please report this as a bug")
