"""Base accuracy of a model on each synthetic level (full depth, greedy): the levels' calibration.

The prompt is the pipeline's: the first SHOTS examples of each level's few-shot pool (the `shots` split), as
`polar ingest` writes it. Questions come from the test split.

.venv/bin/python bench/levels.py --model smollm2-135m --n 200 --out bench/results/levels-smollm2-135m.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from tqdm import tqdm

from polar.backbone import load
from polar.ingest import synthetic_shots
from polar.programs import Program
from polar.tasks import synthetic
from polar.tasks.answers import grade
from polar.tasks.files import split_path, write_examples
from polar.tasks.prompts import PROMPT_STYLES, PromptSpec, stop_token_ids
from polar.tasks.splits import FRACTIONS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--shots", type=int, default=3)
    parser.add_argument("--prompt", default="plain", choices=PROMPT_STYLES)
    parser.add_argument("--max-new-tokens", type=int, default=50)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    backbone = load(args.model, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:  # the pool file exactly as `polar ingest` writes it: the same spec id
        pool = split_path(tmp, "shots")
        write_examples(pool, synthetic_shots())
        spec = PromptSpec.from_pool(pool, args.prompt, args.shots)
    stops = stop_token_ids(backbone.tokenizer)
    full = Program.identity(backbone.depth)
    results = {"model": args.model, "n": args.n, "prompt": spec.id, "levels": {}}
    for level in synthetic.LEVELS:
        examples = synthetic.generate(level, args.n, seed=0, split="test")
        prompts = [spec.encode(e.question, e.level, backbone.tokenizer) for e in examples]
        outs = []
        for i in tqdm(range(0, len(prompts), 16), desc=f"level {level}", unit="batch"):
            outs += backbone.executor.generate(prompts[i : i + 16], [full], args.max_new_tokens, stop_token_ids=stops)
        correct = sum(grade(g.text, e.answer, e.answer_kind)[1] for g, e in zip(outs, examples, strict=True))
        results["levels"][str(level)] = {
            "correct": correct,
            "n": args.n,
            "accuracy": correct / args.n,
            "distinct_questions": synthetic.size(level),
            "test_questions": round(synthetic.size(level) * FRACTIONS["test"]),
        }
        print(level, f"{correct}/{args.n}", repr(outs[0].text), flush=True)
    print(json.dumps(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
