"""Held-out questions: validation gets whole questions, never part of one, by one seeded shuffle.

A question labeled several times (under several search spaces, say) gives several targets or matrix rows; all of
them fall on the same side. Both fitters split by :func:`held_out_questions`: the network its targets
(:func:`split_targets`), M2 its reward matrix (:func:`split_matrix`).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from polar.selection.matrix import Matrix

__all__ = ["held_out_questions", "split_matrix", "split_targets"]


class _HasQuestion(Protocol):
    @property
    def question(self) -> str: ...


T = TypeVar("T", bound=_HasQuestion)


def held_out_questions(questions: Iterable[str], fraction: float, seed: int) -> set[str]:
    """The questions held out: the distinct texts, sorted, shuffled with ``seed``; the first ``fraction`` of them.

    Args:
        questions: question texts (repeats count once).
        fraction: share of the distinct questions to hold out (rounded; none when there is only one question).
        seed: seed of the shuffle.

    Returns:
        The held-out question texts.
    """
    distinct = sorted(set(questions))
    random.Random(seed).shuffle(distinct)
    n_held = round(len(distinct) * fraction) if len(distinct) > 1 else 0
    return set(distinct[:n_held])


def split_targets(targets: Sequence[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """``(train, validation)`` of the network's targets, whole questions on one side (validation may be empty)."""
    held = held_out_questions((t.question for t in targets), fraction, seed)
    return [t for t in targets if t.question not in held], [t for t in targets if t.question in held]


def split_matrix(matrix: Matrix, fraction: float, seed: int) -> tuple[Matrix, Matrix]:
    """``(train, validation)`` of a reward matrix, whole questions on one side.

    Raises:
        ValueError: either side would hold no question (M2 chooses its checkpoint on the held-out part).
    """
    questions = matrix.inputs["question"]
    held = held_out_questions(questions, fraction, seed)
    n = questions.nunique()
    if not held or len(held) == n:
        raise ValueError(
            f"{n} questions cannot be split {1 - fraction:.0%}/{fraction:.0%}: label more inputs, or change "
            "--val-fraction"
        )
    on_held = questions.isin(held).to_numpy()
    return matrix.take(~on_held), matrix.take(on_held)
