"""Graded synthetic arithmetic: the embedded default task, deterministic by seed.

Five levels of falling base accuracy for small models: count down by one, count up by twos, add ten
(a sequence in tens, or "ten more than"), subtract a one-digit number from a number below 1,000, and double a
number. Each level is a set of question forms over ranges of numbers with at least 2,000 distinct questions
(:func:`size`), and every question belongs to one split by a hash of its text (:mod:`polar.tasks.splits`),
so train, validation, test and the few-shot pool never share a question. The levels were chosen by
measuring the bundled models (``bench/levels.py``; figures in bench/README.md). The same ``(level, n, seed,
split)`` always gives the same questions.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from polar.tasks.schema import Example
from polar.tasks.splits import FRACTIONS, digest, split_of

__all__ = ["LEVELS", "TASK", "Form", "generate", "size"]

TASK = "arith"


@dataclass(frozen=True)
class Form:
    """One question form: a template over ranges of integers (every combination is a distinct question)."""

    ranges: tuple[range, ...]
    render: Callable[..., tuple[str, int]]  # numbers -> (question, answer)

    def size(self) -> int:
        return math.prod(len(r) for r in self.ranges)

    def draw(self, rng: random.Random) -> tuple[str, int]:
        return self.render(*(rng.choice(r) for r in self.ranges))


_FORMS: dict[int, tuple[Form, ...]] = {
    1: (Form((range(10, 3000),), lambda a: (f"What number comes next: {a}, {a - 1}, {a - 2}, {a - 3}?", a - 4)),),
    2: (Form((range(1, 3000),), lambda a: (f"What number comes next: {a}, {a + 2}, {a + 4}, {a + 6}?", a + 8)),),
    3: (
        Form((range(1, 2000),), lambda a: (f"What number comes next: {a}, {a + 10}, {a + 20}, {a + 30}?", a + 40)),
        Form((range(10, 2000),), lambda a: (f"What number is ten more than {a}?", a + 10)),
    ),
    4: (Form((range(10, 1000), range(2, 10)), lambda a, b: (f"What is {a} - {b}?", a - b)),),
    5: (Form((range(10, 3000),), lambda a: (f"What is {a} + {a}?", 2 * a)),),
}
LEVELS = tuple(sorted(_FORMS))


def _forms(level: int) -> tuple[Form, ...]:
    if level not in _FORMS:
        raise ValueError(f"unknown level {level}: synthetic levels are {LEVELS}")
    return _FORMS[level]


def size(level: int) -> int:
    """How many distinct questions ``level`` has (all splits together)."""
    return sum(form.size() for form in _forms(level))


def generate(level: int, n: int, seed: int = 0, split: str = "test") -> list[Example]:
    """``n`` distinct questions of ``level`` that belong to ``split``, deterministic by ``(level, n, seed, split)``.

    Questions are drawn (forms in proportion to their sizes) and kept when their hash puts them in ``split``.
    """
    forms = _forms(level)
    if split not in FRACTIONS:
        raise ValueError(f"unknown split {split!r}: one of {', '.join(FRACTIONS)}")
    available = size(level) * FRACTIONS[split]
    if n > 0.9 * available:  # the last few questions of a split take ever longer to find
        raise ValueError(
            f"level {level} has about {available:.0f} {split} questions ({size(level)} in all): ask for at most "
            f"{int(0.9 * available)}"
        )
    rng = random.Random(f"{TASK}/{seed}/{level}/{split}")
    weights = [form.size() for form in forms]
    seen: set[str] = set()
    out: list[Example] = []
    while len(out) < n:
        question, answer = rng.choices(forms, weights)[0].draw(rng)
        key = digest(question)
        if key in seen or split_of(question, key) != split:
            continue
        seen.add(key)
        out.append(
            Example(
                id=f"{TASK}/L{level}/{key[:12]}",  # the same question has the same id in every split and run
                question=question,
                answer=str(answer),
                task=TASK,
                level=str(level),
                source=f"synthetic:{TASK}?level={level}&seed={seed}&split={split}#{len(out)}",
                answer_kind="number",
            )
        )
    return out
