"""Menu cost by scoring mode: programs/s of likelihood menus against generation menus on the same inputs.

For each base model, the same multiple-choice inputs (ARC-Easy validation, one level: one few-shot prefix) and
the same menu run through :func:`polar.labeling.menu.run_menu` twice per repeat, alternating:

- ``generate``: each program generates its answer line after the lettered question (the qa prompt, the label
  stage's generation budget), graded; the letters' likelihoods are scored beside it, as every menu run does;
- ``likelihood``: each program scores every choice's text after the cloze prompt (no generation).

A second pair on the synthetic levels times the generation grid with and without the reference answer's
likelihood, which every generation menu now records (its overhead). Each pair alternates its two sides
``--repeats`` times and reports the median per-pair ratio (the machine is shared: absolute times drift).
Writes ``bench/results/likelihood-cpu.json`` (or ``--out``).

    .venv/bin/python bench/bench_likelihood.py --data ../shared/data            # both bundled models, CPU
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from polar.backbone import load
from polar.ingest import ingest
from polar.labeling.menu import resolve_menu, run_menu
from polar.settings import IngestConfig, LabelConfig, MenuConfig
from polar.tasks.files import read_examples

REPO = Path(__file__).resolve().parents[1]
PAIRS = ("scoring", "overhead")  # likelihood against generation menus; a generation grid with its likelihoods or not
MODELS = {"smollm2-135m": "bench/menus/smollm2-135m/menu.txt", "gemma3-270m": "bench/menus/gemma3-270m/menu.txt"}


def _inputs(data: Path, tmp: Path, n: int) -> tuple[Path, list, Path, list]:
    arc = IngestConfig(task="arc-easy", splits="files", source=str(data / "arc/genmc_official/arc_easy"), shots=3)
    arc_paths, _ = ingest(tmp / "arc", arc)
    levels, _ = ingest(tmp / "levels", IngestConfig(levels="3", train=n, validation=1, test=1))
    return (
        arc_paths["validation"],
        read_examples(arc_paths["validation"])[:n],
        levels["train"],
        read_examples(levels["train"])[:n],
    )


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _pair(a, b, repeats: int) -> dict:
    """Seconds of ``a`` and ``b`` alternated ``repeats`` times (after one warm-up each), and their median ratio."""
    a(), b()
    times = [(_timed(a), _timed(b)) for _ in range(repeats)]
    return {
        "seconds_a": [round(x, 3) for x, _ in times],
        "seconds_b": [round(y, 3) for _, y in times],
        "ratio_a_over_b": round(statistics.median(x / y for x, y in times), 3),
    }


def bench_model(
    name: str, menu_file: str, data: Path, inputs: int, programs: int, repeats: int, device: str, pairs=PAIRS
) -> dict:
    backbone = load(name, device=device)
    menu = resolve_menu(str(REPO / menu_file), backbone.depth, 2)[:programs]
    config = LabelConfig()  # the label stage's settings: 3 shots, plain prompt, 50 new tokens
    dense = MenuConfig(samples=0)
    with tempfile.TemporaryDirectory() as tmp:
        arc_file, arc, levels_file, levels = _inputs(data, Path(tmp), inputs)
        qa, cloze = config.prompt_spec(arc_file), config.prompt_spec(arc_file, "cloze")
        generate = replace(dense, scoring="generate")
        likelihood = replace(dense, scoring="likelihood")
        row = {
            "model": name,
            "depth": backbone.depth,
            "parameters": sum(p.numel() for p in backbone.model.parameters()),
            "inputs": inputs,
            "programs": len(menu),
        }
        if "scoring" in pairs:
            scoring = _pair(
                lambda: run_menu(backbone, arc, qa, menu, config, generate, "bench"),
                lambda: run_menu(backbone, arc, cloze, menu, config, likelihood, "bench"),
                repeats,
            )
            cells = inputs * len(menu)
            gen_s, lik_s = statistics.median(scoring["seconds_a"]), statistics.median(scoring["seconds_b"])
            row["arc_easy"] = {
                **scoring,
                "generate_programs_per_s": round(cells / gen_s, 2),
                "likelihood_programs_per_s": round(cells / lik_s, 2),
                "likelihood_speedup": round(scoring["ratio_a_over_b"], 2),
            }
        if "overhead" not in pairs:
            return row
        # Generation menus on the levels, with and without the reference answer's likelihood.
        from polar.grid import generate_grid
        from polar.tasks.prompts import stop_token_ids

        spec = config.prompt_spec(levels_file)
        encoded = [spec.encode_scored(e, backbone.tokenizer) for e in levels]
        prompts, answers = [p for p, _ in encoded], [t for _, t in encoded]
        stops = stop_token_ids(backbone.tokenizer)
        overhead = _pair(
            lambda: generate_grid(backbone.executor, prompts, menu, config.max_new_tokens, stops, None, answers),
            lambda: generate_grid(backbone.executor, prompts, menu, config.max_new_tokens, stops),
            repeats,
        )
    row["levels_reference_likelihood_overhead"] = {**overhead, "overhead": round(overhead["ratio_a_over_b"] - 1, 3)}
    return row


# The study the issue asks for, per (model, task): inputs x programs of the committed multiple-choice menus.
STUDY_INPUTS, STUDY_PROGRAMS = 1000 + 300 + 500, 24
SIZES = {"1B": 1.0e9, "3B": 3.0e9, "8B": 8.0e9}


def projection(row: dict) -> dict:
    """Hours of one study's menu labeling at 1B, 3B and 8B parameters on this machine, from ``row``'s measured
    programs/s, assuming the cost of a program grows with the parameters (CPU inference here is compute-bound:
    cost per token ~ 2 x parameters FLOPs) and everything else stays as measured."""
    cells = STUDY_INPUTS * STUDY_PROGRAMS
    out = {}
    for size, params in SIZES.items():
        slower = params / row["parameters"]
        out[size] = {
            mode: round(cells / (row["arc_easy"][f"{mode}_programs_per_s"] / slower) / 3600, 1)
            for mode in ("generate", "likelihood")
        }
    return {"cells": cells, "hours": out, "rule": "hours = inputs x programs / (programs/s x measured params / P)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="the benchmark files")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--inputs", type=int, default=8)
    parser.add_argument("--programs", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pairs", nargs="+", choices=PAIRS, default=list(PAIRS), help="which pairs to time")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/likelihood-cpu.json")
    args = parser.parse_args()
    rows = [
        bench_model(m, MODELS[m], args.data, args.inputs, args.programs, args.repeats, args.device, args.pairs)
        for m in args.models
    ]
    for row in rows:
        if "arc_easy" in row:
            row["projection"] = projection(row)
    result = {
        "command": "python bench/bench_likelihood.py "
        + " ".join(
            f"--{k} {v}"
            for k, v in (
                ("inputs", args.inputs),
                ("programs", args.programs),
                ("repeats", args.repeats),
                ("device", args.device),
                ("pairs", " ".join(args.pairs)),
            )  # fmt: skip
        ),
        "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__},
        "models": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        said = [f"{r['model']}, {r['inputs']} inputs x {r['programs']} programs:"]
        if "arc_easy" in r:
            a = r["arc_easy"]
            said.append(
                f"ARC-Easy generate {a['generate_programs_per_s']} programs/s, likelihood "
                f"{a['likelihood_programs_per_s']} programs/s ({a['likelihood_speedup']}x);"
            )
        if "levels_reference_likelihood_overhead" in r:
            o = r["levels_reference_likelihood_overhead"]
            said.append(
                f"the reference answer's likelihood adds {100 * o['overhead']:+.1f}% to a level-3 generation grid"
            )
        print(" ".join(said))


if __name__ == "__main__":
    main()
