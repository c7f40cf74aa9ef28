"""Add the reference answer's likelihood to a menu matrix labeled before menus recorded it (the arithmetic levels).

Every generation menu now records, per (input, program), the teacher-forced log-likelihood of the reference answer
after the prompt (``answer_logprob``, ``answer_tokens``), computed in the generation grid. The committed level
matrices predate that. Re-generating them costs hours; the likelihood alone is one scoring pass
(:func:`polar.likelihood.score_grid`, which tests hold equal to the grid's numbers and to scoring each program
alone). This script scores the matrix's own inputs with the prompt its ``settings.json`` records (shots included,
no tasks file needed) and the menu it records, and writes a copy of the folder with the two columns added:
``correct``, the predictions and every other column stay as labeled. Resumable: scored batches are kept in
``likelihoods.jsonl`` in the output folder, and a run after a kill scores only the rest.

    .venv/bin/python bench/menus/add_likelihoods.py bench/menus/smollm2-135m/test --model models/smollm2-135m \\
        --to bench/menus/smollm2-135m-dense/test
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from polar.likelihood import score_grid
from polar.programs import Program
from polar.tasks.prompts import PromptSpec
from polar.tasks.schema import Example

PART = "likelihoods.jsonl"


def _examples(inputs: pd.DataFrame) -> list[Example]:
    """The matrix's inputs as the prompt spec encodes them (the task is the id's first part, as ingest names it)."""
    return [
        Example(r.id, r.question, str(r.answer), r.id.split("/", 1)[0], str(r.level), source="")
        for r in inputs.itertuples()
    ]


def add_likelihoods(source: Path, model: str, out: Path, grid_inputs: int = 16, device: str = "cpu") -> Path:
    """Write ``out``: ``source``'s matrix with ``answer_logprob`` and ``answer_tokens`` per (input, program)."""
    from polar.backbone import load

    settings = json.loads((source / "settings.json").read_text())
    manifest = json.loads((source / "manifest.json").read_text())
    rewards = pd.read_parquet(source / "rewards.parquet")
    inputs = pd.read_parquet(source / "inputs.parquet")
    if "answer_logprob" in rewards:
        raise SystemExit(f"{source} already records the answer's likelihood: nothing to add")
    spec = PromptSpec.from_dict(settings["prompt"])
    if spec.id != manifest["prompt"]:
        raise SystemExit(f"{source}: settings.json's prompt is {spec.id}, the manifest says {manifest['prompt']}")
    programs = [Program.parse(t) for t in settings["menu"]["programs"]]
    backbone = load(model, device=device)
    if programs[0] != Program.identity(backbone.depth):
        raise SystemExit(f"{model} has {backbone.depth} layers; {source} was labeled on {settings['model']}")
    examples = _examples(inputs)
    out.mkdir(parents=True, exist_ok=True)
    part = out / PART
    done = {json.loads(line)["id"] for line in part.read_text().splitlines()} if part.exists() else set()
    todo = [e for e in examples if e.id not in done]
    by_level: dict[str, list[Example]] = {}
    for e in todo:
        by_level.setdefault(e.level, []).append(e)
    batches = [g[i : i + grid_inputs] for g in by_level.values() for i in range(0, len(g), grid_inputs)]
    tok = backbone.tokenizer
    with part.open("a") as sink, tqdm(total=len(examples), initial=len(done), unit="input", desc="likelihoods") as bar:
        for batch in batches:
            encoded = [spec.encode_scored(e, tok) for e in batch]
            scores = score_grid(backbone.executor, [p for p, _ in encoded], [t for _, t in encoded], programs)
            for e, per_program in zip(batch, scores, strict=True):
                row = {
                    "id": e.id,
                    "answer_logprob": [round(cells[0].logprob, 4) for cells in per_program],
                    "answer_tokens": [cells[0].tokens for cells in per_program],
                }
                sink.write(json.dumps(row) + "\n")
            sink.flush()
            bar.update(len(batch))
    scored = [json.loads(line) for line in part.read_text().splitlines()]
    texts = [p.text for p in programs]
    long = pd.DataFrame(
        [
            {"id": r["id"], "program": t, "answer_logprob": lp, "answer_tokens": n}
            for r in scored
            for t, lp, n in zip(texts, r["answer_logprob"], r["answer_tokens"], strict=True)
        ]
    ).drop_duplicates(["id", "program"])
    merged = rewards.merge(long, on=["id", "program"], how="left", validate="one_to_one")
    if merged["answer_logprob"].isna().any():
        raise SystemExit(f"{out / PART} misses some (input, program) pairs of {source}: run again to finish")
    merged.to_parquet(out / "rewards.parquet", index=False)
    shutil.copy(source / "inputs.parquet", out / "inputs.parquet")
    added = {"by": "bench/menus/add_likelihoods.py", "from": str(source), "model": model}
    (out / "settings.json").write_text(json.dumps(settings | {"likelihoods": 1, "likelihoods_added": added}, indent=2))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    part.unlink()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a menu matrix folder (rewards, inputs, settings, manifest)")
    parser.add_argument("--model", required=True, help="the model it was labeled on (folder or hub id)")
    parser.add_argument("--to", type=Path, required=True, help="the folder to write")
    parser.add_argument("--grid-inputs", type=int, default=16, help="inputs of a level scored together")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(add_likelihoods(args.source, args.model, args.to, args.grid_inputs, args.device))


if __name__ == "__main__":
    main()
