"""Splits by content: every question belongs to one split, decided by a hash of its normalised text.

Templated questions collide ("What is 3 * 4?" is drawn again and again), so independent draws for train
and test overlap whatever their sizes. Here the split is a property of the question itself: the SHA-256 of
its normalised text (Unicode NFKC, case folded, whitespace collapsed) falls in one of four fixed ranges.
The same question lands in the same split in every file, every task and every run, so no question can sit
in two splits, and few-shot examples come from a split of their own (``shots``) that is never labeled or
evaluated.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable

__all__ = ["FRACTIONS", "SHOTS", "SPLITS", "digest", "normalise", "overlap", "split_of"]

SPLITS = ("train", "validation", "test")  # what the pipeline ingests, labels and evaluates
SHOTS = "shots"  # the few-shot pool: never labeled, never evaluated
# Shares of the hash range, in this order. Changing them moves questions between splits: they are part of
# the rule, not a parameter.
FRACTIONS = {SHOTS: 0.02, "train": 0.68, "validation": 0.10, "test": 0.20}

_SPACE = re.compile(r"\s+")


def normalise(question: str) -> str:
    """The text that decides a question's split: NFKC, case folded, runs of whitespace as one space."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", question).casefold()).strip()


def digest(question: str) -> str:
    """SHA-256 (hex) of the normalised text: the question's split and its stable id both come from it."""
    return hashlib.sha256(normalise(question).encode("utf-8")).hexdigest()


def split_of(question: str, key: str | None = None) -> str:
    """The split ``question`` belongs to: ``shots``, ``train``, ``validation`` or ``test``.

    ``key`` is its :func:`digest`, when already computed.
    """
    u, edge = int((key or digest(question))[:16], 16) / 2**64, 0.0
    for name, share in FRACTIONS.items():
        edge += share
        if u < edge:
            return name
    return "test"  # float rounding at the very top of the range


def overlap(questions: Iterable[str], others: Iterable[str]) -> set[str]:
    """Normalised questions found in both collections."""
    return {normalise(q) for q in questions} & {normalise(q) for q in others}
