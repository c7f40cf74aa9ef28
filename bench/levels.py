"""Base accuracy of a model on each synthetic level (full depth, greedy): the levels' calibration.

.venv/bin/python bench/levels.py --model smollm2-135m --n 40 [--prompt chat]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from polar.backbone import load
from polar.programs import Program
from polar.tasks import synthetic
from polar.tasks.answers import grade
from polar.tasks.prompts import PROMPT_STYLES, PromptBuilder, stop_token_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--shots", type=int, default=3)
    parser.add_argument("--prompt", default="plain", choices=PROMPT_STYLES)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    backbone = load(args.model, device=args.device)
    builder, stops = PromptBuilder(args.prompt), stop_token_ids(backbone.tokenizer)
    full = Program.identity(backbone.depth)
    results = {"model": args.model, "n": args.n, "shots": args.shots, "prompt_builder": builder.id(args.shots)}
    for level in synthetic.LEVELS:
        examples = synthetic.generate(level, args.n, seed=0)
        prompts = [
            builder.encode(e.question, synthetic.few_shot(level, args.shots, {e.question}), backbone.tokenizer)
            for e in examples
        ]
        outs = []
        for i in range(0, len(prompts), 8):  # batches of 8 prompts
            outs += backbone.executor.generate(prompts[i : i + 8], [full], 50, stop_token_ids=stops)
        correct = sum(grade(g.text, e.answer, e.answer_kind)[1] for g, e in zip(outs, examples, strict=True))
        results[f"level_{level}"] = f"{correct}/{args.n}"
        print(level, f"{correct}/{args.n}", repr(outs[0].text), flush=True)
    print(json.dumps(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
