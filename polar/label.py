"""The label stage: search programs for every input of a task file, into resumable shards.

Each input's :class:`~polar.labels.LabelRecord` holds the base answer, every evaluated program with its
reward, the valid ones and the shortest valid one with its compact form. Records go to shard files one by
one (:mod:`polar.labels`), so a run killed at any point loses at most the input in progress; the next run
repairs a torn last line, skips the inputs already labeled and writes a new shard. When every input is
labeled, the shards are merged into ``labels.jsonl`` in input order and removed: a finished folder holds
the same bytes however the work was split or interrupted.

The prompt (style, shots and the shots themselves, :class:`polar.tasks.prompts.PromptSpec`) is built once
from the few-shot pool and recorded in ``settings.json``; every record names it by id.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from filelock import FileLock, Timeout
from tqdm import tqdm

from polar.labels import (
    MANIFEST,
    SCHEMA,
    Evaluated,
    LabelRecord,
    ShardWriter,
    check_settings,
    merge_shards,
    read_labels,
    read_records,
)
from polar.prefix import PrefixStore
from polar.programs import CompactProgram, Program, ProgramError
from polar.search import Evaluation, search
from polar.settings import LabelConfig
from polar.tasks.answers import grade
from polar.tasks.files import read_examples
from polar.tasks.prompts import PromptSpec, stop_token_ids
from polar.tasks.schema import Example

__all__ = ["finish", "label", "label_one", "prepare", "worker_lock"]


# ----------------------------------------------------------------------------------------------- label
def label_one(
    backbone, example: Example, prompt: PromptSpec, config: LabelConfig, stops: list[int]
) -> tuple[LabelRecord, float]:
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
    record = LabelRecord(
        id=example.id,
        task=example.task,
        level=example.level,
        question=example.question,
        answer=example.answer,
        answer_kind=example.answer_kind,
        model=backbone.spec,
        depth=executor.depth,
        prompt=prompt.id,
        prompt_tokens=len(ids),
        space=config.search.space,
        base_program=result.base.program,
        base_prediction=result.base.prediction,
        base_text=result.base.text,
        base_correct=result.base.reward > 0,
        evaluated=tuple(Evaluated(e.program, e.reward, e.length, e.prediction) for e in result.evaluations),
        valid=tuple(e.program for e in result.valid),
        shortest=shortest.program if shortest else None,
        shortest_length=shortest.length if shortest else None,
        compact=compact,
        compact_error=why,
        evaluations=len(result.evaluations),
    )
    return record, seconds


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
    after_write: Callable[[Path], None] | None = None,
    merge: bool = True,
) -> Path | None:
    """Label every input of ``tasks_path`` (resuming from ``out_dir``), then merge the shards.

    With ``restart_on_change``, labels made with other settings are removed instead of refused. With
    ``shard=(k, n)`` only inputs ``k, k+n, k+2n, ...`` are labeled (one worker of ``n`` sharing
    ``out_dir``); the merge happens when every input is labeled, by whichever run finds them all done.

    ``after_write(shard_file)`` runs after each record is written; without ``merge`` the shards stay as they
    are (a pool worker's caller merges elsewhere).

    Returns the merged ``labels.jsonl``, or None when other shards still have inputs to label (or not ``merge``).
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
    lock = worker_lock(out_dir, worker)
    try:
        writer = ShardWriter(out_dir, worker, after_write)  # repairs this worker's torn shards before reading them
        done = {r.id for r in read_records(out_dir)}
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
                    bar.set_postfix(valid=len(record.valid), base=int(record.base_correct))
            finally:
                writer.close()
                bar.close()
    finally:
        lock.release()
    if not merge or (shard is not None and not {e.id for e in examples} <= {r.id for r in read_records(out_dir)}):
        return None  # other shards are still at work (the last one to finish merges), or the caller merges
    return finish(model, tasks_path, out_dir, config, ids)


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


def prepare(
    model: str, tasks_path: str | Path, out_dir: str | Path, config: LabelConfig, restart_on_change: bool = False
) -> PromptSpec:
    """Create ``out_dir`` for these settings, or check that what it holds was made with them.

    Returns the prompt spec of these settings (recorded in ``settings.json``).
    """
    prompt = config.prompt_spec(tasks_path)
    # Not prefix_store_mb (speed only) nor where the pool file lies: the prompt spec records its content.
    result_settings = {k: v for k, v in config.to_dict().items() if k not in ("prefix_store_mb", "shots_from")}
    settings = {
        "schema": SCHEMA,
        "model": model,
        "tasks": str(tasks_path),
        "config": result_settings,
        "prompt": prompt.to_dict(),
    }
    check_settings(Path(out_dir), settings, restart_on_change)
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
        "base_correct": sum(r.base_correct for r in read_labels(merged)),
    }
    (Path(out_dir) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return merged
