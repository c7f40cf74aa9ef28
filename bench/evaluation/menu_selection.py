"""The selection study on committed menu matrices, through the product's own stages (issue: the study is the product).

Runs ``polar.selection.study.select`` (every candidate fitted on train, frozen on validation into ``frozen.json``,
the test matrix read once) on the matrices under ``--menus``; with ``--tasks``, also the menu chain's evaluate
stage (``polar.selection.served.evaluate_selection``: the servable winners and the baseline run on the model for
every test input, checked against the matrix). ``--compare`` holds the new test scores against committed ones,
row by row (right answers and layers / D), and writes the comparison; it exits 1 on any difference.

Usage (see bench/evaluation/README.md):
    python bench/evaluation/menu_selection.py --menus bench/menus/smollm2-135m --model models/smollm2-135m \\
        --train train-0of2 --train train-1of2 --out data/scale/study-smollm2-135m \\
        --compare bench/evaluation/menu-smollm2-135m-train1000 --compare bench/evaluation/menu-smollm2-135m-m2 \\
        --record bench/evaluation/reproduced-smollm2-135m.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from polar.config import load
from polar.selection.study import select
from polar.settings import SelectConfig


def compare(new: dict, committed: list[Path]) -> dict:
    """Each committed row against the new one of the same name: right answers and layers / D."""
    old = {}
    for folder in committed:
        old |= {k: v for k, v in json.loads((folder / "test.json").read_text())["scores"].items() if k not in old}
    rows, same = {}, 0
    for name, row in new["scores"].items():
        if name not in old:
            rows[name] = {"new": row["correct"], "committed": None}
            continue
        equal = old[name]["correct"] == row["correct"] and abs(old[name]["layers_ratio"] - row["layers_ratio"]) < 1e-9
        same += equal
        rows[name] = {"new": row["correct"], "committed": old[name]["correct"], "equal": equal}
    return {"rows_compared": sum("equal" in r for r in rows.values()), "rows_equal": same, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--menus", required=True, help="folder of the menu matrices (train parts, validation, test)")
    ap.add_argument("--model", required=True, help="the base model (hidden-state features, and serving)")
    ap.add_argument("--train", action="append", required=True, help="train matrix folder(s) under --menus")
    ap.add_argument("--out", required=True, help="the study's folder (frozen.json, test.json, choices.parquet)")
    ap.add_argument("--params", default=None, help="a params file whose `select` section to use (default: defaults)")
    ap.add_argument("--cache", default=None, help="model-computed features (default: OUT/features)")
    ap.add_argument("--tasks", default=None, help="the test split's task file: also serve the winners on the model")
    ap.add_argument("--compare", action="append", default=[], help="committed study folder(s) to hold test.json to")
    ap.add_argument("--record", default=None, help="write the comparison (and the command's seconds) here")
    args = ap.parse_args()
    menus, out = Path(args.menus), Path(args.out)
    config = load(SelectConfig, args.params) if args.params else SelectConfig()
    start = time.perf_counter()
    result = select(
        [menus / t for t in args.train],
        menus / "validation",
        menus / "test",
        out,
        config,
        model=args.model,
        cache_dir=args.cache,
    )
    print(result.summary)
    if args.tasks:
        from polar.selection.served import evaluate_selection

        evaluate_selection(out, out / "selectors", args.tasks, out / "evaluation", args.model, device="cpu")
    seconds = time.perf_counter() - start
    if not args.compare:
        return
    outcome = compare(json.loads((out / "test.json").read_text()), [Path(c) for c in args.compare])
    outcome |= {"command": " ".join(["python", *sys.argv]), "seconds": round(seconds), "summary": result.summary}
    if args.record:
        Path(args.record).write_text(json.dumps(outcome, indent=1) + "\n")
    print(f"{outcome['rows_equal']}/{outcome['rows_compared']} committed rows reproduced")
    sys.exit(0 if outcome["rows_equal"] == outcome["rows_compared"] else 1)


if __name__ == "__main__":
    main()
