"""The synthetic levels: deterministic by seed, distinct questions, answers that are right."""

import re

import pytest

from polar.tasks import synthetic


def _solve(question: str) -> int:
    """An independent solver for the five question forms."""
    if m := re.fullmatch(r"What number comes next: (\d+), (\d+), (\d+), (\d+)\?", question):
        a, b, c, d = map(int, m.groups())
        assert b - a == c - b == d - c == 1
        return d + 1
    if m := re.fullmatch(r"What is (\d+) ([*+-]) (\d+)\?", question):
        a, op, b = int(m[1]), m[2], int(m[3])
        return {"*": a * b, "+": a + b, "-": a - b}[op]
    numbers = [int(x) for x in re.findall(r"\d+", question)]
    if "buys" in question and "gives" in question:
        return numbers[0] + numbers[1] - numbers[2]
    if "buys" in question:
        return numbers[0] + numbers[1]
    return numbers[0] - numbers[1]


@pytest.mark.parametrize("level", synthetic.LEVELS)
def test_levels_are_deterministic_distinct_and_correct(level):
    a = synthetic.generate(level, 40, seed=3)
    assert a == synthetic.generate(level, 40, seed=3)
    assert a != synthetic.generate(level, 40, seed=4)
    assert len({e.question for e in a}) == 40
    for e in a:
        assert int(e.answer) == _solve(e.question) >= 0, e.question
        assert e.level == str(level) and e.task == "arith"


def test_few_shot_examples_come_from_their_own_stream():
    test_questions = {e.question for e in synthetic.generate(2, 10, seed=0)}
    shots = synthetic.few_shot(2, 3, exclude=test_questions)
    assert len(shots) == 3 and not {q for q, _ in shots} & test_questions


def test_unknown_level():
    with pytest.raises(ValueError, match="synthetic levels are"):
        synthetic.generate(6, 1)
