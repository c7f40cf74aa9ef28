"""One normalised schema for every task: synthetic levels and real benchmarks alike."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

__all__ = ["ANSWER_KINDS", "BadRecord", "Example"]

# How an answer is compared: a number (integers, decimals, fractions, commas, units), a MATH-style
# expression (\boxed{}, LaTeX), or a multiple-choice letter.
ANSWER_KINDS = ("number", "math", "choice")


@dataclass(frozen=True)
class Example:
    """One question with its reference answer."""

    id: str  # unique within the task, stable across runs (e.g. "gsm8k/test/17")
    question: str  # the text shown to the model (choices included for multiple choice)
    answer: str  # the reference answer, normalised as text ("18", "\\frac{1}{2}", "C")
    task: str  # e.g. "arith", "gsm8k", "math500"
    level: str  # difficulty level or split ("1".."5", "test", "Level 3")
    source: str  # where it came from: file path or hub id, and the record index
    answer_kind: str = "number"  # one of ANSWER_KINDS

    def __post_init__(self) -> None:
        if self.answer_kind not in ANSWER_KINDS:
            raise ValueError(f"answer_kind must be one of {ANSWER_KINDS}, got {self.answer_kind!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict) -> Example:
        names = {f.name for f in fields(cls)}
        return cls(**{k: ("" if row[k] is None else str(row[k])) for k in names if k in row})


@dataclass(frozen=True)
class BadRecord:
    """A record that could not be normalised: reported and skipped, never fatal."""

    source: str  # file or hub id
    index: int  # record number in the source
    reason: str

    def __str__(self) -> str:
        return f"{self.source} record {self.index}: {self.reason}"
