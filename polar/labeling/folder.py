"""Label folders: the record of one labeled input, the files around them, and the shards they are written in.

A search folder, as ``polar label`` leaves it, holds ``labels.jsonl`` (one :class:`LabelRecord` per line, in input
order), ``settings.json`` (the settings and prompt spec the records were made with) and ``manifest.json``; while
labeling, records are appended to ``shard-*.jsonl`` files, flushed one by one, so that a run killed at any point
loses at most the input in progress. Labeling times go to ``timings.jsonl``, which DVC ignores (.dvcignore):
wall-clock seconds differ from run to run, labels must not.

A menu folder (``polar label --menu``) holds the same files around ``menu.jsonl``: one :class:`MenuRecord` per
input, every program of a fixed menu run on it (listed in ``menu.txt``), exported as a reward matrix
(``rewards.parquet``, one row per input and program, and ``inputs.parquet``, one row per input) by
:mod:`polar.labeling.reward_matrix`.

Every reader of labels goes through this module: a record that is not whole, or that was written under another
schema version, is refused with its file and line.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import TypeVar

from filelock import FileLock, Timeout

from polar.tasks.prompts import PromptMismatch, PromptSpec
from polar.tasks.schema import Example

__all__ = [
    "INPUTS",
    "MANIFEST",
    "MENU",
    "MENU_FILE",
    "MERGED",
    "REWARDS",
    "SCHEMA",
    "SETTINGS",
    "TIMINGS",
    "Evaluated",
    "LabelRecord",
    "MenuRecord",
    "MenuResult",
    "Record",
    "ShardWriter",
    "check_same_numerics",
    "read_noise",
    "check_settings",
    "describe_numerics",
    "check_shard",
    "label_prompt",
    "labels_prompt",
    "merge_shards",
    "parse_shard",
    "read_labels",
    "read_records",
    "read_settings",
    "read_timings",
    "record_header",
    "worker_lock",
    "write_manifest",
]

SCHEMA = 2  # 1: records without a schema field (before the prompt spec and this module)
MERGED = "labels.jsonl"  # a search folder's merged records
MENU = "menu.jsonl"  # a menu folder's merged records
MANIFEST = "manifest.json"
SETTINGS = "settings.json"
TIMINGS = "timings.jsonl"  # ignored by DVC (.dvcignore): not part of the labels' hash
REWARDS = "rewards.parquet"  # a menu folder's reward matrix: one row per input and program
INPUTS = "inputs.parquet"  # one row per input: its question, answer and the base model's confidence
MENU_FILE = "menu.txt"  # the menu's programs, one per line (``--menu`` reads it back as the same menu)


# --------------------------------------------------------------------------------------------- records
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
        return _from_dict(cls, data, where, "label", {"evaluated": Evaluated}, tuples=("valid",))


@dataclass(frozen=True)
class MenuResult:
    """One menu program run on one input."""

    program: str  # canonical text form
    correct: bool
    prediction: str | None  # the extracted answer
    layers: int  # layers per token
    logprob: float  # log-probability of the generated answer line (likelihood scoring: of the chosen choice)
    tokens: int  # tokens generated (likelihood scoring: of the chosen choice)
    # Teacher-forced log-likelihoods after the prompt (None in folders labeled before they were recorded):
    answer_logprob: float | None = None  # the reference answer's (multiple choice: the right choice's), summed
    answer_tokens: int | None = None
    choice_logprobs: tuple[float, ...] | None = None  # multiple choice: each choice's, summed, in order
    choice_tokens: tuple[int, ...] | None = None
    # Likelihood scoring: the length-normalised rule's answer (summed log-likelihood per character of the choice,
    # lm-evaluation-harness's acc_norm); ``correct`` and ``prediction`` are the summed rule's.
    correct_norm: bool | None = None
    prediction_norm: str | None = None

    def __post_init__(self) -> None:
        for name in ("choice_logprobs", "choice_tokens"):  # JSON gives lists
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))


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
    # The rows of this input run again alone (MenuConfig.recheck): {"program", "same_text", "same_verdict"} each
    recheck: tuple[dict, ...] = ()
    schema: int = SCHEMA

    @property
    def base_correct(self) -> bool:
        """Whether the full-depth program (the menu's first) answered correctly."""
        return self.results[0].correct

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict, where: str = "menu record") -> MenuRecord:
        """Parse a record; ``where`` (file:line) starts every error message."""
        return _from_dict(cls, data, where, "menu", {"results": MenuResult}, ("recheck",))


Record = LabelRecord | MenuRecord
R = TypeVar("R", LabelRecord, MenuRecord)


def record_header(example: Example, model: str, depth: int, prompt: str) -> dict:
    """The fields every record starts with (keyword arguments of :class:`LabelRecord` and :class:`MenuRecord`):
    the input, the base model's spec and depth, and the prompt spec's id."""
    return {
        "id": example.id,
        "task": example.task,
        "level": example.level,
        "question": example.question,
        "answer": example.answer,
        "answer_kind": example.answer_kind,
        "model": model,
        "depth": depth,
        "prompt": prompt,
    }


def _from_dict(
    cls: type[R], data: dict, where: str, noun: str, nested: dict[str, type], tuples: tuple[str, ...] = ()
) -> R:
    """A ``cls`` record from its JSON form, its ``nested`` fields lists of those dataclasses, its ``tuples`` fields
    lists of plain values; ``where`` (file:line) starts every error message, which calls it a ``noun`` record."""
    _check_schema(data, where)
    names = [f.name for f in fields(cls) if f.name in data]
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    missing = [n for n in required if n not in data]
    if missing:
        raise ValueError(f"{where}: not a whole {noun} record (missing {', '.join(missing)})")
    values = {n: data[n] for n in names} | {n: tuple(data[n]) for n in tuples if n in data}
    for name, entry in nested.items():
        try:
            values[name] = tuple(entry(**e) for e in data[name])
        except TypeError as err:
            raise ValueError(f"{where}: broken {name!r} entry ({err})") from err
    return cls(**values)


def _check_schema(data: object, where: str) -> None:
    schema = data.get("schema", 1) if isinstance(data, dict) else None
    if schema != SCHEMA:
        raise ValueError(
            f"{where}: a label record of schema {schema}, but this polar reads schema {SCHEMA}: label the "
            "inputs again (`polar label ... --restart-on-change`, or into a new folder)"
        )


# --------------------------------------------------------------------------------------------- reading
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


def labels_prompt(label_files: Sequence[str | Path]) -> PromptSpec:
    """The one prompt all ``label_files`` were made with (from their folders' settings).

    Args:
        label_files: files inside label folders (``labels.jsonl``, ``rewards.parquet``).

    Returns:
        The folders' prompt spec.

    Raises:
        FileNotFoundError: a file is missing.
        PromptMismatch: the folders were made with different prompts.
    """
    specs = {}
    for path in label_files:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"label file not found: {path} (run `polar label` first)")
        spec = label_prompt(path.parent)
        specs.setdefault(spec.id, (spec, path))
    if len(specs) > 1:
        made = "; ".join(f"{p} with {i}" for i, (_, p) in specs.items())
        raise PromptMismatch(
            f"the label files were made with different prompts ({made}): a predictor must be trained on labels "
            "of one prompt, the one it will be evaluated and served with; label them again with the same settings"
        )
    return next(iter(specs.values()))[0]


def read_timings(labels_dir: str | Path) -> dict[str, float]:
    """Labeling seconds per input id (the last run's, where an input was labeled twice)."""
    path = Path(labels_dir) / TIMINGS
    if not path.exists():
        return {}
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {e["id"]: e["seconds"] for e in entries}


# ---------------------------------------------------------------------------------------------- shards
def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` as ``(K, N)``: shard ``K`` of ``N`` labels every ``N``-th input from the ``K``-th (``--shard``).

    Raises:
        ValueError: ``text`` is not ``K/N`` with ``0 <= K < N``.
    """
    k, sep, n = text.partition("/")
    if not sep or not k.isdigit() or not n.isdigit():
        raise ValueError(f"shard {text!r}: write K/N with 0 <= K < N, e.g. 0/4")
    return check_shard((int(k), int(n)))


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """``shard`` itself when it is ``(K, N)`` with ``0 <= K < N``.

    Raises:
        ValueError: it is not.
    """
    k, n = shard
    if not 0 <= k < n:
        example = f"0/{n} to {n - 1}/{n}" if n > 0 else "0/4"
        raise ValueError(f"shard '{k}/{n}': write K/N with 0 <= K < N, e.g. {example}")
    return shard


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


def worker_lock(out_dir: Path, worker: str) -> FileLock:
    """Hold the right to write ``worker``'s shards of ``out_dir`` (two writers would interleave records).

    The lock file lives in the temporary folder, not in ``out_dir``, which DVC hashes.
    """
    key = hashlib.sha1(str(out_dir.resolve()).encode()).hexdigest()[:16]
    user = os.getuid() if hasattr(os, "getuid") else os.getlogin()  # one folder per user: no permission clashes
    path = Path(tempfile.gettempdir()) / f"polar-locks-{user}" / f"{key}-{worker}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ValueError(
            f"another `polar label` is writing worker {worker!r}'s shards in {out_dir}: wait for it to finish, "
            "or give this run another --worker (or --shard)"
        ) from None
    return lock


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
            if "engine" in changed:  # named first: a half type also brings its own settings (grid_inputs)
                raise ValueError(
                    f"{out_dir} holds labels computed {describe_numerics(before.get('engine'))}; this run computes "
                    f"{describe_numerics(settings.get('engine'))}: labels of two dtypes, devices or thread counts "
                    "never mix. Give the folder's (--dtype, --threads, --device), or label into a new folder"
                )
            raise ValueError(
                f"{out_dir} holds labels made with other settings ({', '.join(changed)} differ); "
                "label into a new folder, or delete this one to start over"
            )
        for old in [*out_dir.glob("shard-*.jsonl"), *(out_dir / f for f in (MERGED, MENU, MANIFEST, TIMINGS))]:
            old.unlink(missing_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")


def read_noise(folders: Iterable[str | Path]) -> dict | None:
    """The numerical noise floor of menu folders, pooled: of their rows run again alone (``manifest.json``'s
    ``recheck``), how many gave another text and another verdict; None when none of them recorded it."""
    paths = [Path(folder) / MANIFEST for folder in folders]
    checks = [c for p in paths if p.exists() and (c := json.loads(p.read_text()).get("recheck")) is not None]
    if not checks:
        return None
    pooled = {k: sum(c[k] for c in checks) for k in ("rows", "texts_differ", "verdicts_differ")}
    return pooled | {"verdict_flip_rate": pooled["verdicts_differ"] / pooled["rows"] if pooled["rows"] else None}


def describe_numerics(engine: dict | None) -> str:
    """``in float32 on cpu with 2 threads``: a label folder's recorded numerics, for messages."""
    if not engine:
        return "with unrecorded numerics (labeled before dtype and threads were recorded)"
    threads = f" with {engine['threads']} thread{'s' * (engine['threads'] != 1)}" if "threads" in engine else ""
    return f"in {engine['dtype']} on {engine['device']}{threads}"


def check_same_numerics(folders: Mapping[str, str | Path]) -> dict | None:
    """The one dtype, device and thread count that every label folder of ``folders`` (name -> folder) was made with.

    Raises:
        ValueError: two folders differ; the message names both and how each was computed.
    """
    first: tuple[str, dict | None] | None = None
    for name, folder in folders.items():
        engine = read_settings(folder).get("engine")
        if first is None:
            first = (name, engine)
        elif engine != first[1]:
            raise ValueError(
                f"{first[0]} was labeled {describe_numerics(first[1])} and {name} {describe_numerics(engine)}: "
                "labels of two dtypes, devices or thread counts never mix; label one again with the other's "
                "--dtype, --threads and --device"
            )
    return first[1] if first else None


# ------------------------------------------------------------------------------------------- manifests
def write_manifest(out_dir: str | Path, head: dict, base_correct: Sequence[bool], about: dict) -> Path:
    """Write ``manifest.json``: ``head``, the number of inputs, ``about``, and on how many the base model was right.

    Args:
        out_dir: the label folder (or an exported part of one, or a joined matrix).
        head: the first keys (the model and the task file, or the part's task file and shard).
        base_correct: whether the base model was right, one per input (the records' ``base_correct``).
        about: what they were labeled with (the settings or the menu, and the prompt's id).

    Returns:
        The manifest's path.
    """
    manifest = {**head, "inputs": len(base_correct), **about, "base_correct": int(sum(base_correct))}
    path = Path(out_dir) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path
