"""Real benchmarks (GSM8K, MAWPS, ASDiv, MATH, MATH-500, MMLU-Pro math, ARC) loaded through ``datasets``.

Each benchmark has a ``BenchmarkSpec`` that turns one raw record into an ``Example``. A record that cannot be
normalised (a missing field, an answer that does not parse) becomes a ``BadRecord`` and is skipped: one broken
row never stops a load.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polar.tasks.answers import format_number, gsm8k_reference, math_reference, normalize_number
from polar.tasks.schema import ANSWER_KINDS, LETTERS, BadRecord, Example, options_block

__all__ = ["BENCHMARKS", "BenchmarkSpec", "Fields", "load_benchmark", "records_from_rows"]

# Local file suffix -> the `datasets` packaged builder that reads it.
_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_LETTERS = LETTERS
NO_LEVEL = "all"  # the level of records that carry none


class _BadRow(ValueError):
    """Raised by a normaliser for a record that must be reported and skipped."""


@dataclass(frozen=True)
class _Unreadable:
    """A raw line that did not even parse (stands in for the row so that indices stay aligned)."""

    reason: str


@dataclass(frozen=True)
class Normalised:
    """What a normaliser makes of one raw record (the loader adds id, task and source)."""

    question: str
    answer: str
    level: str
    choices: tuple[str, ...] = ()  # multiple choice: the options, labelled A, B, ... in order


@dataclass(frozen=True)
class BenchmarkSpec:
    """How to read one benchmark.

    Attributes:
        name: the task name used in ids ("gsm8k").
        answer_kind: one of schema.ANSWER_KINDS.
        normalise: (raw record, level to use where the record has none) -> Normalised, or None for a record that belongs to another subset;
            raises ValueError/KeyError/TypeError for a bad record.
        description: one line for listings.
    """

    name: str
    answer_kind: str
    normalise: Callable[[dict, str], Normalised | None]
    description: str = ""


# ---------------------------------------------------------------- field helpers


def _text(row: dict, key: str) -> str:
    """A required non-empty text field."""
    if not isinstance(row, dict):
        raise _BadRow(f"record is {type(row).__name__}, not an object")
    value = row.get(key)
    if value is None:
        raise _BadRow(f"missing field {key!r}")
    if not isinstance(value, str | int | float):
        raise _BadRow(f"field {key!r} is {type(value).__name__}, not text")
    text = str(value).strip()
    if not text:
        raise _BadRow(f"empty field {key!r}")
    return text


def _numeric_answer(raw: object, what: str) -> str:
    """A reference number rendered canonically ("43.0" -> "43", "1,600" -> "1600")."""
    if isinstance(raw, bool) or raw is None:
        raise _BadRow(f"missing {what}")
    if isinstance(raw, int | float):
        if not math.isfinite(raw):
            raise _BadRow(f"non-finite {what} {raw!r}")
        raw = repr(raw)  # repr keeps the shortest exact decimal: 1.84 stays "1.84"
    value = normalize_number(str(raw))
    if value is None:
        raise _BadRow(f"non-numeric {what} {str(raw)[:60]!r}")
    return format_number(value)


def _multiple_choice(stem: str, options: list[tuple[str, str]], answer: str, level: str) -> Normalised:
    """A question of ``options`` ((label, text) in order) whose right one is labelled ``answer``: relabelled A, B, ...
    in order (ARC writes 1-4 for some), the question followed by one "A. text" line per option."""
    labels = [label for label, _ in options]
    if answer not in labels:
        raise _BadRow(f"answer {answer} is not one of the choices {''.join(labels)}")
    if len(set(labels)) != len(labels):
        raise _BadRow(f"choice labels repeat: {''.join(labels)}")
    texts = tuple(text for _, text in options)
    if any(not text for text in texts):
        raise _BadRow("an empty choice")
    return Normalised(stem + options_block(texts), LETTERS[labels.index(answer)], level, texts)


def _letter(label: object) -> str:
    """Choice label as a letter: "C" stays, "1".."9" become "A".."I" (ARC uses both)."""
    text = str(label).strip().upper()
    if text.isdigit() and 1 <= int(text) <= len(_LETTERS):
        return _LETTERS[int(text) - 1]
    if len(text) == 1 and text in _LETTERS:
        return text
    raise _BadRow(f"bad choice label {label!r}")


# ---------------------------------------------------------------- normalisers


def _gsm8k(row: dict, split: str) -> Normalised:
    solution = _text(row, "answer")
    answer = gsm8k_reference(solution)
    if answer is None:
        raise _BadRow(f"no numeric '#### ' answer on the last line: {solution.splitlines()[-1][:60]!r}")
    return Normalised(_text(row, "question"), answer, split)


def _mawps(row: dict, split: str) -> Normalised:
    question = _text(row, "input")
    return Normalised(question, _numeric_answer(row.get("target"), "target"), split)


def _asdiv(row: dict, split: str) -> Normalised:
    # "9 (apples)": the unit note is dropped; answers such as "3:30 p.m.", "5:6" or "Mrs. Hilt" are not numbers
    question = f"{_text(row, 'body')} {_text(row, 'question')}"
    return Normalised(question, _numeric_answer(_text(row, "answer"), "answer"), split)


def _math(row: dict, split: str) -> Normalised:
    question = _text(row, "problem")
    answer = str(row.get("answer") or "").strip()  # MATH-500 carries it; full MATH has only the solution
    if not answer:
        answer = math_reference(_text(row, "solution")) or ""
        if not answer:
            raise _BadRow("no \\boxed{} answer in the solution")
    level_raw = str(row.get("level") or "")
    digits = re.search(r"\d+", level_raw)  # "Level 3" -> "3"; MATH-500 has the int 3
    return Normalised(question, answer, digits.group(0) if digits else split)


def _mmlu_pro(row: dict, split: str) -> Normalised | None:
    category = row.get("category") if isinstance(row, dict) else None
    if category not in (None, "", "math"):  # the hub copy holds every subject: keep math only
        return None
    options = row.get("options")
    if not isinstance(options, list) or not options:
        raise _BadRow("missing or empty 'options'")
    if len(options) > len(_LETTERS):
        raise _BadRow(f"{len(options)} options, at most {len(_LETTERS)} supported")
    answer = _letter(_text(row, "answer"))
    if _LETTERS.index(answer) >= len(options):
        raise _BadRow(f"answer {answer} but only {len(options)} options")
    labelled = [(_LETTERS[i], str(text).strip()) for i, text in enumerate(options)]
    return _multiple_choice(_text(row, "question"), labelled, answer, str(row.get("src") or split))


def _arc(row: dict, split: str) -> Normalised:
    question = row.get("question") if isinstance(row, dict) else None
    if isinstance(question, dict):  # official layout: question.stem + question.choices[{text, label}]
        stem = _text(question, "stem")
        choices = question.get("choices") or []
        pairs = [(c.get("label"), c.get("text")) for c in choices if isinstance(c, dict)]
    else:  # hub layout: question str + choices {text: [...], label: [...]}
        stem = _text(row, "question")
        choices = row.get("choices") or {}
        if not isinstance(choices, dict):
            raise _BadRow("'choices' is not an object")
        labels, texts = choices.get("label") or [], choices.get("text") or []
        if len(labels) != len(texts):
            raise _BadRow(f"{len(labels)} labels but {len(texts)} choice texts")
        pairs = list(zip(labels, texts, strict=True))
    if len(pairs) < 2:
        raise _BadRow("fewer than two choices")
    options = [(_letter(label), str(text or "").strip()) for label, text in pairs]
    return _multiple_choice(stem, options, _letter(_text(row, "answerKey")), split)


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in (
        BenchmarkSpec("gsm8k", "number", _gsm8k, "grade-school word problems; answer after '#### '"),
        BenchmarkSpec("mawps", "number", _mawps, "MAWPS word problems (input/target)"),
        BenchmarkSpec("asdiv", "number", _asdiv, "ASDiv word problems (body + question; '9 (apples)')"),
        BenchmarkSpec("math", "math", _math, "MATH competition problems, levels 1-5; last \\boxed{} of the solution"),
        BenchmarkSpec("math500", "math", _math, "MATH-500 subset (problem/solution/answer/level)"),
        BenchmarkSpec("mmlu-pro-math", "choice", _mmlu_pro, "MMLU-Pro math, up to ten options A-J"),
        BenchmarkSpec("arc", "choice", _arc, "AI2 ARC (challenge or easy), labels 1-4 mapped to A-D"),
        BenchmarkSpec("arc-easy", "choice", _arc, "AI2 ARC-Easy (as arc, its own task name and ids)"),
        BenchmarkSpec("arc-challenge", "choice", _arc, "AI2 ARC-Challenge (as arc, its own task name and ids)"),
    )
}


@dataclass(frozen=True)
class Fields:
    """Where a file of one's own keeps its question, answer and (optional) level."""

    question: str = "question"
    answer: str = "answer"
    level: str | None = None  # no level field: every example gets the level "all"
    answer_kind: str = "number"

    def spec(self, name: str) -> BenchmarkSpec:
        """A spec that reads these fields (answers normalised by kind, as for the known benchmarks)."""
        if self.answer_kind not in ANSWER_KINDS:
            raise ValueError(f"answer kind must be one of {ANSWER_KINDS}, got {self.answer_kind!r}")

        def normalise(row: dict, level: str) -> Normalised:
            raw = row.get(self.answer) if isinstance(row, dict) else None
            if self.answer_kind == "number":
                answer = _numeric_answer(raw if isinstance(raw, int | float) else _text(row, self.answer), self.answer)
            elif self.answer_kind == "choice":
                answer = _letter(_text(row, self.answer))
            else:
                answer = _text(row, self.answer)
            if self.level is not None:
                level = _text(row, self.level)
            return Normalised(_text(row, self.question), answer, level)

        fields = f"{self.question}/{self.answer}" + (f"/{self.level}" if self.level else "")
        return BenchmarkSpec(name, self.answer_kind, normalise, f"own file ({fields})")


# ---------------------------------------------------------------- loading


def records_from_rows(
    name: str,
    rows: Iterable[Any],
    source: str,
    split: str = "test",
    limit: int | None = None,
    fields: Fields | None = None,
) -> tuple[list[Example], list[BadRecord]]:
    """Normalise raw rows of a known benchmark, or of one's own file read with ``fields``.

    Args:
        name: a key of BENCHMARKS, or any task name with ``fields``.
        rows: raw records in source order (dicts; anything else becomes a BadRecord).
        source: file path or hub id, used in Example.source and BadRecord.source.
        split: the part of the source read (a hub split, or the file's name), used in ids. Where the
            records carry no level, the level is "all".
        limit: stop after this many good Examples.
        fields: the fields of one's own file.
    Returns:
        (examples, bad records), both in source order.
    """
    spec = fields.spec(name) if fields is not None else _spec(name)
    examples: list[Example] = []
    bad: list[BadRecord] = []
    for index, row in enumerate(rows):
        if limit is not None and len(examples) >= limit:
            break
        if isinstance(row, _Unreadable):  # a line the reader itself could not parse
            bad.append(BadRecord(source, index, row.reason))
            continue
        try:
            norm = spec.normalise(row, NO_LEVEL)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
            bad.append(BadRecord(source, index, _reason(err)))
            continue
        if norm is None:
            continue
        examples.append(
            Example(
                id=f"{name}/{split}/{index}",
                question=norm.question,
                answer=norm.answer,
                task=name,
                level=norm.level,
                source=f"{source}#{index}",
                answer_kind=spec.answer_kind,
                choices=norm.choices,
            )
        )
    return examples, bad


def load_benchmark(
    name: str,
    path_or_hub_id: str | Path,
    split: str = "test",
    limit: int | None = None,
    *,
    config: str | None = None,
    cache_dir: str | Path | None = None,
    fields: Fields | None = None,
) -> tuple[list[Example], list[BadRecord]]:
    """Load a benchmark from a local file or directory, or from the Hugging Face hub.

    Args:
        name: a key of BENCHMARKS, or any task name with ``fields`` (one's own question-answer file).
        path_or_hub_id: a .jsonl/.json/.parquet/.csv file, a directory `datasets` can read, or a hub id.
        split: the split to read from a directory or hub id; for a single file it only names the ids.
        limit: at most this many Examples (bad records met on the way are still reported).
        config: hub dataset configuration (e.g. "main" for openai/gsm8k, "ARC-Challenge" for allenai/ai2_arc).
        cache_dir: where `datasets` writes its Arrow cache (default: its own).
        fields: the question, answer and level fields of one's own file.
    Returns:
        (examples, bad records).
    Raises:
        ValueError: unknown benchmark name.
        FileNotFoundError: a local path that does not exist.
        ConnectionError: a hub id that cannot be loaded (e.g. no network): pass a local file instead.
    """
    if fields is None:
        _spec(name)  # fail on an unknown name before touching the disk
    source = str(path_or_hub_id)
    path = Path(source).expanduser()
    if path.exists():
        rows = _local_rows(path, split, cache_dir)
        if path.is_file():
            split = path.stem  # ids name the file: "gsm8k/test/17", "mine/problems/3"
    elif _looks_like_path(source):
        raise FileNotFoundError(f"benchmark file not found: {path}")
    else:
        rows = _hub_rows(source, split, config, cache_dir)
    return records_from_rows(name, rows, source, split, limit, fields)


def _spec(name: str) -> BenchmarkSpec:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(
            f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}. For a file of your own, name "
            "its fields: --question-field Q --answer-field A [--level-field L] [--answer-kind number|math|choice]"
        ) from None


def _reason(err: Exception) -> str:
    if isinstance(err, KeyError):
        return f"missing field {err}"
    return str(err) or type(err).__name__


def _looks_like_path(text: str) -> bool:
    """A hub id is "name" or "owner/name"; anything with a file suffix or a path prefix is meant as a file."""
    return (
        Path(text).suffix.lower() in _BUILDERS
        or text.startswith(("/", ".", "~"))
        or text.count("/") > 1
        or "\\" in text
    )


def _local_rows(path: Path, split: str, cache_dir: str | Path | None) -> Iterator[Any]:
    """Rows of a local file or directory, read by `datasets` (no network: packaged builders only)."""
    import datasets  # heavy import: only when something is loaded

    if path.is_dir():
        return iter(datasets.load_dataset(str(path), split=split, cache_dir=_str(cache_dir)))
    builder = _BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise ValueError(f"unsupported file type {path.suffix!r} for {path}; use one of {', '.join(_BUILDERS)}")
    try:
        dataset = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=_str(cache_dir))
    except Exception:
        if path.suffix.lower() != ".jsonl":
            raise
        # One malformed line (or types that differ between rows) makes Arrow reject the whole file: read the lines
        # ourselves so that only the broken ones become BadRecords.
        return _jsonl_rows(path)
    return iter(dataset)


def _jsonl_rows(path: Path) -> Iterator[Any]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                yield _Unreadable(f"invalid JSON: {err.msg}")


def _hub_rows(hub_id: str, split: str, config: str | None, cache_dir: str | Path | None) -> Iterator[Any]:
    import datasets

    try:
        dataset = datasets.load_dataset(hub_id, config, split=split, cache_dir=_str(cache_dir))
    except Exception as err:
        raise ConnectionError(
            f"could not load {hub_id!r} (split {split!r}) from the Hugging Face hub: {err}. "
            "Without network access, pass a local .jsonl/.json/.parquet/.csv file or directory instead."
        ) from err
    return iter(dataset)


def _str(path: str | Path | None) -> str | None:
    return None if path is None else str(path)
