"""The noise floor of a committed generation matrix, measured after the fact: a fixed share of its rows run alone.

Matrices committed before ``polar label --menu`` recorded its recheck (``menu.recheck``) carry no noise floor.
This picks the same rows labeling would (:func:`polar.labeling.menu.rechecked`: a hash of the input's id and the
program), runs each alone on the model, with the prompt and budget of the matrix's ``settings.json``, and counts the
rows whose answer (the graded prediction and the number of tokens generated) or verdict differ from the matrix's;
log-probabilities that differ (another processor, another thread count, the grid's padding) are counted apart.
Generation matrices of the synthetic levels only (their inputs file holds every field a question needs).

    python bench/menus/recheck.py bench/menus/smollm2-135m/test --model models/smollm2-135m --share 0.02 \
        --out bench/menus/smollm2-135m/test-recheck.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from polar.backbone import load
from polar.grid import generate_grid
from polar.labeling.menu import rechecked
from polar.programs import Program
from polar.stats import wilson
from polar.tasks.answers import grade
from polar.tasks.prompts import PromptSpec, stop_token_ids
from polar.tasks.schema import Example


def recheck(folder: Path, model: str, share: float, threads: int) -> dict:
    """The rechecked rows of the matrix in ``folder`` and how many differ alone; see the module's text."""
    settings = json.loads((folder / "settings.json").read_text())
    if settings["config"].get("scoring", "generate") != "generate":
        raise SystemExit(f"{folder}: a likelihood matrix; this recheck runs generation matrices")
    prompt = PromptSpec.from_dict(settings["prompt"])
    budget = int(settings["config"]["max_new_tokens"])
    inputs = pd.read_parquet(folder / "inputs.parquet").set_index("id")
    rewards = pd.read_parquet(folder / "rewards.parquet")
    rows = rewards[[rechecked(i, p, share) for i, p in zip(rewards["id"], rewards["program"], strict=True)]]
    backbone = load(model, device="cpu", dtype="float32", threads=threads)
    stops = stop_token_ids(backbone.tokenizer)
    texts = verdicts = logprobs = 0
    largest = 0.0
    for row in tqdm(rows.itertuples(), total=len(rows), desc=f"recheck {folder}", unit="row"):
        q = inputs.loc[row.id]
        example = Example(row.id, q["question"], str(q["answer"]), "arith", str(q["level"]), str(folder))
        ids = prompt.encode(example.question, example.level, backbone.tokenizer)
        alone = generate_grid(backbone.executor, [ids], [Program.parse(row.program)], budget, stops)[0][0]
        prediction, ok = grade(alone.text, example.answer, example.answer_kind)
        texts += (prediction, len(alone.tokens)) != (row.prediction, row.tokens)
        verdicts += bool(ok) != bool(row.correct)
        logprobs += round(alone.logprob, 4) != row.logprob
        largest = max(largest, abs(round(alone.logprob, 4) - row.logprob))
    lo, hi = wilson(verdicts, len(rows))
    return {
        "matrix": str(folder),
        "model": model,
        "labeled": settings.get("engine") or "float32 on a CPU (before numerics were recorded)",
        "rechecked_with": {"dtype": "float32", "device": "cpu", "threads": threads},
        "share": share,
        "rows": len(rows),
        "texts_differ": texts,
        "verdicts_differ": verdicts,
        "verdict_flip_rate": verdicts / len(rows) if len(rows) else None,
        "verdict_flip_ci95": [lo, hi],
        "logprobs_differ": logprobs,  # the answer line's summed log-probability, rounded to 4 decimals as stored
        "logprob_largest_difference": round(largest, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--share", type=float, default=0.02)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = recheck(args.folder, args.model, args.share, args.threads)
    command = f"python bench/menus/recheck.py {args.folder} --model {args.model} --share {args.share} "
    result = {"command": command + f"--threads {args.threads} --out {args.out}", **result}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
