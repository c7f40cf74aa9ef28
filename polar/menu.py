"""Dense menu labeling: every program of a fixed menu run on every input, into a reward matrix.

Where MCTS (:mod:`polar.label`) searches each input for programs that answer it, a menu labels every input with
the same programs: a dense (input x program) matrix of correctness, predictions, layers and answer
log-probabilities, from which a selector learns which program to run for which input. Menus are a file of
programs (text or compact form, one per line, ``#`` comments) or ``auto:K``: the full-depth program and the K
programs valid on the most inputs of an MCTS discovery run (``--discovery``, a label folder of the same model
and prompt; the search's root edits are among its candidates).

Each input's :class:`~polar.labels.MenuRecord` also holds the base model's confidence in its own answer: the
answer's mean token log-probability, the top-2 margin and the entropy at its first token, and the shares of a few
samples that agree with it and that are correct. Records go to resumable shards as MCTS labels do; the merged
``menu.jsonl`` is exported as ``rewards.parquet`` (one row per input and program) and ``inputs.parquet`` (one
row per input).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from polar.decoding import Sampling
from polar.grid import Samples, generate_grid
from polar.labels import (
    MANIFEST,
    SCHEMA,
    MenuRecord,
    MenuResult,
    ShardWriter,
    check_settings,
    label_prompt,
    merge_shards,
    read_labels,
    read_records,
)
from polar.programs import CompactProgram, Program, ProgramError
from polar.settings import LabelConfig, MenuConfig
from polar.tasks.answers import grade
from polar.tasks.files import read_examples
from polar.tasks.prompts import PromptSpec, stop_token_ids
from polar.tasks.schema import Example

__all__ = [
    "INPUTS",
    "MENU_FILE",
    "REWARDS",
    "export",
    "finish_menu",
    "label_menu",
    "level_batches",
    "menu_id",
    "model_depth",
    "prepare_menu",
    "resolve_menu",
    "run_menu",
    "write_menu",
]

REWARDS = "rewards.parquet"
INPUTS = "inputs.parquet"
MENU_FILE = "menu.txt"


# ------------------------------------------------------------------------------------------------ menus
def resolve_menu(
    spec: str, depth: int, max_visits: int, prompt: PromptSpec | None = None, discovery: str = ""
) -> list[Program]:
    """The programs of ``spec`` (a file or ``auto:K``), the full-depth program first, each once."""
    identity = Program.identity(depth)
    if spec.startswith("auto:"):
        try:
            k = int(spec.removeprefix("auto:"))
        except ValueError:
            raise ValueError(f"menu {spec!r}: write auto:K with K a number of programs, e.g. auto:31") from None
        programs = _discovered(k, depth, prompt, discovery)
    else:
        path = Path(spec)
        if not path.exists():
            raise FileNotFoundError(f"menu file not found: {path} (or write auto:K with --discovery LABELS)")
        programs = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                program = CompactProgram.parse(text).to_program() if "(" in text else Program.parse(text)
                programs.append(program.validate(depth, max_visits=max_visits))
            except ProgramError as err:
                raise ValueError(f"{path}:{n}: {err}") from err
    return list(dict.fromkeys([identity, *programs]))


def _discovered(k: int, depth: int, prompt: PromptSpec | None, discovery: str) -> list[Program]:
    """The ``k`` programs valid on the most inputs of the MCTS labels in ``discovery`` (then shorter first)."""
    if not discovery:
        raise ValueError(
            "an auto menu needs --discovery LABELS: MCTS labels of a few inputs with the same model and prompt, "
            "e.g. `polar label --limit 16 --out data/labels/discovery`"
        )
    records = read_labels(discovery)
    if prompt is not None and label_prompt(discovery).id != prompt.id:
        raise ValueError(f"{discovery} was labeled with the prompt {label_prompt(discovery).id}, not {prompt.id}")
    if records and records[0].depth != depth:
        raise ValueError(f"{discovery} labels a {records[0].depth}-layer model; this one has {depth} layers")
    valid = Counter(p for r in records for p in set(r.valid))
    identity = Program.identity(depth).text
    ranked = sorted((p for p in valid if p != identity), key=lambda p: (-valid[p], len(Program.parse(p)), p))
    return [Program.parse(p) for p in ranked[:k]]


def write_menu(path: str | Path, programs: Sequence[Program], title: str) -> Path:
    """A menu file (one program per line) that ``--menu`` reads back as the same menu (the same :func:`menu_id`)."""
    path = Path(path)
    if path.exists() and [p.text for p in programs] == _programs_in(path):
        return path  # already there (another worker of the same run, or a resumed run): left as it is
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"# {title}\n" + "".join(f"{p.text}\n" for p in programs))
    tmp.replace(path)  # atomic: a worker reading it never sees half a menu
    return path


def _programs_in(path: Path) -> list[str]:
    return [t for line in path.read_text().splitlines() if (t := line.split("#", 1)[0].strip())]


def menu_id(programs: Sequence[Program]) -> str:
    """``menu-<n>-<12 hex>``: the number of programs and a digest of their texts in order."""
    digest = hashlib.sha256("\n".join(p.text for p in programs).encode()).hexdigest()[:12]
    return f"menu-{len(programs)}-{digest}"


# ------------------------------------------------------------------------------------------------ running
def run_menu(
    backbone,
    examples: Sequence[Example],
    prompt: PromptSpec,
    menu: Sequence[Program],
    config: LabelConfig,
    dense: MenuConfig,
    menu_name: str,
) -> list[MenuRecord]:
    """Every program of ``menu`` on each of ``examples`` (one grid: their shared few-shot prefix runs once per
    program), and the base model's confidence (the menu's first program, the full depth)."""
    tok, executor = backbone.tokenizer, backbone.executor
    stops = stop_token_ids(tok)
    prompts = [prompt.encode(e.question, e.level, tok) for e in examples]
    samples = None
    if dense.samples:  # seeded by the input: independent of the batch
        seeds = [int(hashlib.sha256(e.id.encode()).hexdigest()[:8], 16) for e in examples]
        samples = Samples(dense.samples, Sampling(temperature=dense.temperature), seeds)
    grid = generate_grid(executor, prompts, menu, config.max_new_tokens, stops, samples)
    records = []
    for example, row in zip(examples, grid, strict=True):
        results = []
        for program, cell in zip(menu, row, strict=False):  # the menu's rows; the samples follow
            prediction, ok = grade(cell.text, example.answer, example.answer_kind)
            results.append(
                MenuResult(program.text, ok, prediction, len(program), round(cell.logprob, 4), len(cell.tokens))
            )
        base, first = results[0], row[0]
        drawn = [grade(cell.text, example.answer, example.answer_kind) for cell in row[len(menu) :]]
        agree = sum(a == base.prediction for a, _ in drawn) / len(drawn) if drawn else 1.0
        right = sum(ok for _, ok in drawn) / len(drawn) if drawn else float(base.correct)
        records.append(
            MenuRecord(
                id=example.id,
                task=example.task,
                level=example.level,
                question=example.question,
                answer=example.answer,
                answer_kind=example.answer_kind,
                model=backbone.spec,
                depth=executor.depth,
                prompt=prompt.id,
                menu=menu_name,
                results=tuple(results),
                base_logprob=round(base.logprob / max(base.tokens, 1), 4),
                base_margin=round(first.margin, 4),
                base_entropy=round(first.entropy, 4),
                sample_agreement=round(agree, 4),
                sample_correct=round(right, 4),
            )
        )
    return records


def level_batches(examples: Sequence[Example], size: int) -> list[list[Example]]:
    """Inputs of one level together (they share their few-shot prefix), ``size`` at a time, in input order."""
    by_level: dict[str, list[Example]] = {}
    for e in examples:
        by_level.setdefault(e.level, []).append(e)
    return [group[i : i + size] for group in by_level.values() for i in range(0, len(group), size)]


# ------------------------------------------------------------------------------------------------ the stage
def model_depth(model: str) -> int:
    """The number of layers of ``model`` (any spec ``polar.backbone.load`` takes), read from its config alone."""
    from transformers import AutoConfig

    from polar.backbone import BUNDLED, ensure_converted

    source, kwargs = model, {}
    if model in BUNDLED:
        source = str(ensure_converted(model))
    elif model.endswith(".gguf"):
        source, kwargs = str(Path(model).parent), {"gguf_file": Path(model).name}
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"could not read the config of {model!r} ({err.__class__.__name__}): give a bundled model, a local model "
            "folder, a .gguf file or a hub id that is reachable from here"
        ) from err
    return config.get_text_config().num_hidden_layers


def prepare_menu(
    model: str,
    tasks_path: str | Path,
    out_dir: str | Path,
    config: LabelConfig,
    dense: MenuConfig,
    depth: int,
    restart_on_change: bool = False,
) -> tuple[list[Program], PromptSpec]:
    """Resolve the menu, create ``out_dir`` for these settings (or check that what it holds was made with
    them) and leave the menu there as ``menu.txt``. The menu's programs, not how it was given, are part of
    the settings: a run given ``auto:K`` resumes with ``--menu OUT/menu.txt``."""
    out_dir = Path(out_dir)
    prompt = config.prompt_spec(tasks_path)
    menu = resolve_menu(dense.menu, depth, config.search.max_visits, prompt, dense.discovery)
    name = menu_id(menu)
    settings = {
        "schema": SCHEMA,
        "kind": "menu",
        "model": model,
        "tasks": str(tasks_path),
        "config": {"max_new_tokens": config.max_new_tokens, "samples": dense.samples, "temperature": dense.temperature},
        "prompt": prompt.to_dict(),
        "menu": {"id": name, "programs": [p.text for p in menu]},
    }
    check_settings(out_dir, settings, restart_on_change)
    source = f" from {dense.discovery}" if dense.discovery else ""
    write_menu(out_dir / MENU_FILE, menu, f"{name}: {dense.menu}{source}")
    return menu, prompt


def finish_menu(model: str, tasks_path: str | Path, out_dir: str | Path, ids: Sequence[str]) -> Path:
    """Merge the shards of ``out_dir`` into ``menu.jsonl`` (in the order of ``ids``), export the Parquet
    matrices and write the manifest."""
    out_dir = Path(out_dir)
    merged = merge_shards(out_dir, ids, MenuRecord)
    records = read_labels(merged, MenuRecord)
    export(merged, records)
    manifest = {
        "model": model,
        "tasks": str(tasks_path),
        "inputs": len(ids),
        "menu": records[0].menu if records else None,
        "prompt": records[0].prompt if records else None,
        "base_correct": sum(r.results[0].correct for r in records),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return merged


def label_menu(
    model: str,
    tasks_path: str | Path,
    out_dir: str | Path,
    config: LabelConfig,
    dense: MenuConfig,
    limit: int | None = None,
    worker: str = "0",
    device: str = "auto",
    backbone=None,
    restart_on_change: bool = False,
    shard: tuple[int, int] | None = None,
    after_write: Callable[[Path], None] | None = None,
    merge: bool = True,
) -> Path | None:
    """Run the menu of ``dense`` on every input of ``tasks_path`` into ``out_dir`` (resumable, shardable).

    Returns the merged ``menu.jsonl`` (with ``rewards.parquet`` and ``inputs.parquet`` beside it), or None when
    other shards still have inputs to label (or not ``merge``: the caller merges). ``after_write(shard_file)``
    runs after each record is written.
    """
    from polar.backbone import load
    from polar.label import worker_lock

    if shard is not None and not 0 <= shard[0] < shard[1]:
        raise ValueError(f"shard {shard[0]}/{shard[1]}: write K/N with 0 <= K < N")
    out_dir = Path(out_dir)
    examples = read_examples(tasks_path)[:limit]
    backbone = backbone or load(model, device=device)
    menu, prompt = prepare_menu(model, tasks_path, out_dir, config, dense, backbone.depth, restart_on_change)
    name = menu_id(menu)
    if shard is not None and worker == "0":
        worker = f"{shard[0]}of{shard[1]}"
    lock = worker_lock(out_dir, worker)
    try:
        writer = ShardWriter(out_dir, worker, after_write)
        done = {r.id for r in read_records(out_dir, MenuRecord)}
        mine = examples if shard is None else examples[shard[0] :: shard[1]]
        todo = [e for e in mine if e.id not in done]
        bar = tqdm(desc=f"menu {name} on {model}", unit="input", initial=len(mine) - len(todo), total=len(mine))
        try:
            for batch in level_batches(todo, dense.grid_inputs):
                start = time.perf_counter()
                records = run_menu(backbone, batch, prompt, menu, config, dense, name)
                seconds = (time.perf_counter() - start) / len(batch)
                for record in records:
                    writer.write(record, seconds)
                bar.update(len(batch))
                bar.set_postfix(base=sum(r.results[0].correct for r in records), programs=len(menu))
        finally:
            writer.close()
            bar.close()
    finally:
        lock.release()
    ids = [e.id for e in examples]
    if not merge or (shard is not None and not set(ids) <= {r.id for r in read_records(out_dir, MenuRecord)}):
        return None
    return finish_menu(model, tasks_path, out_dir, ids)


def export(merged: str | Path, records: Sequence[MenuRecord] | None = None) -> tuple[Path, Path]:
    """Write ``rewards.parquet`` (one row per input and program) and ``inputs.parquet`` beside ``menu.jsonl``."""
    merged = Path(merged)
    records = read_labels(merged, MenuRecord) if records is None else records
    rewards = pd.DataFrame(
        [
            {
                "id": r.id,
                "level": r.level,
                "program": x.program,
                "correct": x.correct,
                "prediction": x.prediction,
                "layers": x.layers,
                "logprob": x.logprob,
                "tokens": x.tokens,
            }
            for r in records
            for x in r.results
        ]
    )
    inputs = pd.DataFrame(
        [
            {
                "id": r.id,
                "level": r.level,
                "question": r.question,
                "answer": r.answer,
                "depth": r.depth,
                "base_correct": r.results[0].correct,
                "base_logprob": r.base_logprob,
                "base_margin": r.base_margin,
                "base_entropy": r.base_entropy,
                "sample_agreement": r.sample_agreement,
                "sample_correct": r.sample_correct,
            }
            for r in records
        ]
    )
    paths = merged.with_name(REWARDS), merged.with_name(INPUTS)
    rewards.to_parquet(paths[0], index=False)
    inputs.to_parquet(paths[1], index=False)
    return paths
