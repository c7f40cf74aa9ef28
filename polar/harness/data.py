"""Local benchmark files for the shipped harness tasks (``polar_arc_easy``, ``polar_gsm8k``, ...).

The machine that runs an evaluation may have no dataset hub, so each shipped task reads its data through one of
the loaders below (the task YAML's ``custom_dataset``) from a data folder laid out as the public benchmark files
are (see :data:`FILES`). The folder is, first found:

1. ``data_dir`` given to the task as lm-eval metadata (``--metadata data_dir=DIR``, or ``polar lm-eval --data DIR``);
2. the environment variable ``POLAR_SHARED_DATA``;
3. ``../shared/data`` beside the checkout (the folder next to the repository's own folder).

Records are turned into the schema of the hub dataset the harness's own task reads (the same field names), so
that the harness's prompts, targets and metrics apply unchanged. Everything is built in memory: nothing is
written to a dataset cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import datasets

__all__ = ["DATA_ENV", "FILES", "DataFileError", "arc_challenge", "arc_easy", "data_dir", "gsm8k", "mmlu_pro_math"]

DATA_ENV = "POLAR_SHARED_DATA"

# task -> split -> file under the data folder. Optional splits are read when their file exists.
FILES: dict[str, dict[str, str]] = {
    "polar_arc_easy": {
        "train": "arc/genmc_official/arc_easy/train.jsonl",
        "validation": "arc/genmc_official/arc_easy/dev.jsonl",
        "test": "arc/genmc_official/arc_easy/test.jsonl",
    },
    "polar_arc_challenge": {
        "train": "arc/genmc_official/arc_challenge/train.jsonl",
        "validation": "arc/genmc_official/arc_challenge/dev.jsonl",
        "test": "arc/genmc_official/arc_challenge/test.jsonl",
    },
    "polar_gsm8k": {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"},
    # The harness's 5-shot prompt draws chain-of-thought examples from MMLU-Pro's validation split, which the
    # public math file does not hold: put that split's rows there to run --num_fewshot 5.
    "polar_mmlu_pro_math": {"test": "mmlu-pro/test_math_1351.jsonl", "validation": "mmlu-pro/validation.jsonl"},
}
# Splits that may be absent: they load empty (the harness needs the split named by the task's fewshot_split).
OPTIONAL = {("polar_mmlu_pro_math", "validation")}


class DataFileError(FileNotFoundError):
    """A shipped task's data folder or file is missing or unreadable."""


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The data folder: ``explicit``, else ``$POLAR_SHARED_DATA``, else ``../shared/data`` beside the checkout.

    Raises:
        DataFileError: the folder does not exist (the message names where it looked and how to point elsewhere).
    """
    if explicit:
        where, why = Path(explicit).expanduser(), "data_dir"
    elif os.environ.get(DATA_ENV):
        where, why = Path(os.environ[DATA_ENV]).expanduser(), f"${DATA_ENV}"
    else:
        where, why = Path(__file__).resolve().parents[3] / "shared" / "data", "the default ../shared/data"
    if not where.is_dir():
        raise DataFileError(
            f"benchmark data folder {where} ({why}) does not exist: set {DATA_ENV}=DIR, pass "
            "--metadata data_dir=DIR to lm_eval, or --data DIR to polar lm-eval (a folder laid out as "
            "polar.harness.data.FILES lists)"
        )
    return where


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataFileError(f"{path}:{number} is not a JSON line ({err.msg}): fix or replace the file") from err
    return rows


def _splits(task: str, folder: str | None, convert) -> datasets.DatasetDict:
    root = data_dir(folder)
    out, absent = {}, []
    for split, name in FILES[task].items():
        path = root / name
        if path.is_file():
            out[split] = datasets.Dataset.from_list([convert(row, path) for row in _read_jsonl(path)])
        elif (task, split) in OPTIONAL:
            absent.append(split)
        else:
            raise DataFileError(f"{task}: {split} file {path} not found under the data folder {root}")
    for split in absent:  # empty, with the columns of the others
        out[split] = next(iter(out.values())).select([])
    return datasets.DatasetDict(out)


# ------------------------------------------------------------------------------------------- ARC
def _arc_record(row: dict, path: Path) -> dict:
    """A GenMC ARC line as the hub's ``allenai/ai2_arc`` row: question text, choices {text, label}, answerKey."""
    try:
        question = row["question"]
        choices = question["choices"]
        return {
            "id": str(row["id"]),
            "question": question["stem"],
            "choices": {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]},
            "answerKey": str(row["answerKey"]),
        }
    except (KeyError, TypeError) as err:
        raise DataFileError(
            f"{path}: an ARC record lacks {err} (expected id, question.stem/choices, answerKey)"
        ) from err


def arc_easy(data_dir: str | None = None, **_metadata: Any) -> datasets.DatasetDict:
    """ARC-Easy train / validation / test (``polar_arc_easy``); extra lm-eval metadata is ignored."""
    return _splits("polar_arc_easy", data_dir, _arc_record)


def arc_challenge(data_dir: str | None = None, **_metadata: Any) -> datasets.DatasetDict:
    """ARC-Challenge train / validation / test (``polar_arc_challenge``)."""
    return _splits("polar_arc_challenge", data_dir, _arc_record)


# ------------------------------------------------------------------------------------------ GSM8K
def _gsm8k_record(row: dict, path: Path) -> dict:
    if not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
        raise DataFileError(f"{path}: a GSM8K record needs text fields question and answer")
    return {"question": row["question"], "answer": row["answer"]}


def gsm8k(data_dir: str | None = None, **_metadata: Any) -> datasets.DatasetDict:
    """GSM8K train / test, as the hub's ``openai/gsm8k`` (``main``) rows (``polar_gsm8k``)."""
    return _splits("polar_gsm8k", data_dir, _gsm8k_record)


# -------------------------------------------------------------------------------------- MMLU-Pro
_MMLU_PRO_FIELDS = ("question_id", "question", "options", "answer", "answer_index", "cot_content", "category", "src")


def _mmlu_pro_record(row: dict, path: Path) -> dict:
    missing = [f for f in _MMLU_PRO_FIELDS if f not in row]
    if missing:
        raise DataFileError(f"{path}: an MMLU-Pro record lacks {', '.join(missing)}")
    return {f: row[f] for f in _MMLU_PRO_FIELDS}


def mmlu_pro_math(data_dir: str | None = None, **_metadata: Any) -> datasets.DatasetDict:
    """MMLU-Pro's math test split (and its validation split when the data folder has one)."""
    return _splits("polar_mmlu_pro_math", data_dir, _mmlu_pro_record)
