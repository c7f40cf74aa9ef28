"""The harness cross-check: polar's lm-eval model (full-depth program) against lm-eval's own hf model.

Both run every shipped task (polar_arc_easy, polar_arc_challenge, polar_gsm8k, polar_mmlu_pro_math) on the same
converted model folder, float32, greedy, in alternating order; the script prints how their responses agree (largest
log-likelihood difference, greedy flags, identical generations) and the ratio of their wall times per pair.

    .venv/bin/python bench/bench_harness.py --model smollm2-135m --limit 3 --max-gen-toks 32 --repeats 4 \
        --out bench/results/harness-crosscheck-smollm2-135m.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="a bundled name or a model folder")
    parser.add_argument("--limit", type=int, default=3, help="documents per task")
    parser.add_argument("--max-gen-toks", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8, help="the polar model's rows per forward (hf: 1)")
    parser.add_argument("--repeats", type=int, default=2, help="pairs of runs, alternating which side goes first")
    parser.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = parser.parse_args()

    import lm_eval

    from polar.backbone import BUNDLED, ensure_converted
    from polar.harness import TASK_NAMES, register, task_manager
    from polar.harness.crosscheck import compare_samples

    register()
    folder = str(ensure_converted(args.model)) if args.model in BUNDLED else args.model
    sides = {
        "polar": ("polar", {"model": args.model, "batch_size": args.batch_size}, {}),
        "hf": ("hf", {"pretrained": folder}, {"batch_size": 1}),
    }

    def run(side: str) -> tuple[dict, float]:
        model, model_args, extra = sides[side]
        start = time.perf_counter()
        results = lm_eval.simple_evaluate(
            model=model,
            model_args={**model_args, "dtype": "float32", "device": "cpu"},
            tasks=list(TASK_NAMES),
            task_manager=task_manager(include_defaults=False),
            limit=args.limit,
            gen_kwargs={"max_gen_toks": args.max_gen_toks},
            bootstrap_iters=0,
            log_samples=True,
            **extra,
        )
        return results, time.perf_counter() - start

    pairs = []
    for r in range(args.repeats):
        order = ("polar", "hf") if r % 2 == 0 else ("hf", "polar")
        done = {side: run(side) for side in order}
        agreement = compare_samples(done["polar"][0], done["hf"][0], TASK_NAMES)
        pairs.append({"polar_s": done["polar"][1], "hf_s": done["hf"][1], "agreement": agreement.to_dict()})
        print(
            f"pair {r + 1}: polar {done['polar'][1]:.1f} s, hf {done['hf'][1]:.1f} s; {agreement.scored} scored "
            f"(max |diff| {agreement.max_logprob_diff:.2e}, greedy flags differ {agreement.greedy_differ}), "
            f"{agreement.generated - agreement.text_differ}/{agreement.generated} generations identical",
            flush=True,
        )
    ratios = [p["polar_s"] / p["hf_s"] for p in pairs]
    summary = {
        "model": args.model,
        "tasks": list(TASK_NAMES),
        "limit": args.limit,
        "max_gen_toks": args.max_gen_toks,
        "time_ratio_polar_over_hf": {"median": statistics.median(ratios), "all": ratios},
        "all_equal": all(p["agreement"]["equal"] for p in pairs),
        "pairs": pairs,
    }
    print(
        f"polar / hf wall time: median {summary['time_ratio_polar_over_hf']['median']:.2f} "
        f"({', '.join(f'{x:.2f}' for x in ratios)}); all responses agree: {summary['all_equal']}"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
