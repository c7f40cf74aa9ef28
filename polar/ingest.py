"""The ingest stage: a task's train, validation and test splits and its few-shot pool, one Parquet file each.

Every question is assigned to its split by a hash of its normalised text (:mod:`polar.tasks.splits`), for the
synthetic levels and for benchmarks and one's own files alike, so that no question sits in two splits
whatever the sizes. The folder gets ``train.parquet``, ``validation.parquet``, ``test.parquet``,
``shots.parquet`` (the few-shot pool, never labeled or evaluated) and ``manifest.json``.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from polar.settings import IngestConfig
from polar.tasks import synthetic
from polar.tasks.benchmarks import load_benchmark
from polar.tasks.files import split_path, write_examples
from polar.tasks.schema import BadRecord, Example
from polar.tasks.splits import SHOTS, SPLITS, normalise, split_of

__all__ = ["MANIFEST", "SHOTS_PER_LEVEL", "ingest", "synthetic_shots"]

MANIFEST = "manifest.json"
SHOTS_PER_LEVEL = 8  # the synthetic few-shot pool: enough for prompts of up to 8 shots
SYNTHETIC_SIZES = {"train": 40, "validation": 10, "test": 20}  # questions per level unless given


def synthetic_shots(levels: Sequence[int] = synthetic.LEVELS) -> list[Example]:
    """The synthetic few-shot pool (``shots.parquet`` of a synthetic ingest): the same for every seed."""
    return [e for lv in levels for e in synthetic.generate(lv, SHOTS_PER_LEVEL, 0, SHOTS)]


def ingest(out_dir: str | Path, config: IngestConfig = IngestConfig()) -> tuple[dict[str, Path], list[BadRecord]]:
    """Write the splits of ``config.task`` into ``out_dir``.

    Synthetic tasks draw ``config.sizes()`` questions per level and split with ``seed``; for a benchmark or one's
    own file (``source``, read with ``fields()``), a size caps a split per level (None keeps every question).

    Returns:
        the written files by split (shots included), and the records that were reported and skipped.
    """
    task, source, seed = config.task, config.source, config.seed
    levels = config.level_numbers()
    out_dir = Path(out_dir)
    sizes = config.sizes()
    bad: list[BadRecord] = []
    if task == synthetic.TASK:
        missing = [s for s in SPLITS if sizes.get(s) is None]
        if missing:
            raise ValueError(f"synthetic splits need a size per level: {', '.join(missing)}")
        by_split = {s: [e for lv in levels for e in synthetic.generate(lv, sizes[s], seed, s)] for s in SPLITS}
        by_split[SHOTS] = synthetic_shots(levels)
        origin = f"synthetic levels {list(levels)}, seed {seed}"
    else:
        if source is None:
            raise ValueError(f"task {task!r} needs --source: a local file or directory, or a hub id")
        examples, bad = load_benchmark(
            task, source, split=config.source_split, limit=config.limit, fields=config.fields()
        )
        by_split, bad = _split(examples, sizes, bad)
        origin = source
    total = sum(len(v) for k, v in by_split.items() if k != SHOTS)
    if not total:
        raise ValueError(f"no usable examples in {origin} ({len(bad)} bad records)")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, manifest = {}, {"task": task, "source": origin, "rule": "sha256 of the normalised question", "splits": {}}
    for split, examples in by_split.items():
        path = split_path(out_dir, split)
        write_examples(path, examples)
        paths[split] = path
        manifest["splits"][split] = {
            "examples": len(examples),
            "per_level": dict(sorted(Counter(e.level for e in examples).items())),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
    manifest |= {"bad_records": len(bad), "bad_examples": [str(b) for b in bad[:20]]}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return paths, bad


def _split(
    examples: list[Example], sizes: Mapping[str, int | None], bad: list[BadRecord]
) -> tuple[dict[str, list[Example]], list[BadRecord]]:
    """Examples by split (hash rule), duplicates of an earlier question reported, at most ``sizes[s]`` per level."""
    by_split: dict[str, list[Example]] = {s: [] for s in (*SPLITS, SHOTS)}
    first: dict[str, str] = {}
    per_level: Counter[tuple[str, str]] = Counter()
    bad = list(bad)
    for e in examples:
        key = normalise(e.question)
        if key in first:
            bad.append(BadRecord(e.source.rsplit("#", 1)[0], _index(e), f"same question as {first[key]}"))
            continue
        first[key] = e.id
        split = split_of(e.question)
        cap = sizes.get(split)
        if cap is not None and per_level[split, e.level] >= cap:
            continue
        per_level[split, e.level] += 1
        by_split[split].append(e)
    return by_split, bad


def _index(example: Example) -> int:
    tail = example.source.rsplit("#", 1)[-1]
    return int(tail) if tail.isdigit() else -1
