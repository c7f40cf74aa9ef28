"""Join the committed parts of a split labeled in shards (``train-KofN`` for every ``K``) into the split's matrix.

The rows come in the task file's order, as labeling the split whole writes them
(:func:`polar.labeling.reward_matrix.join_parts`), so a study reads the same matrix either way.

    python bench/menus/join_parts.py data/mc/mmlu-pro-math/train.parquet bench/menus/gemma3-270m-mmlu-pro-math/train \
        bench/menus/gemma3-270m-mmlu-pro-math/train-0of2 bench/menus/gemma3-270m-mmlu-pro-math/train-1of2
"""

from __future__ import annotations

import argparse
import json

from polar.labeling.reward_matrix import join_parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tasks", help="the task file the split was labeled from")
    ap.add_argument("dest", help="the folder to write the split's matrix in")
    ap.add_argument("parts", nargs="+", help="the part folders (bench/menus/export_part.py)")
    args = ap.parse_args()
    try:
        manifest = join_parts(args.parts, args.tasks, args.dest)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(str(err)) from None
    inputs, right = (json.loads(manifest.read_text())[key] for key in ("inputs", "base_correct"))
    print(f"{args.dest}: {len(args.parts)} parts joined, {inputs} inputs, base greedy right on {right}")


if __name__ == "__main__":
    main()
