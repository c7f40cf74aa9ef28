"""The synthetic levels: deterministic by seed, distinct questions, right answers, room, and disjoint splits."""

import re

import pytest

from polar.tasks import synthetic
from polar.tasks.splits import FRACTIONS, SPLITS, normalise, split_of


def _solve(question: str) -> int:
    """An independent solver for the question forms."""
    if m := re.fullmatch(r"What number comes next: (\d+), (\d+), (\d+), (\d+)\?", question):
        a, b, c, d = map(int, m.groups())
        assert b - a == c - b == d - c
        return d + (d - c)
    if m := re.fullmatch(r"What is (\d+) ([*+-]) (\d+)\?", question):
        a, op, b = int(m[1]), m[2], int(m[3])
        return {"*": a * b, "+": a + b, "-": a - b}[op]
    if m := re.fullmatch(r"What number is ten more than (\d+)\?", question):
        return int(m[1]) + 10
    raise AssertionError(f"unknown form: {question}")


@pytest.mark.parametrize("level", synthetic.LEVELS)
def test_levels_are_deterministic_distinct_and_correct(level):
    a = synthetic.generate(level, 40, seed=3, split="train")
    assert a == synthetic.generate(level, 40, seed=3, split="train")
    assert a != synthetic.generate(level, 40, seed=4, split="train")
    assert len({e.question for e in a}) == len({e.id for e in a}) == 40
    for e in a:
        assert int(e.answer) == _solve(e.question) >= 0, e.question
        assert e.level == str(level) and e.task == "arith" and split_of(e.question) == "train"


@pytest.mark.parametrize("level", synthetic.LEVELS)
def test_each_level_has_room_for_thousands_of_distinct_questions(level):
    assert synthetic.size(level) >= 2000
    # Different numbers make different questions (checked on a large draw), so the count is not inflated.
    drawn = synthetic.generate(level, int(0.6 * synthetic.size(level) * FRACTIONS["train"]), split="train")
    assert len({normalise(e.question) for e in drawn}) == len(drawn)


def test_splits_never_share_a_question_whatever_the_sizes():
    for level in synthetic.LEVELS:
        seen = {}
        for split in (*SPLITS, "shots"):
            n = min(300, int(0.8 * synthetic.size(level) * FRACTIONS[split]))
            for e in synthetic.generate(level, n, seed=0, split=split):
                assert seen.setdefault(normalise(e.question), split) == split, e.question


def test_asking_for_more_than_a_split_holds_is_a_clear_error():
    with pytest.raises(ValueError, match="level 1 has about 60 shots questions"):
        synthetic.generate(1, 100, split="shots")
    with pytest.raises(ValueError, match="synthetic levels are"):
        synthetic.generate(6, 1)
