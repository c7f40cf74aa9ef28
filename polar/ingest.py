"""The ingest stage: a task's train, validation and test splits and its few-shot pool, one Parquet file each.

Three rules split a source (``IngestConfig.splits``):

- ``hash`` (the default): every question's split is decided by a hash of its normalised text
  (:mod:`polar.tasks.splits`), for the synthetic levels and for benchmarks and one's own files alike, so no
  question sits in two splits whatever the sizes (a size caps a split per level);
- ``files``: a benchmark that ships its own splits (ARC's train, dev and test files) keeps them; the few-shot
  pool is taken from train;
- ``sizes``: one file split into given totals (MMLU-Pro math's 1,351 questions as 500 test, 300 validation and
  the rest train), questions taken in the order of their hash.

Under every rule no normalised question text sits in two splits (a repeat is reported and dropped, test keeping
its own first), and the manifest records the check. The folder gets ``train.parquet``, ``validation.parquet``,
``test.parquet``, ``shots.parquet`` (the few-shot pool, never labeled or evaluated) and ``manifest.json``.
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
from polar.tasks.splits import SHOTS, SPLITS, digest, normalise, split_of

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
    elif source is None:
        raise ValueError(f"task {task!r} needs --source: a local file or directory, or a hub id")
    elif config.splits == "files":
        by_split, bad = _given_splits(config)
        origin = source
    else:
        examples, bad = load_benchmark(
            task, source, split=config.source_split, limit=config.limit, fields=config.fields()
        )
        if config.splits == "sizes":
            by_split, bad = _sized({SHOTS: [], "train": examples}, config, bad)
        else:
            by_split, bad = _split(examples, sizes, bad)
        origin = source
    total = sum(len(v) for k, v in by_split.items() if k != SHOTS)
    if not total:
        raise ValueError(f"no usable examples in {origin} ({len(bad)} bad records)")
    out_dir.mkdir(parents=True, exist_ok=True)
    shared = _shared_questions(by_split)
    if shared:  # the rules above cannot let one through: a bug, not a property of the data
        raise AssertionError(f"questions in two splits: {sorted(shared)[:3]}")
    rule = {
        "hash": "sha256 of the normalised question",
        "files": "the source's own files",
        "sizes": "given totals in sha256 order",
    }[config.splits if task != synthetic.TASK else "hash"]
    paths, manifest = {}, {"task": task, "source": origin, "rule": rule, "splits": {}}
    for split, examples in by_split.items():
        path = split_path(out_dir, split)
        write_examples(path, examples)
        paths[split] = path
        manifest["splits"][split] = {
            "examples": len(examples),
            "per_level": dict(sorted(Counter(e.level for e in examples).items())),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
    manifest |= {
        "disjoint": "no normalised question text in two splits (checked)",
        "bad_records": len(bad),
        "bad_examples": [str(b) for b in bad[:20]],
    }
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


# Where a split's file may be called otherwise (ARC's official files name validation "dev").
_FILE_NAMES = {"train": ("train",), "validation": ("validation", "dev", "val"), "test": ("test",)}
_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def split_files(folder: str | Path) -> dict[str, Path]:
    """The train, validation (or dev) and test files of a benchmark folder that ships its own splits.

    Raises:
        FileNotFoundError: the folder, or one of the three files, is missing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--splits files needs --source to be a folder of split files; {folder} is not one")
    found = {}
    for split, stems in _FILE_NAMES.items():
        hits = [
            folder / f"{stem}{suffix}"
            for stem in stems
            for suffix in _SUFFIXES
            if (folder / f"{stem}{suffix}").is_file()
        ]
        if not hits:
            names = " or ".join(f"{stem}.jsonl" for stem in stems)
            raise FileNotFoundError(f"{folder} has no {split} file ({names}; .json, .parquet and .csv also read)")
        found[split] = hits[0]
    return found


def _given_splits(config: IngestConfig) -> tuple[dict[str, list[Example]], list[BadRecord]]:
    """The splits of a source folder's own files (``--splits files``), the few-shot pool taken from train."""
    loaded, bad = {}, []
    for split, path in split_files(config.source).items():
        loaded[split], skipped = load_benchmark(config.task, path, limit=config.limit, fields=config.fields())
        bad += skipped
    return _sized({"test": loaded["test"], "validation": loaded["validation"], SHOTS: [], "train": loaded["train"]},
                  config, bad)  # fmt: skip


def _sized(
    sources: dict[str, list[Example]], config: IngestConfig, bad: list[BadRecord]
) -> tuple[dict[str, list[Example]], list[BadRecord]]:
    """Splits of given totals (``files`` and ``sizes`` rules).

    ``sources`` holds each split's own examples (``files``), or the whole source as ``train`` (``sizes``). A question
    met again (in the order test, validation, train) is reported and dropped. Then each split, in the order test,
    validation, few-shot pool, train, takes from its source (the pool from train; under ``sizes`` every split from
    the one source) the questions not yet taken in the order of their hash: at most its size, the pool
    ``config.shots`` per level.
    """
    sizes = config.sizes()
    whole = config.splits == "sizes"
    if whole and (sizes["test"] is None or sizes["validation"] is None):
        raise ValueError("--splits sizes takes totals from one source: give --test and --validation (train: the rest)")
    bad, first, ranked = list(bad), {}, {}
    for name in ("test", "validation", "train"):
        kept = []
        for e in sources.get(name, []):
            key = normalise(e.question)
            if key in first:
                bad.append(BadRecord(e.source.rsplit("#", 1)[0], _index(e), f"same question as {first[key]}"))
                continue
            first[key] = e.id
            kept.append(e)
        ranked[name] = sorted(kept, key=lambda e: digest(e.question))
    order = ("test", "validation", SHOTS, "train")
    by_split: dict[str, list[Example]] = {s: [] for s in order}
    taken: set[str] = set()
    for split in order:
        per_level: Counter[str] = Counter()
        cap = None if split == SHOTS else sizes.get(split)
        for e in ranked["train" if whole or split == SHOTS else split]:
            if cap is not None and len(by_split[split]) >= cap:
                break
            if e.id in taken or (split == SHOTS and per_level[e.level] >= config.shots):
                continue
            taken.add(e.id)
            per_level[e.level] += 1
            by_split[split].append(e)
        by_split[split].sort(key=_index)  # source order within a split, as the hash rule keeps it
    return by_split, bad


def _shared_questions(by_split: Mapping[str, list[Example]]) -> set[str]:
    seen: dict[str, str] = {}
    shared = set()
    for split, examples in by_split.items():
        for e in examples:
            key = normalise(e.question)
            if seen.setdefault(key, split) != split:
                shared.add(key)
    return shared


def _index(example: Example) -> int:
    tail = example.source.rsplit("#", 1)[-1]
    return int(tail) if tail.isdigit() else -1
