"""The label stage: search programs for every input of a task file, into resumable shards.

Each input's record (one JSON line) holds the base answer, every evaluated program with its reward,
the valid ones and the shortest valid one with its compact form. Records are appended to shard files
and flushed to disk one by one, so a run killed at any point loses at most the input in progress;
the next run repairs a torn last line, skips the inputs already labeled and writes a new shard.
When every input is labeled, the shards are merged into ``labels.jsonl`` in input order and removed:
a finished folder holds ``labels.jsonl``, ``manifest.json`` and ``settings.json`` only, the same bytes
however the work was split or interrupted. Search times go to ``timings.jsonl`` beside them, which DVC
ignores (.dvcignore): wall-clock seconds differ from run to run, labels must not.

The prompt (style, shots and the shots themselves, :class:`polar.tasks.prompts.PromptSpec`) is built once
from the few-shot pool and recorded in ``settings.json``; every record names it by id.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
from filelock import FileLock, Timeout
from tqdm import tqdm

from polar.prefix import PrefixStore
from polar.programs import DEFAULT_K_MAX, CompactProgram, Program, ProgramError
from polar.search import Evaluation, SearchConfig, search
from polar.tasks.answers import grade
from polar.tasks.prompts import PromptSpec, stop_token_ids
from polar.tasks.schema import Example

__all__ = [
    "LabelConfig",
    "finish",
    "label",
    "label_prompt",
    "merge_shards",
    "prepare",
    "read_examples",
    "read_records",
]

MERGED = "labels.jsonl"
MANIFEST = "manifest.json"
TIMINGS = "timings.jsonl"  # ignored by DVC (.dvcignore): not part of the labels' hash
SHOTS_FILE = "shots.parquet"  # the few-shot pool `polar ingest` writes beside the splits


@dataclass(frozen=True)
class LabelConfig:
    shots: int = 3  # few-shot examples in each prompt
    prompt: str = "plain"  # prompt style (polar.tasks.prompts): plain Question/Answer blocks, or chat turns
    max_new_tokens: int = 50  # the reference reward's generation budget
    k_max: int = DEFAULT_K_MAX
    prefix_store_mb: int = 1024  # memory for reusing prompt states across search rounds (speed only)
    shots_from: str = ""  # the few-shot pool (default: shots.parquet beside the task file)
    search: SearchConfig = field(default_factory=SearchConfig)

    def prompt_spec(self, tasks_path: str | Path) -> PromptSpec:
        """The prompt of these settings for the inputs of ``tasks_path``."""
        pool = Path(self.shots_from) if self.shots_from else Path(tasks_path).with_name(SHOTS_FILE)
        return PromptSpec.from_pool(pool, self.prompt, self.shots)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LabelConfig:
        """The inverse of :meth:`to_dict` (a shard run on a worker gets its settings this way)."""
        return cls(**{**data, "search": SearchConfig(**data.get("search", {}))})


def read_examples(path: str | Path) -> list[Example]:
    """Examples of an ingested task file (Parquet or JSON lines)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"task file not found: {path} (run `polar ingest` first)")
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_json(path, lines=True, dtype=False)
    return [Example.from_dict(row) for row in frame.to_dict(orient="records")]


def label_prompt(labels_dir: str | Path) -> PromptSpec:
    """The prompt a label folder was made with (recorded in its ``settings.json``)."""
    path = Path(labels_dir) / SETTINGS
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {labels_dir} is not a label folder written by `polar label`")
    settings = json.loads(path.read_text())
    if "prompt" not in settings:
        raise ValueError(f"{path} records no prompt spec: these labels predate it; label them again")
    return PromptSpec.from_dict(settings["prompt"])


# ---------------------------------------------------------------------------------------------- shards
def _repair(shard: Path) -> None:
    """Drop a torn last line (a kill mid-write) so that the shard holds whole records only."""
    data = shard.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1
    with shard.open("r+b") as f:
        f.truncate(keep)


def read_records(out_dir: str | Path) -> Iterator[dict]:
    """Every whole record in ``out_dir``: the merged labels, then the shards (first occurrence of each id)."""
    seen: set[str] = set()
    merged = Path(out_dir) / MERGED
    for shard in [*([merged] if merged.exists() else []), *sorted(Path(out_dir).glob("shard-*.jsonl"))]:
        with shard.open() as f:
            for n, line in enumerate(f, 1):
                if not line.endswith("\n"):
                    continue  # torn tail of a killed run
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{shard}:{n}: broken record ({err}); remove the line to continue") from err
                if record["id"] not in seen:
                    seen.add(record["id"])
                    yield record


class _ShardWriter:
    def __init__(self, out_dir: Path, worker: str) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for shard in out_dir.glob(f"shard-{worker}-*.jsonl"):  # never another worker's: it may be writing
            _repair(shard)
        n = len(list(out_dir.glob(f"shard-{worker}-*.jsonl")))
        self.path = out_dir / f"shard-{worker}-{n:04d}.jsonl"
        self._f = None

    def write(self, record: dict, seconds: float) -> None:
        if self._f is None:
            self._f = self.path.open("a")
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        with (self.path.parent / TIMINGS).open("a") as f:  # after the record: a timing never outlives its label
            f.write(json.dumps({"id": record["id"], "seconds": round(seconds, 3)}) + "\n")

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


def merge_shards(out_dir: str | Path, ids: Sequence[str]) -> Path:
    """Write ``labels.jsonl`` with one record per id, in the order of ``ids``, then remove the shards.

    The shards go only once the merged file is in place (a crash loses nothing), and only when they hold
    no other inputs (a folder labeled further with a larger ``--limit`` keeps them).
    """
    out_dir = Path(out_dir)
    records = {r["id"]: r for r in read_records(out_dir)}
    missing = [i for i in ids if i not in records]
    if missing:
        raise ValueError(f"{len(missing)} inputs are not labeled yet (first: {missing[0]}); run `polar label` again")
    tmp = out_dir / f".{MERGED}.{os.getpid()}.tmp"  # two shards finishing at once each merge whole
    with tmp.open("w") as f:
        for i in ids:
            f.write(json.dumps(records[i]) + "\n")
    tmp.replace(out_dir / MERGED)
    if set(records) <= set(ids):
        for shard in out_dir.glob("shard-*.jsonl"):
            shard.unlink(missing_ok=True)
    return out_dir / MERGED


SETTINGS = "settings.json"


def _check_settings(out_dir: Path, settings: dict, restart_on_change: bool = False) -> None:
    """Refuse to resume a folder labeled with other settings: records would not be comparable.

    With ``restart_on_change`` (the pipeline's choice: DVC versions the old labels), the old shards are
    removed and labeling starts over instead.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / SETTINGS
    if path.exists():
        before = json.loads(path.read_text())
        if before != json.loads(json.dumps(settings)):
            changed = sorted(k for k in settings if before.get(k) != json.loads(json.dumps(settings[k])))
            if restart_on_change:
                for old in [*out_dir.glob("shard-*.jsonl"), *(out_dir / f for f in (MERGED, MANIFEST, TIMINGS))]:
                    old.unlink(missing_ok=True)
                path.write_text(json.dumps(settings, indent=2) + "\n")
                return
            raise ValueError(
                f"{out_dir} holds labels made with other settings ({', '.join(changed)} differ); "
                "label into a new folder, or delete this one to start over"
            )
        return
    path.write_text(json.dumps(settings, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------- label
def label_one(
    backbone, example: Example, prompt: PromptSpec, config: LabelConfig, stops: list[int]
) -> tuple[dict, float]:
    """Search programs for one input; returns its record and the search's wall-clock seconds."""
    ids = prompt.encode(example.question, example.level, backbone.tokenizer)
    executor = backbone.executor
    store = PrefixStore(config.prefix_store_mb << 20)  # prompt states per prefix, reused across rounds

    def evaluate(programs: Sequence[Program]) -> list[Evaluation]:
        outs = executor.generate([ids], programs, config.max_new_tokens, stop_token_ids=stops, prefix_store=store)
        evals = []
        for program, g in zip(programs, outs, strict=True):
            prediction, ok = grade(g.text, example.answer, example.answer_kind)
            evals.append(Evaluation(program.text, float(ok), len(program), prediction, g.text))
        return evals

    start = time.perf_counter()
    result = search(executor.depth, evaluate, config.search)
    seconds = time.perf_counter() - start
    shortest = result.shortest
    compact, why = None, None
    if shortest is not None:
        try:
            compact = str(CompactProgram.from_program(Program.parse(shortest.program), executor.depth, config.k_max))
        except ProgramError as err:
            why = str(err)
    return {
        "id": example.id,
        "task": example.task,
        "level": example.level,
        "question": example.question,
        "answer": example.answer,
        "answer_kind": example.answer_kind,
        "model": backbone.spec,
        "depth": executor.depth,
        "prompt": prompt.id,
        "prompt_tokens": len(ids),
        "space": config.search.space,
        "base_program": result.base.program,
        "base_prediction": result.base.prediction,
        "base_text": result.base.text,
        "base_correct": result.base.reward > 0,
        "evaluated": [{k: v for k, v in asdict(e).items() if k != "text"} for e in result.evaluations],
        "valid": [e.program for e in result.valid],
        "shortest": shortest.program if shortest else None,
        "shortest_length": shortest.length if shortest else None,
        "compact": compact,
        "compact_error": why,
        "evaluations": len(result.evaluations),
    }, seconds


def label(
    model: str,
    tasks_path: str | Path,
    out_dir: str | Path,
    config: LabelConfig = LabelConfig(),
    limit: int | None = None,
    worker: str = "0",
    device: str = "auto",
    backbone=None,
    restart_on_change: bool = False,
    shard: tuple[int, int] | None = None,
) -> Path | None:
    """Label every input of ``tasks_path`` (resuming from ``out_dir``), then merge the shards.

    With ``restart_on_change``, labels made with other settings are removed instead of refused. With
    ``shard=(k, n)`` only inputs ``k, k+n, k+2n, ...`` are labeled (one worker of ``n`` sharing
    ``out_dir``); the merge happens when every input is labeled, by whichever run finds them all done.

    Returns the merged ``labels.jsonl``, or None when other shards still have inputs to label.
    """
    if shard is not None and not 0 <= shard[0] < shard[1]:
        raise ValueError(f"shard {shard[0]}/{shard[1]}: write K/N with 0 <= K < N")
    from polar.backbone import load

    out_dir = Path(out_dir)
    examples = read_examples(tasks_path)[:limit]
    ids = [e.id for e in examples]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{tasks_path}: duplicate example ids; re-run `polar ingest`")
    prompt = prepare(model, tasks_path, out_dir, config, restart_on_change)
    if shard is not None and worker == "0":
        worker = f"{shard[0]}of{shard[1]}"
    lock = _worker_lock(out_dir, worker)
    try:
        writer = _ShardWriter(out_dir, worker)  # repairs this worker's torn shards before reading them
        done = {r["id"] for r in read_records(out_dir)}
        mine = examples if shard is None else examples[shard[0] :: shard[1]]
        todo = [e for e in mine if e.id not in done]
        if todo:
            backbone = backbone or load(model, device=device)
            stops = stop_token_ids(backbone.tokenizer)
            bar = tqdm(
                todo,
                desc=f"label {model} [{config.search.space}]" + (f" shard {shard[0]}/{shard[1]}" if shard else ""),
                unit="input",
                initial=len(mine) - len(todo),
                total=len(mine),
            )
            try:
                for example in bar:
                    record, seconds = label_one(backbone, example, prompt, config, stops)
                    writer.write(record, seconds)
                    bar.set_postfix(valid=len(record["valid"]), base=int(record["base_correct"]))
            finally:
                writer.close()
                bar.close()
    finally:
        lock.release()
    if shard is not None and not {e.id for e in examples} <= {r["id"] for r in read_records(out_dir)}:
        return None  # other shards are still at work; the last one to finish merges
    return finish(model, tasks_path, out_dir, config, ids)


def _worker_lock(out_dir: Path, worker: str) -> FileLock:
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


def prepare(
    model: str, tasks_path: str | Path, out_dir: str | Path, config: LabelConfig, restart_on_change: bool = False
) -> PromptSpec:
    """Create ``out_dir`` for these settings, or check that what it holds was made with them.

    Returns the prompt spec of these settings (recorded in ``settings.json``).
    """
    prompt = config.prompt_spec(tasks_path)
    # Not prefix_store_mb (speed only) nor where the pool file lies: the prompt spec records its content.
    result_settings = {k: v for k, v in config.to_dict().items() if k not in ("prefix_store_mb", "shots_from")}
    settings = {"model": model, "tasks": str(tasks_path), "config": result_settings, "prompt": prompt.to_dict()}
    _check_settings(Path(out_dir), settings, restart_on_change)
    return prompt


def finish(model: str, tasks_path: str | Path, out_dir: str | Path, config: LabelConfig, ids: Sequence[str]) -> Path:
    """Merge the shards of ``out_dir`` into ``labels.jsonl`` (in the order of ``ids``) and write the manifest."""
    merged = merge_shards(out_dir, ids)
    manifest = {
        "model": model,
        "tasks": str(tasks_path),
        "inputs": len(ids),
        "config": {k: v for k, v in config.to_dict().items() if k not in ("prefix_store_mb", "shots_from")},
        "prompt": config.prompt_spec(tasks_path).id,
        "base_correct": sum(json.loads(line)["base_correct"] for line in merged.open()),
    }
    (Path(out_dir) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return merged
