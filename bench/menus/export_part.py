"""Export one shard's part of a menu labeling run as its own reward matrix (a split labeled over several days).

A split labeled as shards ``K/N`` (``polar label --menu ... --shard K/N``) is merged only when every shard is
done. This writes the finished shard ``K`` of ``N`` on its own, ``rewards.parquet``, ``inputs.parquet``,
``settings.json`` and ``manifest.json`` in DEST (:func:`polar.labeling.reward_matrix.export_part`), so that it
can be committed and joined with the other parts later (:func:`polar.labeling.reward_matrix.join_parts`).

    python bench/menus/export_part.py data/scale/menu/smollm2-135m/train data/scale/tasks/train.parquet \
        --shard 0/2 --to bench/menus/smollm2-135m/train-0of2
"""

from __future__ import annotations

import argparse
import json

from polar.labeling.folder import parse_shard
from polar.labeling.reward_matrix import export_part


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("labels", help="the label folder (polar label --out)")
    ap.add_argument("tasks", help="the task file it was labeled from")
    ap.add_argument("--shard", required=True, help="K/N")
    ap.add_argument("--to", required=True, help="destination folder")
    args = ap.parse_args()
    try:
        manifest = export_part(args.labels, args.tasks, parse_shard(args.shard), args.to)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(str(err)) from None
    inputs, right = (json.loads(manifest.read_text())[key] for key in ("inputs", "base_correct"))
    print(f"{args.to}: {inputs} inputs, base greedy right on {right}")


if __name__ == "__main__":
    main()
