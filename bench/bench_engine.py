"""Engine benchmark: ratios measured side by side in one run (absolute times drift on a shared machine).

1. program generation at full depth vs the stock ``model.generate`` (same tokens, goal: within 5%);
2. cost vs executed layers: a half-depth program vs full depth (goal: at most 0.6);
3. N programs over one prompt, batched vs one at a time;
4. this executor vs the one of commit ``--before`` (its executor, hf, plan and prefix modules read with
   ``git show`` and imported as the package ``polar_before``; goal: no slower), on (a) one prompt at full
   depth, (b) N one-edit programs over one question whose rows stop at different steps (the labeling
   case: newline and EOS end a row), (c) a batch of different questions under the full program. Both
   must produce the same tokens; tokens/s counts the tokens the rows keep.

Each comparison alternates its two sides ``--repeats`` times and reports the median of the per-pair
ratios, so that drift in machine load hits both sides alike.

    .venv/bin/python bench/bench_engine.py                       # bundled SmolLM2 on CPU
    .venv/bin/python bench/bench_engine.py --random-weights --device cuda
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from polar.backbone import load, resolve_device
from polar.executor import Executor
from polar.programs import Program
from polar.tasks.prompts import stop_token_ids

PROMPT = "Write a short story about a robot who learns to paint."
# (b): one-edit variants of the full program answer this in 8 to 50 tokens (SmolLM2-135M-Instruct).
QUESTION = "Name the capital of France in one word."
# (c): questions whose answers end after a line, a few lines, or not within the budget.
QUESTIONS = [
    QUESTION,
    "What is 17 + 25? Reply with the number only.",
    "Write a short story about a robot who learns to paint.",
    "Is the sky blue? Answer yes or no.",
    "List three colours.",
    "Explain in two sentences why the sea is salty.",
    "Translate 'good morning' into French.",
    "Give me a haiku about autumn.",
]
REPO = Path(__file__).resolve().parents[1]


def load_before(rev: str):
    """The Executor class of commit ``rev``, with that commit's hf, plan and prefix modules."""
    root = Path(tempfile.mkdtemp()) / "polar_before"
    root.mkdir()
    (root / "__init__.py").write_text("")
    modules = ("executor", "hf", "plan", "prefix")
    for name in modules:
        show = ["git", "-C", str(REPO), "show", f"{rev}:polar/{name}.py"]
        source = subprocess.run(show, capture_output=True, text=True, check=True).stdout
        for m in modules:
            source = source.replace(f"from polar.{m} import", f"from polar_before.{m} import")
        (root / f"{name}.py").write_text(source)
    sys.path.insert(0, str(root.parent))
    return importlib.import_module("polar_before.executor").Executor


def timed(fn) -> tuple[float, object]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def paired(a, b, repeats: int) -> dict:
    """Alternate a and b; the median of b/a over the pairs, and the medians of each side."""
    a(), b()  # warm-up
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(timed(a)[0])
        tb.append(timed(b)[0])
    ratios = [y / x for x, y in zip(ta, tb, strict=True)]
    return {
        "ratio": statistics.median(ratios),
        "a_s": statistics.median(ta),
        "b_s": statistics.median(tb),
        "ratios": sorted(round(r, 3) for r in ratios),  # the spread: how much the machine's load moved
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--random-weights", action="store_true", help="same config, random weights (speed only)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--programs", type=int, default=16, help="N for the batched-programs comparison")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before", default="de08103", help="commit of the executor to compare against (4.)")
    parser.add_argument("--budget", type=int, default=50, help="max new tokens of 4. (b) and (c)")
    parser.add_argument("--edits", type=int, default=16, help="programs of 4. (b): a search round")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = resolve_device(args.device)
    backbone = load(args.model, device=str(device))
    model = backbone.model
    if args.random_weights:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(model.config, dtype=model.dtype).to(device).eval()
    executor = Executor(model, backbone.tokenizer)
    depth, n = executor.depth, args.new_tokens
    ids = backbone.encode_prompt(PROMPT)
    x = torch.tensor([ids], device=device)
    full = Program.identity(depth)

    def stock():
        return model.generate(
            x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n, do_sample=False
        )[0, len(ids) :].tolist()

    def ours(program=full):
        return executor.generate([ids], [program], n)[0].tokens

    # Same work on both sides: the stock tokens must equal ours (and run to the full length).
    same = stock() == ours()
    results = {
        "model": args.model + (" (random weights)" if args.random_weights else ""),
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "dtype": str(model.dtype),
        "prompt_tokens": len(ids),
        "new_tokens": n,
        "identical_tokens_to_stock": same,
    }
    r = paired(stock, ours, args.repeats)
    results["full_depth_vs_stock_generate"] = {**r, "goal": "<= 1.05"}

    # Half depth: every other layer, so that the half spans the whole network.
    half = Program(tuple(range(0, depth, 2)))
    r = paired(lambda: ours(full), lambda: ours(half), args.repeats)
    results["half_depth_vs_full_depth"] = {**r, "layers": f"{len(half)}/{depth}", "goal": "<= 0.6"}

    # N programs over one prompt: one-edit variants of the full program (as search produces).
    rng = torch.Generator().manual_seed(0)
    programs = []
    for _ in range(args.programs):
        i = int(torch.randint(1, depth - 2, (1,), generator=rng))
        programs.append(Program(tuple(range(i + 1)) + (i,) + tuple(range(i + 1, depth))))
    batched = lambda: executor.generate([ids], programs, n)  # noqa: E731
    one_by_one = lambda: [executor.generate([ids], [p], n) for p in programs]  # noqa: E731
    assert [g.tokens for g in batched()] == [g[0].tokens for g in one_by_one()], "batched != one at a time"
    r = paired(one_by_one, batched, max(2, args.repeats // 2))
    results[f"{args.programs}_programs_batched_vs_one_by_one"] = {
        **r,
        "speedup": 1 / r["ratio"],
        "programs_per_s_batched": args.programs / r["b_s"],
        "programs_per_s_one_by_one": args.programs / r["a_s"],
    }

    results["vs_before"] = versus_before(executor, backbone, args)

    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


def versus_before(executor: Executor, backbone, args) -> dict:
    """4.: the same generate() calls through this executor and through the one of ``args.before``."""
    old = load_before(args.before)(executor.model, executor.tokenizer)
    depth, tok = executor.depth, backbone.tokenizer
    stops = stop_token_ids(tok)
    full = Program.identity(depth)
    rng = torch.Generator().manual_seed(0)
    edits = []  # one-edit variants of the full program, as search proposes: loop or skip one layer
    for k in range(args.edits):
        i = int(torch.randint(1, depth - 2, (1,), generator=rng))
        loop = tuple(range(i + 1)) + (i,) + tuple(range(i + 1, depth))
        edits.append(Program(loop if k % 2 else tuple(j for j in range(depth) if j != i)))
    question = backbone.encode_prompt(QUESTION)
    cases = {
        "a_one_prompt_full_depth": ([backbone.encode_prompt(PROMPT)], [full], args.new_tokens, ()),
        f"b_{args.edits}_programs_one_question": ([question], edits, args.budget, stops),
        f"c_{len(QUESTIONS)}_questions_one_program": (
            [backbone.encode_prompt(q) for q in QUESTIONS],
            [full],
            args.budget,
            stops,
        ),
    }
    out = {"before": args.before}
    for name, (prompts, programs, budget, stop) in cases.items():

        def run(ex, prompts=prompts, programs=programs, budget=budget, stop=stop):
            return ex.generate(prompts, programs, budget, stop_token_ids=stop)

        new, before = run(executor), run(old)
        assert [g.tokens for g in new] == [g.tokens for g in before], f"{name}: tokens differ from {args.before}"
        n_tokens = sum(len(g.tokens) for g in new)
        r = paired(lambda run=run: run(old), lambda run=run: run(executor), args.repeats)
        out[name] = {
            **r,
            "goal": "<= 1.0",
            "rows": len(new),
            "max_new_tokens": budget,
            "tokens_per_row": [len(g.tokens) for g in new],
            "tokens_per_s_before": n_tokens / r["a_s"],
            "tokens_per_s_new": n_tokens / r["b_s"],
        }
    return out


if __name__ == "__main__":
    main()
