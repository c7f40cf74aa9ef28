"""A menu folder's reward matrix: its records as Parquet tables, for the whole folder or one finished shard.

A menu folder (:mod:`polar.labeling.menu`) keeps its records in ``menu.jsonl``; the selectors read them as a
reward matrix (:class:`polar.selection.matrix.Matrix`): ``rewards.parquet``, one row per input and program
(correct, prediction, layers, log-probability, tokens), and ``inputs.parquet``, one row per input (question,
answer, depth and the base model's confidence). :func:`write_matrix` writes both with the folder's manifest;
:func:`export_part` does so for one finished shard ``K/N`` of a folder whose other shards are still running, and
:func:`join_parts` joins every shard's part back into the split's matrix, row for row what labeling it whole writes.
The file names and the manifest are the folder format's (:mod:`polar.labeling.folder`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from polar.labeling.folder import (
    INPUTS,
    MANIFEST,
    MENU,
    REWARDS,
    SETTINGS,
    MenuRecord,
    check_same_numerics,
    check_shard,
    read_labels,
    read_records,
    write_manifest,
)
from polar.tasks.files import read_examples

__all__ = ["LIKELIHOOD_COLUMNS", "export", "export_part", "join_parts", "write_matrix"]

# The likelihood fields of a result (:class:`~polar.labeling.folder.MenuResult`), columns of ``rewards.parquet``
# where recorded: the reference answer's summed log-likelihood and tokens, each choice's (lists), and the
# length-normalised rule's answer under likelihood scoring.
LIKELIHOOD_COLUMNS = (
    "answer_logprob",
    "answer_tokens",
    "choice_logprobs",
    "choice_tokens",
    "correct_norm",
    "prediction_norm",
)


def export(merged: str | Path, records: Sequence[MenuRecord] | None = None) -> tuple[Path, Path]:
    """Write ``rewards.parquet`` (one row per input and program) and ``inputs.parquet`` beside ``menu.jsonl``.

    Args:
        merged: the ``menu.jsonl`` (it need not exist when ``records`` are given).
        records: its records; read from ``merged`` when None.

    Returns:
        The paths of the two matrices.
    """
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
            | {name: getattr(x, name) for name in LIKELIHOOD_COLUMNS if getattr(x, name) is not None}
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
                "base_correct": r.base_correct,
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


def write_matrix(dest: str | Path, head: dict, records: Sequence[MenuRecord]) -> Path:
    """Export menu ``records`` into ``dest`` as a reward matrix (:func:`export`) with its manifest.

    Args:
        dest: the folder (a menu folder, or an exported part of one).
        head: the manifest's first keys (see :func:`polar.labeling.folder.write_manifest`).
        records: one per input, in input order.

    Returns:
        The manifest's path.
    """
    export(Path(dest) / MENU, records)
    first = records[0] if records else None
    about = {"menu": first.menu if first else None, "prompt": first.prompt if first else None}
    checks = [c for r in records for c in r.recheck]
    about["recheck"] = {  # the numerical noise floor: rows run again alone (MenuConfig.recheck)
        "rows": len(checks),
        "texts_differ": sum(not c["same_text"] for c in checks),
        "verdicts_differ": sum(not c["same_verdict"] for c in checks),
    }
    return write_manifest(dest, head, [r.base_correct for r in records], about)


def export_part(out_dir: str | Path, tasks: str | Path, shard: tuple[int, int], dest: str | Path) -> Path:
    """Export the finished shard ``K`` of ``N`` of a menu folder on its own, before the other shards are done.

    A split labeled as shards ``K/N`` over several days is merged only when every shard is done; this writes
    ``rewards.parquet``, ``inputs.parquet``, ``settings.json`` and ``manifest.json`` of shard ``K`` in ``dest``,
    to be committed and joined with the other parts later.

    Args:
        out_dir: the menu folder (``polar label --menu ... --out``).
        tasks: the task file it was labeled from.
        shard: ``(K, N)``.
        dest: the folder to write the part in (made when missing).

    Returns:
        The part's manifest.

    Raises:
        ValueError: the shard is not labeled to the end, or ``(K, N)`` is not a shard.
    """
    k, n = check_shard(shard)
    ids = [e.id for e in read_examples(tasks)][k::n]
    records = {r.id: r for r in read_records(out_dir, MenuRecord)}
    missing = [i for i in ids if i not in records]
    if missing:
        raise ValueError(
            f"shard {k}/{n} of {out_dir} lacks {len(missing)} of {len(ids)} inputs: label it to the end "
            f"(`polar label --menu ... --shard {k}/{n}`)"
        )
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(out_dir) / SETTINGS, dest / SETTINGS)
    return write_matrix(dest, {"tasks": str(tasks), "shard": f"{k}/{n}"}, [records[i] for i in ids])


def join_parts(parts: Sequence[str | Path], tasks: str | Path, dest: str | Path) -> Path:
    """Join the exported parts of one split (:func:`export_part`: the shards ``K/N`` for every ``K``) into its matrix.

    The rows come in the task file's order, the order labeling the split whole writes them in, so a study reads the
    same matrix whether the split was labeled at once or in parts on different days or machines.

    Args:
        parts: the part folders, in any order.
        tasks: the task file the split was labeled from.
        dest: the folder to write the split's matrix in (made when missing).

    Returns:
        The matrix's manifest.

    Raises:
        ValueError: the parts were labeled with different settings, menus or prompts, share inputs, or together
            miss some of the task file's.
    """
    if not parts:
        raise ValueError(f"no parts to join for {tasks}: export each shard first (bench/menus/export_part.py)")
    folders = [Path(p) for p in parts]
    manifests = [json.loads((f / MANIFEST).read_text()) for f in folders]
    settings = [(f / SETTINGS).read_text() for f in folders]
    check_same_numerics({str(f): f for f in folders})  # a bf16 part never joins an fp32 matrix
    for f, m, s in zip(folders[1:], manifests[1:], settings[1:], strict=True):
        if s != settings[0] or (m["menu"], m["prompt"]) != (manifests[0]["menu"], manifests[0]["prompt"]):
            raise ValueError(
                f"{f} was labeled with other settings, menu or prompt than {folders[0]}: label every part alike"
            )
    inputs = pd.concat([pd.read_parquet(f / INPUTS) for f in folders], ignore_index=True)
    rewards = pd.concat([pd.read_parquet(f / REWARDS) for f in folders], ignore_index=True)
    ids = [e.id for e in read_examples(tasks)]
    twice = inputs["id"][inputs["id"].duplicated()].tolist()
    if twice:
        raise ValueError(f"parts share {len(twice)} inputs (first {twice[0]}): join one part per shard of one N")
    missing = sorted(set(ids) - set(inputs["id"]))
    if missing or len(inputs) != len(ids):
        raise ValueError(
            f"the parts hold {len(inputs)} of the {len(ids)} inputs of {tasks} ({len(missing)} missing, first "
            f"{missing[0] if missing else '-'}): label and export the missing shards"
        )
    order = {i: n for n, i in enumerate(ids)}

    def by_input(frame: pd.DataFrame) -> pd.DataFrame:  # stable: each input's programs keep the menu's order
        return frame.sort_values("id", key=lambda c: c.map(order), kind="stable").reset_index(drop=True)

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    by_input(rewards).to_parquet(dest / REWARDS, index=False)
    inputs = by_input(inputs)
    inputs.to_parquet(dest / INPUTS, index=False)
    (dest / SETTINGS).write_text(settings[0])
    head = {"model": json.loads(settings[0]).get("model"), "tasks": str(tasks)}
    about = {"menu": manifests[0]["menu"], "prompt": manifests[0]["prompt"]}
    if all("recheck" in m for m in manifests):  # the parts' noise-floor rows, summed
        about["recheck"] = {k: sum(m["recheck"][k] for m in manifests) for k in manifests[0]["recheck"]}
    return write_manifest(dest, head, inputs["base_correct"].tolist(), about)
