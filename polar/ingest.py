"""The ingest stage: write a task's examples in one format (Parquet) with a manifest beside them."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from polar.tasks import synthetic
from polar.tasks.benchmarks import load_benchmark
from polar.tasks.schema import BadRecord, Example

__all__ = ["ingest", "manifest_path"]


def manifest_path(out: Path) -> Path:
    return out.with_name(out.stem + ".manifest.json")


def ingest(
    out: str | Path,
    task: str = synthetic.TASK,
    levels: Sequence[int] = synthetic.LEVELS,
    n: int = 40,
    seed: int = 0,
    source: str | None = None,
    split: str = "test",
    limit: int | None = None,
) -> tuple[Path, list[BadRecord]]:
    """Write the examples of ``task`` to ``out`` (Parquet) and ``<out>.manifest.json``.

    Args:
        out: output file (``.parquet``).
        task: ``arith`` (the synthetic levels) or a benchmark name (gsm8k, mawps, asdiv, math, math500,
            mmlu-pro-math, arc).
        levels, n, seed: synthetic levels, questions per level and seed.
        source: for a benchmark, a local file or directory or a hub id.
        split, limit: benchmark split and most examples to keep.

    Returns:
        the output path and the records that were reported and skipped.
    """
    out = Path(out)
    bad: list[BadRecord] = []
    if task == synthetic.TASK:
        examples: list[Example] = [e for level in levels for e in synthetic.generate(level, n, seed)]
        origin = f"synthetic levels {list(levels)}, {n} per level, seed {seed}"
    else:
        if source is None:
            raise ValueError(f"task {task!r} needs --source: a local file or directory, or a hub id")
        examples, bad = load_benchmark(task, source, split=split, limit=limit)
        origin = source
    if not examples:
        raise ValueError(f"no usable examples in {origin} ({len(bad)} bad records)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    pd.DataFrame([e.to_dict() for e in examples]).to_parquet(tmp, index=False)
    tmp.replace(out)
    manifest = {
        "task": task,
        "source": origin,
        "split": split,
        "examples": len(examples),
        "per_level": dict(sorted(Counter(e.level for e in examples).items())),
        "bad_records": len(bad),
        "bad_examples": [str(b) for b in bad[:20]],
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
    }
    manifest_path(out).write_text(json.dumps(manifest, indent=2) + "\n")
    return out, bad
