"""The accuracy-mode choice over a menu: a program replaces the full depth only where its estimated gain clears a
threshold. One rule, below both of its users: the selection study (M1 and M2, :mod:`polar.selection.policies`) and
the served menu predictor (:mod:`polar.predictor`), so what is served is the rule that was evaluated."""

from __future__ import annotations

import numpy as np

__all__ = ["gain_choice"]


def gain_choice(proba: np.ndarray, threshold: float) -> np.ndarray:
    """(n,) the program of highest estimated gain over the full depth (column 0) where that gain exceeds
    ``threshold``, else 0.

    Args:
        proba: (n, m) estimated chance that each menu program answers each input right.
    """
    gain = proba[:, 1:] - proba[:, :1]
    return np.where(gain.max(1) > threshold, gain.argmax(1) + 1, 0)
