"""Graded synthetic arithmetic: the embedded default task, deterministic by seed.

Five levels of rising difficulty for small models: continue a counting sequence, single-digit
products, subtraction within 20, two-digit plus one-digit sums, and word problems of one or two
steps. The levels were chosen by measuring the bundled models (``bench/levels.py``; figures in
bench/README.md), so that their base accuracy falls from level 1 to level 5. The same
``(level, n, seed)`` always gives the same questions.
"""

from __future__ import annotations

import random

from polar.tasks.schema import Example

__all__ = ["LEVELS", "TASK", "few_shot", "generate"]

TASK = "arith"
LEVELS = (1, 2, 3, 4, 5)

_NAMES = ("Tom", "Ann", "Sam", "Mia", "Leo", "Ava", "Ben", "Zoe", "Max", "Eva")
_THINGS = ("apples", "pens", "books", "cards", "coins", "stamps", "marbles", "shells", "cookies", "stickers")


def _item(level: int, rng: random.Random) -> tuple[str, int]:
    """One (question, answer) pair of the given level."""
    if level == 1:
        a = rng.randint(1, 60)
        return f"What number comes next: {a}, {a + 1}, {a + 2}, {a + 3}?", a + 4
    if level == 2:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        return f"What is {a} * {b}?", a * b
    if level == 3:
        a = rng.randint(2, 18)
        b = rng.randint(1, min(a, 9))
        return f"What is {a} - {b}?", a - b
    if level == 4:
        a, b = rng.randint(10, 99), rng.randint(2, 9)
        return f"What is {a} + {b}?", a + b
    if level == 5:
        name, other, thing = rng.choice(_NAMES), rng.choice(_NAMES), rng.choice(_THINGS)
        while other == name:
            other = rng.choice(_NAMES)
        a, b = rng.randint(5, 20), rng.randint(2, 9)
        kind = rng.randrange(3)
        if kind == 0:
            return f"{name} has {a} {thing}. {name} buys {b} more. How many {thing} does {name} have now?", a + b
        if kind == 1:
            b = rng.randint(2, min(9, a - 1))  # nobody gives away more than they have
            return f"{name} has {a} {thing} and gives {b} to {other}. How many {thing} does {name} have now?", a - b
        c = rng.randint(2, min(9, a + b - 1))
        return (
            f"{name} has {a} {thing}. {name} buys {b} more, then gives {c} to {other}. "
            f"How many {thing} does {name} have now?",
            a + b - c,
        )
    raise ValueError(f"unknown level {level}: synthetic levels are {LEVELS}")


def generate(level: int, n: int, seed: int = 0, split: str = "test") -> list[Example]:
    """``n`` distinct questions of ``level``, deterministic by ``(level, seed, split)``."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level}: synthetic levels are {LEVELS}")
    rng = random.Random(f"{TASK}/{split}/{seed}/{level}")
    seen: set[str] = set()
    out: list[Example] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"level {level} has fewer than {n} distinct questions")
        question, answer = _item(level, rng)
        if question in seen:
            continue
        seen.add(question)
        i = len(out)
        out.append(
            Example(
                id=f"{TASK}/{split}/L{level}/s{seed}/{i}",
                question=question,
                answer=str(answer),
                task=TASK,
                level=str(level),
                source=f"synthetic:{TASK}?level={level}&seed={seed}&split={split}#{i}",
                answer_kind="number",
            )
        )
    return out


def few_shot(level: int, k: int, exclude: set[str] | frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """``k`` worked examples of ``level`` for few-shot prompts, from a stream separate from any split."""
    pool = generate(level, k + 8, seed=0, split="shots")  # level 2 has only 64 distinct questions
    shots = [(e.question, e.answer) for e in pool if e.question not in exclude][:k]
    if len(shots) < k:
        raise ValueError(f"fewer than {k} few-shot examples of level {level} outside the excluded questions")
    return shots
