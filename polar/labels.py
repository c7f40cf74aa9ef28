"""Label files: the record of one searched input, and the folder that holds them.

A label folder, as ``polar label`` leaves it, holds ``labels.jsonl`` (one :class:`LabelRecord` per line,
in input order), ``settings.json`` (the settings and prompt spec the records were made with) and
``manifest.json``; while labeling, records are appended to ``shard-*.jsonl`` files, flushed one by one, so
that a run killed at any point loses at most the input in progress. Search times go to
``timings.jsonl``, which DVC ignores (.dvcignore): wall-clock seconds differ from run to run, labels must not.

A menu folder (``polar label --menu``) holds the same files around ``menu.jsonl``: one :class:`MenuRecord`
per input, every program of a fixed menu run on it, exported as a reward matrix (``rewards.parquet``).

Every reader of labels goes through this module: a record that is not whole, or that was written under
another schema version, is refused with its file and line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from polar.tasks.prompts import PromptSpec

__all__ = [
    "MANIFEST",
    "MERGED",
    "SCHEMA",
    "SETTINGS",
    "TIMINGS",
    "MENU",
    "Evaluated",
    "LabelRecord",
    "MenuRecord",
    "MenuResult",
    "ShardWriter",
    "check_settings",
    "label_prompt",
    "merge_shards",
    "read_labels",
    "read_records",
    "read_settings",
    "read_timings",
]

SCHEMA = 2  # 1: records without a schema field (before the prompt spec and this module)
MERGED = "labels.jsonl"
MENU = "menu.jsonl"  # a menu folder's merged records
MANIFEST = "manifest.json"
SETTINGS = "settings.json"
TIMINGS = "timings.jsonl"  # ignored by DVC (.dvcignore): not part of the labels' hash


@dataclass(frozen=True)
class Evaluated:
    """One program the search ran on the input, and what it scored."""

    program: str  # canonical text form
    reward: float  # 1.0 when the answer was correct
    length: int  # layers per token
    prediction: str | None  # the extracted answer


@dataclass(frozen=True)
class LabelRecord:
    """What the search found for one input (one line of ``labels.jsonl``)."""

    id: str
    task: str
    level: str
    question: str
    answer: str
    answer_kind: str
    model: str  # the base model's spec
    depth: int  # its layers
    prompt: str  # the prompt spec's id (settings.json holds the spec)
    prompt_tokens: int
    space: str  # skip, loop or joint
    base_program: str
    base_prediction: str | None
    base_text: str | None
    base_correct: bool
    evaluated: tuple[Evaluated, ...]  # every program run, in search order
    valid: tuple[str, ...]  # the programs that answered correctly
    shortest: str | None  # the shortest valid program
    shortest_length: int | None
    compact: str | None  # its compact form
    compact_error: str | None  # why it has none
    evaluations: int
    schema: int = SCHEMA

    def to_dict(self) -> dict:
        return asdict(self) | {"valid": list(self.valid)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict, where: str = "label record") -> LabelRecord:
        """Parse a record; ``where`` (file:line) starts every error message."""
        _check_schema(data, where)
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise ValueError(f"{where}: not a whole label record (missing {', '.join(missing)})")
        try:
            evaluated = tuple(Evaluated(**e) for e in data["evaluated"])
        except TypeError as err:
            raise ValueError(f"{where}: broken 'evaluated' entry ({err})") from err
        return cls(**{**{n: data[n] for n in names}, "evaluated": evaluated, "valid": tuple(data["valid"])})


@dataclass(frozen=True)
class MenuResult:
    """One menu program run on one input."""

    program: str  # canonical text form
    correct: bool
    prediction: str | None  # the extracted answer
    layers: int  # layers per token
    logprob: float  # log-probability of the generated answer line under the program
    tokens: int  # tokens generated


@dataclass(frozen=True)
class MenuRecord:
    """Every program of a menu on one input (one line of ``menu.jsonl``), and the base model's confidence."""

    id: str
    task: str
    level: str
    question: str
    answer: str
    answer_kind: str
    model: str
    depth: int
    prompt: str  # the prompt spec's id
    menu: str  # the menu's id (settings.json holds its programs)
    results: tuple[MenuResult, ...]  # in menu order; the first is the full-depth program
    base_logprob: float  # mean log-probability per token of the base model's greedy answer line
    base_margin: float  # top-1 minus top-2 probability at the answer's first token
    base_entropy: float  # entropy (nats) of the next-token distribution at the answer's first token
    sample_agreement: float  # share of sampled answers equal to the greedy one
    sample_correct: float  # share of sampled answers that are correct
    schema: int = SCHEMA

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict, where: str = "menu record") -> MenuRecord:
        _check_schema(data, where)
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise ValueError(f"{where}: not a whole menu record (missing {', '.join(missing)})")
        try:
            results = tuple(MenuResult(**r) for r in data["results"])
        except TypeError as err:
            raise ValueError(f"{where}: broken 'results' entry ({err})") from err
        return cls(**{**{n: data[n] for n in names}, "results": results})


def _check_schema(data: object, where: str) -> None:
    schema = data.get("schema", 1) if isinstance(data, dict) else None
    if schema != SCHEMA:
        raise ValueError(
            f"{where}: a label record of schema {schema}, but this polar reads schema {SCHEMA}: label the "
            "inputs again (`polar label ... --restart-on-change`, or into a new folder)"
        )


Record = LabelRecord | MenuRecord


def _parse(line: str, where: str, kind: type = LabelRecord) -> Record:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: broken record ({err}); remove the line to continue") from err
    return kind.from_dict(data, where)


def _merged_name(kind: type) -> str:
    return MENU if kind is MenuRecord else MERGED


def read_labels(path: str | Path, kind: type = LabelRecord) -> list[Record]:
    """The records of a merged label file (``labels.jsonl``, ``menu.jsonl`` for menu records, or their folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / _merged_name(kind)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: label to the end with `polar label` first")
    with path.open() as f:
        return [_parse(line, f"{path}:{n}", kind) for n, line in enumerate(f, 1) if line.strip()]


def read_records(out_dir: str | Path, kind: type = LabelRecord) -> Iterator[Record]:
    """Every whole record in ``out_dir``: the merged labels, then the shards (first occurrence of each id)."""
    seen: set[str] = set()
    merged = Path(out_dir) / _merged_name(kind)
    for shard in [*([merged] if merged.exists() else []), *sorted(Path(out_dir).glob("shard-*.jsonl"))]:
        with shard.open() as f:
            for n, line in enumerate(f, 1):
                if not line.endswith("\n"):
                    continue  # torn tail of a killed run
                record = _parse(line, f"{shard}:{n}", kind)
                if record.id not in seen:
                    seen.add(record.id)
                    yield record


def read_settings(labels_dir: str | Path) -> dict:
    """The ``settings.json`` of a label folder."""
    path = Path(labels_dir) / SETTINGS
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {labels_dir} is not a label folder written by `polar label`")
    return json.loads(path.read_text())


def label_prompt(labels_dir: str | Path) -> PromptSpec:
    """The prompt a label folder was made with (recorded in its ``settings.json``)."""
    settings = read_settings(labels_dir)
    if "prompt" not in settings:
        raise ValueError(f"{Path(labels_dir) / SETTINGS} records no prompt spec: these labels predate it; label again")
    return PromptSpec.from_dict(settings["prompt"])


def read_timings(labels_dir: str | Path) -> dict[str, float]:
    """Search seconds per input id (the last run's, where an input was searched twice)."""
    path = Path(labels_dir) / TIMINGS
    if not path.exists():
        return {}
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {e["id"]: e["seconds"] for e in entries}


# ---------------------------------------------------------------------------------------------- shards
def _repair(shard: Path) -> None:
    """Drop a torn last line (a kill mid-write) so that the shard holds whole records only."""
    data = shard.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    with shard.open("r+b") as f:
        f.truncate(data.rfind(b"\n") + 1)


class ShardWriter:
    """Appends one worker's records to a new shard of ``out_dir``, each flushed to disk before the next."""

    def __init__(self, out_dir: Path, worker: str, after_write: Callable[[Path], None] | None = None) -> None:
        """``after_write(shard)`` runs after each record is on disk (a pool worker sends its shard to the store)."""
        self.after_write = after_write
        out_dir.mkdir(parents=True, exist_ok=True)
        for shard in out_dir.glob(f"shard-{worker}-*.jsonl"):  # never another worker's: it may be writing
            _repair(shard)
        n = len(list(out_dir.glob(f"shard-{worker}-*.jsonl")))
        self.path = out_dir / f"shard-{worker}-{n:04d}.jsonl"
        self._f = None

    def write(self, record: Record, seconds: float) -> None:
        if self._f is None:
            self._f = self.path.open("a")
        self._f.write(record.to_json() + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        with (self.path.parent / TIMINGS).open("a") as f:  # after the record: a timing never outlives its label
            f.write(json.dumps({"id": record.id, "seconds": round(seconds, 3)}) + "\n")
        if self.after_write is not None:
            self.after_write(self.path)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


def merge_shards(out_dir: str | Path, ids: Sequence[str], kind: type = LabelRecord) -> Path:
    """Write ``labels.jsonl`` (``menu.jsonl``) with one record per id, in the order of ``ids``; remove the shards.

    The shards go only once the merged file is in place (a crash loses nothing), and only when they hold
    no other inputs (a folder labeled further with a larger ``--limit`` keeps them).
    """
    out_dir = Path(out_dir)
    records = {r.id: r for r in read_records(out_dir, kind)}
    merged = out_dir / _merged_name(kind)
    missing = [i for i in ids if i not in records]
    if missing:
        raise ValueError(f"{len(missing)} inputs are not labeled yet (first: {missing[0]}); run `polar label` again")
    tmp = out_dir / f".{merged.name}.{os.getpid()}.tmp"  # two shards finishing at once each merge whole
    with tmp.open("w") as f:
        for i in ids:
            f.write(records[i].to_json() + "\n")
    tmp.replace(merged)
    if set(records) <= set(ids):
        for shard in out_dir.glob("shard-*.jsonl"):
            shard.unlink(missing_ok=True)
    return merged


def check_settings(out_dir: Path, settings: dict, restart_on_change: bool = False) -> None:
    """Refuse to resume a folder labeled with other settings: records would not be comparable.

    With ``restart_on_change`` (the pipeline's choice: DVC versions the old labels), the old records are
    removed and labeling starts over instead.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / SETTINGS
    settings = json.loads(json.dumps(settings))  # as it reads back
    if path.exists():
        before = json.loads(path.read_text())
        if before == settings:
            return
        if not restart_on_change:
            changed = sorted(k for k in settings.keys() | before.keys() if before.get(k) != settings.get(k))
            raise ValueError(
                f"{out_dir} holds labels made with other settings ({', '.join(changed)} differ); "
                "label into a new folder, or delete this one to start over"
            )
        for old in [*out_dir.glob("shard-*.jsonl"), *(out_dir / f for f in (MERGED, MENU, MANIFEST, TIMINGS))]:
            old.unlink(missing_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")
