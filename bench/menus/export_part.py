"""Export one shard's part of a menu labeling run as its own reward matrix (a split labeled over several days).

A split labeled as shards ``K/N`` (``polar label --menu ... --shard K/N``) is merged only when every shard is
done. This writes the finished shard ``K`` of ``N`` on its own, ``rewards.parquet``, ``inputs.parquet``,
``settings.json`` and ``manifest.json`` in DEST, so that it can be committed and joined with the other parts
later (:meth:`polar.selection.Matrix.concat`).

    python bench/menus/export_part.py data/scale/menu/smollm2-135m/train data/scale/tasks/train.parquet \
        --shard 0/2 --to bench/menus/smollm2-135m/train-0of2
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from polar.labels import MenuRecord, read_records
from polar.menu import export
from polar.tasks.files import read_examples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("labels", help="the label folder (polar label --out)")
    ap.add_argument("tasks", help="the task file it was labeled from")
    ap.add_argument("--shard", required=True, help="K/N")
    ap.add_argument("--to", required=True, help="destination folder")
    args = ap.parse_args()
    k, n = (int(x) for x in args.shard.split("/"))
    ids = [e.id for e in read_examples(args.tasks)][k::n]
    records = {r.id: r for r in read_records(args.labels, MenuRecord)}
    missing = [i for i in ids if i not in records]
    if missing:
        raise SystemExit(
            f"shard {k}/{n} of {args.labels} lacks {len(missing)} of {len(ids)} inputs: label it to the end"
        )
    dest = Path(args.to)
    dest.mkdir(parents=True, exist_ok=True)
    part = [records[i] for i in ids]
    export(dest / "menu.jsonl", part)
    shutil.copy(Path(args.labels) / "settings.json", dest / "settings.json")
    manifest = {
        "tasks": str(args.tasks),
        "shard": f"{k}/{n}",
        "inputs": len(part),
        "menu": part[0].menu,
        "prompt": part[0].prompt,
        "base_correct": sum(r.results[0].correct for r in part),
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{dest}: {len(part)} inputs, base greedy right on {manifest['base_correct']}")


if __name__ == "__main__":
    main()
