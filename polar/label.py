"""The label stage: search programs for every input of a task file, into resumable shards.

Each input's record (one JSON line) holds the base answer, every evaluated program with its reward,
the valid ones and the shortest valid one with its compact form. Records are appended to shard files
and flushed to disk one by one, so a run killed at any point loses at most the input in progress;
the next run repairs a torn last line, skips the inputs already labeled and writes a new shard.
When every input is labeled, the shards are merged into ``labels.jsonl`` in input order.
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
from polar.tasks import synthetic
from polar.tasks.answers import grade
from polar.tasks.prompts import PromptBuilder, stop_token_ids
from polar.tasks.schema import Example

__all__ = ["LabelConfig", "finish", "label", "merge_shards", "prepare", "read_examples", "read_records"]

MERGED = "labels.jsonl"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class LabelConfig:
    shots: int = 3  # few-shot examples in each prompt
    prompt: str = "plain"  # prompt style (polar.tasks.prompts): plain Question/Answer blocks, or chat turns
    max_new_tokens: int = 50  # the reference reward's generation budget
    k_max: int = DEFAULT_K_MAX
    prefix_store_mb: int = 1024  # memory for reusing prompt states across search rounds (speed only)
    search: SearchConfig = field(default_factory=SearchConfig)

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


def shots_for(example: Example, examples: Sequence[Example], k: int) -> list[tuple[str, str]]:
    """Few-shot pairs: synthetic levels draw from their own stream; other tasks use the first ``k``
    other examples of the same task and level in the file."""
    if k == 0:
        return []
    if example.task == synthetic.TASK:
        return synthetic.few_shot(int(example.level), k, exclude={example.question})
    pool = [e for e in examples if e.task == example.task and e.level == example.level and e.id != example.id]
    return [(e.question, e.answer) for e in pool[:k]]


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
    """Every whole record in the shards of ``out_dir`` (first occurrence of each id)."""
    seen: set[str] = set()
    for shard in sorted(Path(out_dir).glob("shard-*.jsonl")):
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

    def write(self, record: dict) -> None:
        if self._f is None:
            self._f = self.path.open("a")
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


def merge_shards(out_dir: str | Path, ids: Sequence[str]) -> Path:
    """Write ``labels.jsonl`` with one record per id, in the order of ``ids``."""
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
                for old in [*out_dir.glob("shard-*.jsonl"), out_dir / MERGED, out_dir / MANIFEST]:
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
def label_one(backbone, example: Example, shots: list[tuple[str, str]], config: LabelConfig, stops: list[int]) -> dict:
    """Search programs for one input and return its record."""
    builder = PromptBuilder(config.prompt)
    ids = builder.encode(example.question, shots, backbone.tokenizer)
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
        "prompt_builder": builder.id(len(shots)),
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
        "seconds": round(seconds, 3),
    }


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
    prepare(model, tasks_path, out_dir, config, restart_on_change)
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
                    record = label_one(backbone, example, shots_for(example, examples, config.shots), config, stops)
                    writer.write(record)
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
) -> None:
    """Create ``out_dir`` for these settings, or check that what it holds was made with them."""
    result_settings = {k: v for k, v in config.to_dict().items() if k != "prefix_store_mb"}  # speed only
    settings = {"model": model, "tasks": str(tasks_path), "config": result_settings}
    _check_settings(Path(out_dir), settings, restart_on_change)


def finish(model: str, tasks_path: str | Path, out_dir: str | Path, config: LabelConfig, ids: Sequence[str]) -> Path:
    """Merge the shards of ``out_dir`` into ``labels.jsonl`` (in the order of ``ids``) and write the manifest."""
    merged = merge_shards(out_dir, ids)
    manifest = {
        "model": model,
        "tasks": str(tasks_path),
        "inputs": len(ids),
        "config": config.to_dict(),
        "base_correct": sum(json.loads(line)["base_correct"] for line in merged.open()),
    }
    (Path(out_dir) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return merged
