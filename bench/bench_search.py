"""Labeling benchmark: programs evaluated per second by the label stage vs a one-program-at-a-time loop.

MCTS: the search of `polar label`, which evaluates each round's programs together over the shared prompt
(each prefix of layer visits computed once, and kept across rounds), stops a row at the end of its
answer line and drops finished rows from the batch. Menu: `polar label --menu`, every program of a menu on
every input, the few-shot prefix of a level run once per program and the questions batched across programs
and inputs (polar/grid.py), base-model samples included. Baseline: the reference code's loop, which runs
one program at a time through `generate` with up to 50 new tokens, stopping only at EOS. Each side runs
the same programs on the same inputs; the rewards must be identical (the answer is the first line).

    .venv/bin/python bench/bench_search.py --out bench/results/search-cpu-smollm2-135m.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from polar.backbone import load
from polar.ingest import synthetic_shots
from polar.labeling.folder import LabelRecord
from polar.labeling.menu import level_batches, run_menu
from polar.labeling.search import label_one
from polar.programs import Program
from polar.settings import LabelConfig, MenuConfig, SearchConfig
from polar.tasks import synthetic
from polar.tasks.answers import extract_answer, is_equivalent
from polar.tasks.prompts import PROMPT_STYLES, PromptSpec, answer_line, stop_token_ids


def main() -> None:
    args = _arguments()
    backbone = load(args.model, device=args.device)
    spec = PromptSpec.from_examples(synthetic_shots(), args.prompt, 3, "synthetic shots")
    config = LabelConfig(
        prompt=args.prompt,
        max_new_tokens=args.max_new_tokens,
        search=SearchConfig(simulations=args.simulations, batch=args.batch),
    )
    executor = backbone.executor
    executor.generate([[1, 2, 3]], [Program.identity(executor.depth)], 2)  # warm-up
    mcts, first = mcts_bench(backbone, spec, config, args)
    menu = [Program.parse(p) for p in dict.fromkeys(ev.program for ev in first.evaluated)][: args.menu_size]
    results = {
        "model": args.model,
        "device": str(backbone.model.device),
        "threads": torch.get_num_threads(),
        "simulations": args.simulations,
        "batch": args.batch,
        "mcts": mcts,
        "menu": menu_bench(backbone, spec, config, menu, args),
    }
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--levels", default="1,3,5")
    parser.add_argument("--simulations", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=50)
    parser.add_argument("--prompt", default="plain", choices=PROMPT_STYLES)
    parser.add_argument("--menu-inputs", type=int, default=4, help="menu labeling: inputs per level")
    parser.add_argument("--menu-size", type=int, default=32, help="menu labeling: programs in the menu")
    parser.add_argument("--baseline-inputs", type=int, default=2, help="menu: inputs the baseline loop also runs")
    parser.add_argument(
        "--grid-inputs", type=int, default=MenuConfig.grid_inputs, help="menu: inputs of a level run together"
    )
    parser.add_argument("--out", default=None)
    return parser.parse_args()


def mcts_bench(backbone, spec: PromptSpec, config: LabelConfig, args) -> tuple[dict, LabelRecord]:
    """The search of one input per level against the baseline loop over the programs it evaluated; with the
    first input's record, whose programs make the menu."""
    executor, stops = backbone.executor, stop_token_ids(backbone.tokenizer)
    ours_s = base_s = 0.0
    programs = agree = 0
    per_input, first = [], None
    for level in [int(x) for x in args.levels.split(",")]:
        example = synthetic.generate(level, 1, seed=1, split="train")[0]
        start = time.perf_counter()
        record, _ = label_one(backbone, example, spec, config, stops)
        first = first or record
        t_ours = time.perf_counter() - start
        ids = spec.encode(example.question, example.level, backbone.tokenizer)
        start = time.perf_counter()
        baseline = []
        for ev in record.evaluated:  # the reference loop: one program, up to 50 tokens, EOS only
            g = executor.generate([ids], [ev.program], args.max_new_tokens)[0]
            baseline.append(extract_answer(answer_line(g.text), example.answer_kind))
        t_base = time.perf_counter() - start
        same = [b == ev.prediction for b, ev in zip(baseline, record.evaluated, strict=True)]
        rewards_same = all(
            is_equivalent(b, example.answer, "number") == (ev.reward > 0)
            for b, ev in zip(baseline, record.evaluated, strict=True)
        )
        n = len(record.evaluated)
        ours_s, base_s, programs, agree = ours_s + t_ours, base_s + t_base, programs + n, agree + sum(same)
        per_input.append(
            {
                "level": level,
                "programs": n,
                "ours_s": round(t_ours, 2),
                "baseline_s": round(t_base, 2),
                "speedup": round(t_base / t_ours, 2),
                "identical_rewards": rewards_same,
                "prompt_tokens": len(ids),
                "valid": len(record.valid),
            }
        )
        print(json.dumps(per_input[-1]), flush=True)
    mcts = {
        "programs": programs,
        "identical_predictions": f"{agree}/{programs}",
        "ours_programs_per_s": programs / ours_s,
        "baseline_programs_per_s": programs / base_s,
        "speedup": base_s / ours_s,
        "per_input": per_input,
    }
    return mcts, first


def menu_bench(backbone, spec: PromptSpec, config: LabelConfig, menu: list, args) -> dict:
    """Menu labeling of ``--menu-inputs`` inputs per level against the baseline loop on a slice of them."""
    dense = MenuConfig(menu="bench", samples=4, grid_inputs=args.grid_inputs)
    examples = [
        e for level in args.levels.split(",") for e in synthetic.generate(int(level), args.menu_inputs, 2, "train")
    ]
    name = "bench-menu"
    start = time.perf_counter()
    records = [
        r
        for batch in level_batches(examples, dense.grid_inputs)
        for r in run_menu(backbone, batch, spec, menu, config, dense, name)
    ]
    t_ours = time.perf_counter() - start
    ours = {r.id: r for r in records}
    sliced = examples[:: max(1, len(examples) // args.baseline_inputs)][: args.baseline_inputs]
    start = time.perf_counter()
    same = total = 0
    for example in sliced:
        ids = spec.encode(example.question, example.level, backbone.tokenizer)
        for program, result in zip(menu, ours[example.id].results, strict=True):
            g = backbone.executor.generate([ids], [program], args.max_new_tokens)[0]
            prediction = extract_answer(answer_line(g.text), example.answer_kind)
            same += (
                prediction == result.prediction
                and is_equivalent(prediction, example.answer, "number") == result.correct
            )
            total += 1
    t_base = time.perf_counter() - start
    evaluated = len(examples) * len(menu)
    out = {
        "inputs": len(examples),
        "menu_programs": len(menu),
        "samples_per_input": dense.samples,
        "grid_inputs": dense.grid_inputs,
        "ours_programs_per_s": evaluated / t_ours,
        "baseline_inputs": len(sliced),
        "baseline_programs_per_s": total / t_base,
        "speedup": (evaluated / t_ours) / (total / t_base),
        "identical_rewards": f"{same}/{total}",
        "base_correct": sum(r.results[0].correct for r in records),
    }
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
