"""Choosing a program per input over a menu, what the choice costs, and how it is scored.

A :class:`Selection` is one program per input (an index into the menu) and what it cost in layers run,
counting every pass the method needs: reading the base model's confidence costs its full-depth greedy pass (whose
answer is then free), and samples cost a full-depth pass each.

The policies, each fitted or tuned on training and validation matrices only:

- static programs (:func:`static`): B0 the full depth, B1 the best on train (:func:`best_static`), B1' the
  shortest within the margin on train (:func:`shortest_within`);
- per level (:func:`per_level`, :func:`best_per_level`): B2;
- confidence gates (:func:`gated`, :func:`tune_gate`): B3, program B1 where the base model is unsure;
- a learned chance per program (M1's :mod:`~polar.selection.gain_model`, M2's network): accuracy mode takes the
  program of highest gain over the full depth past a tuned threshold (:func:`polar.gain.gain_choice`, :func:`choose_gain`,
  :func:`tune_threshold`); efficiency mode trades right answers for layers at a tuned price (:func:`choose_cheap`,
  :func:`tune_price`), keeping validation pass@1 within ``margin`` of base greedy;
- the oracle (:func:`oracle`), the ceiling no selector can pass.

:func:`winners` picks the two operating points from validation scores; :func:`score` measures a selection on any
split as a :class:`polar.stats.MethodScore`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from polar.gain import gain_choice
from polar.selection.matrix import Matrix
from polar.stats import MethodScore, score_outcomes

__all__ = [
    "BASE",
    "FEATURE_PASSES",
    "Selection",
    "best_per_level",
    "best_static",
    "charged",
    "choose_cheap",
    "choose_gain",
    "gated",
    "oracle",
    "per_level",
    "right_answers",
    "score",
    "shortest_within",
    "static",
    "tune_gate",
    "tune_price",
    "tune_threshold",
    "winners",
]

BASE = "B0 base greedy"  # the name of the full depth's selection in every table

# Full-depth passes each confidence feature needs (beyond nothing): the greedy answer's own statistics
# come with its pass; sample agreement needs the samples too (``samples`` more passes).
FEATURE_PASSES = {"base_logprob": 1, "base_margin": 1, "base_entropy": 1, "sample_agreement": None}


@dataclass(frozen=True)
class Selection:
    """One program per input (indices into the menu) and the layers each input cost."""

    name: str
    choice: np.ndarray  # (n,) int
    cost: np.ndarray  # (n,) float: layers run for the input, every pass counted


def static(matrix: Matrix, j: int, name: str | None = None) -> Selection:
    """Program ``j`` for every input (``j = 0``: base greedy)."""
    n = len(matrix.ids)
    return Selection(
        name or ("base greedy" if j == 0 else f"static {matrix.programs[j]}"),
        np.full(n, j),
        np.full(n, float(matrix.layers[j])),
    )


def per_level(matrix: Matrix, chosen: Mapping[str, int], name: str = "best program per level") -> Selection:
    """The program ``chosen[level]`` for each input (the full depth for a level not in ``chosen``)."""
    choice = np.array([chosen.get(level, 0) for level in matrix.levels], dtype=int)
    return Selection(name, choice, matrix.layers[choice].astype(float))


def gated(
    matrix: Matrix, j: int, feature: str, threshold: float, samples: int = 4, name: str | None = None
) -> Selection:
    """Program ``j`` where the base model's ``feature`` is below ``threshold``, else the full depth's answer.

    Reading the feature costs the full-depth greedy pass (and ``samples`` more passes for sample agreement);
    where the gate keeps the base answer that pass is the whole cost, elsewhere program ``j`` runs as well.
    """
    if feature not in FEATURE_PASSES:
        raise ValueError(f"no confidence feature {feature!r}; the features are {', '.join(FEATURE_PASSES)}")
    passes = FEATURE_PASSES[feature] or 1 + samples
    low = matrix.inputs[feature].to_numpy() < threshold
    choice = np.where(low, j, 0)
    cost = passes * matrix.depth + np.where(low, matrix.layers[j], 0.0)
    return Selection(name or f"{matrix.programs[j]} when {feature} < {threshold:g}", choice, cost.astype(float))


def _best(correct: np.ndarray, layers: np.ndarray) -> int:
    """The column with the most right answers; ties go to fewer layers, then to the earlier program."""
    totals = correct.sum(0)
    return int(min(range(len(layers)), key=lambda j: (-totals[j], layers[j], j)))


def best_static(train: Matrix) -> int:
    """B1: the program right on the most training inputs."""
    return _best(train.correct, train.layers)


def best_per_level(train: Matrix) -> dict[str, int]:
    """B2: for each level, the program right on the most of its training inputs."""
    return {level: _best(train.correct[train.levels == level], train.layers) for level in sorted(set(train.levels))}


def shortest_within(train: Matrix, margin: float) -> int:
    """B1': the shortest program whose train pass@1 is within ``margin`` of the full depth's (ties: more right)."""
    base = train.correct[:, 0].mean()
    within = [j for j in range(len(train.programs)) if train.correct[:, j].mean() >= base - margin]
    return min(within, key=lambda j: (train.layers[j], -train.correct[:, j].sum(), j))


def right_answers(matrix: Matrix, choice: np.ndarray) -> int:
    """How many inputs the chosen programs answer right, read from the matrix."""
    return int(matrix.correct[np.arange(len(choice)), choice].sum())


def tune_gate(validation: Matrix, j: int, feature: str) -> float:
    """The threshold of :func:`gated` with the most right answers on ``validation`` (ties: the lower, which
    runs program ``j`` less often); ``-inf`` never runs it."""
    values = np.unique(validation.inputs[feature].to_numpy())
    candidates = [-np.inf, *[float(v) for v in values], np.inf]  # "< v" for each distinct value, and all
    right = [right_answers(validation, gated(validation, j, feature, t).choice) for t in candidates]
    return candidates[int(np.argmax(right))]  # argmax takes the first: the lowest threshold among ties


# ------------------------------------------------------------------------------------------------ learned chances
def charged(matrix: Matrix, choice: np.ndarray, passes: int) -> np.ndarray:
    """Layers run per input: the feature passes, then the chosen program (the greedy pass's answer is free)."""
    if passes == 0:
        return matrix.layers[choice].astype(float)
    return passes * matrix.depth + np.where(choice == 0, 0.0, matrix.layers[choice])


def choose_gain(matrix: Matrix, proba: np.ndarray, threshold: float, passes: int, name: str) -> Selection:
    """Accuracy mode: :func:`polar.gain.gain_choice` over estimated chances ``proba`` (n, m)."""
    choice = gain_choice(proba, threshold)
    return Selection(name, choice, charged(matrix, choice, passes))


def choose_cheap(matrix: Matrix, proba: np.ndarray, price: float, passes: int, name: str) -> Selection:
    """Efficiency mode: the program maximising estimated right answers plus ``price`` per fraction of the depth
    saved (``price = 0``: the most likely right; larger prices trade accuracy for layers)."""
    value = proba + price * (matrix.depth - matrix.layers[None, :]) / matrix.depth
    choice = value.argmax(1)
    return Selection(name, choice, charged(matrix, choice, passes))


def tune_threshold(validation: Matrix, proba: np.ndarray) -> float:
    """The threshold of :func:`choose_gain` with the most right answers on ``validation`` (ties: the highest,
    which leaves the full depth's answer most often; ``inf`` never switches, ``-inf`` always does)."""
    gain = (proba[:, 1:] - proba[:, :1]).max(1)
    candidates = sorted({np.inf, -np.inf, *(float(g) for g in gain)}, reverse=True)
    right = [right_answers(validation, gain_choice(proba, t)) for t in candidates]
    return candidates[int(np.argmax(right))]  # the first maximum: the highest threshold among ties


def tune_price(validation: Matrix, proba: np.ndarray, passes: int, margin: float) -> float:
    """The price of :func:`choose_cheap` that runs the fewest layers on ``validation`` while its pass@1 stays
    within ``margin`` of the full depth's (0 when none saves a layer that way)."""
    base = validation.correct[:, 0].mean()
    best, fewest = 0.0, np.inf
    for price in np.linspace(0, 1, 101):
        chosen = choose_cheap(validation, proba, float(price), passes, "")
        right = right_answers(validation, chosen.choice) / len(chosen.choice)
        if right >= base - margin and chosen.cost.mean() < fewest - 1e-9:
            best, fewest = float(price), chosen.cost.mean()
    return best


# ------------------------------------------------------------------------------------------------ ceiling, scores
def oracle(matrix: Matrix, name: str = "oracle") -> Selection:
    """The ceiling: for each input the shortest menu program that answers it (the full depth if none does)."""
    order = np.lexsort((np.arange(len(matrix.layers)), matrix.layers))  # shortest first
    choice = np.array([next((int(j) for j in order if row[j]), 0) for row in matrix.correct], dtype=int)
    return Selection(name, choice, matrix.layers[choice].astype(float))


def score(matrix: Matrix, selection: Selection, right: np.ndarray | None = None) -> MethodScore:
    """The selection on ``matrix`` against base greedy; ``right``: whether each chosen program answered, as
    measured on the model (default: read from the matrix)."""
    n = len(matrix.ids)
    if len(selection.choice) != n:
        raise ValueError(f"{selection.name}: {len(selection.choice)} choices for {n} inputs")
    if right is None:
        right = matrix.correct[np.arange(n), selection.choice]
    ratio = float(selection.cost.mean() / matrix.depth) if n else 0.0
    used = len(set(selection.choice.tolist()))
    return score_outcomes(selection.name, right, matrix.correct[:, 0], ratio, used)


def winners(scores: Mapping[str, MethodScore], margin: float) -> dict[str, str]:
    """The two operating points on validation: accuracy mode, the highest pass@1 (ties: fewer layers, then the
    earlier candidate); efficiency mode, the fewest layers with pass@1 within ``margin`` of base greedy."""
    base = scores[BASE].pass1
    accuracy = max(scores, key=lambda k: (scores[k].pass1, -scores[k].layers_ratio))
    ok = [k for k in scores if scores[k].pass1 >= base - margin]
    efficiency = min(ok, key=lambda k: (scores[k].layers_ratio, -scores[k].pass1))
    return {"accuracy": accuracy, "efficiency": efficiency}
