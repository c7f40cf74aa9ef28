"""One normalised schema for every task: synthetic levels and real benchmarks alike."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

__all__ = ["ANSWER_KINDS", "LETTERS", "BadRecord", "Example", "options_block", "stem_of"]

# How an answer is compared: a number (integers, decimals, fractions, commas, units), a MATH-style
# expression (\boxed{}, LaTeX), or a multiple-choice letter.
ANSWER_KINDS = ("number", "math", "choice")
LETTERS = "ABCDEFGHIJ"  # the labels of a multiple-choice question's options, in order


def options_block(choices: tuple[str, ...] | list[str]) -> str:
    """The lines a multiple-choice question's text ends with: ``"\\nA. text\\nB. text..."``."""
    return "\n" + "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(choices))


def stem_of(question: str) -> str:
    """A multiple-choice question's text without the options block :func:`options_block` ended it with (where only
    the text is at hand, e.g. a reward matrix's inputs); any other question as it is."""
    at = question.rfind("\nA. ")
    if at < 0:
        return question
    lines = question[at + 1 :].split("\n")
    if len(lines) < 2 or any(not line.startswith(f"{LETTERS[i]}. ") for i, line in enumerate(lines[: len(LETTERS)])):
        return question
    return question[:at] if len(lines) <= len(LETTERS) else question


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
    # A multiple-choice question's option texts, labelled A, B, ... in this order (``question`` ends with them as
    # :func:`options_block` writes them; ``answer`` is the right one's letter). Empty for other questions.
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.answer_kind not in ANSWER_KINDS:
            raise ValueError(f"answer_kind must be one of {ANSWER_KINDS}, got {self.answer_kind!r}")
        if self.choices and self.answer not in LETTERS[: len(self.choices)]:
            raise ValueError(
                f"{self.id}: answer {self.answer!r} is not one of the {len(self.choices)} choices' letters"
            )

    @property
    def stem(self) -> str:
        """The question without its options (what a choice's likelihood is scored after, as in cloze prompts)."""
        block = options_block(self.choices) if self.choices else ""
        return self.question[: -len(block)] if block and self.question.endswith(block) else self.question

    @property
    def answer_index(self) -> int:
        """The right choice's position in ``choices``."""
        return LETTERS.index(self.answer)

    def to_dict(self) -> dict:
        return asdict(self) | {"choices": list(self.choices)}

    @classmethod
    def from_dict(cls, row: dict) -> Example:
        names = {f.name for f in fields(cls)} - {"choices"}
        values = {k: ("" if row[k] is None else str(row[k])) for k in names if k in row}
        choices = row.get("choices")
        return cls(**values, choices=tuple(str(c) for c in choices) if choices is not None else ())


@dataclass(frozen=True)
class BadRecord:
    """A record that could not be normalised: reported and skipped, never fatal."""

    source: str  # file or hub id
    index: int  # record number in the source
    reason: str

    def __str__(self) -> str:
        return f"{self.source} record {self.index}: {self.reason}"
