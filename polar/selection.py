"""Choosing a program per input over a menu reward matrix, and scoring the choice honestly.

A :class:`Matrix` is a ``polar label --menu`` folder as arrays: ``correct[i, j]`` says whether program ``j`` of the
menu answers input ``i`` (program 0 is the full depth), with the inputs' confidence features beside it. A
:class:`Selection` is one program per input and what it cost, in layers run, counting every pass the method
needs: reading the base model's confidence costs its full-depth greedy pass (whose answer is then free), and
samples cost a full-depth pass each.

The baselines are chosen on training and validation matrices only (:func:`best_static`, :func:`best_per_level`,
:func:`tune_gate`); :func:`score` then measures a selection on any split: pass@1 with its Wilson interval, the
exact McNemar test against the full depth, fixes, breaks, and layers / D. :func:`check_disjoint` refuses
matrices that share a question.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from polar.evaluate import mcnemar_p, wilson
from polar.menu import INPUTS, REWARDS
from polar.report import paired_interval
from polar.tasks.splits import normalise

__all__ = [
    "FEATURE_PASSES",
    "Matrix",
    "Selection",
    "best_per_level",
    "best_static",
    "check_disjoint",
    "gated",
    "per_level",
    "score",
    "scores",
    "static",
    "tune_gate",
]

# Full-depth passes each confidence feature needs (beyond nothing): the greedy answer's own statistics
# come with its pass; sample agreement needs the samples too (``samples`` more passes).
FEATURE_PASSES = {"base_logprob": 1, "base_margin": 1, "base_entropy": 1, "sample_agreement": None}


@dataclass(frozen=True)
class Matrix:
    """A menu's rewards on one split."""

    ids: tuple[str, ...]
    levels: np.ndarray  # (n,) level of each input
    programs: tuple[str, ...]  # the menu, the full depth first
    layers: np.ndarray  # (m,) layers each program runs
    correct: np.ndarray  # (n, m) bool
    inputs: pd.DataFrame  # one row per input, in ``ids`` order: question, confidence features
    predictions: np.ndarray | None = None  # (n, m) object: each program's extracted answer (None: no answer)

    @property
    def depth(self) -> int:
        return int(self.layers[0])

    @classmethod
    def load(cls, folder: str | Path) -> Matrix:
        """The matrix of a ``polar label --menu`` folder (its ``rewards.parquet`` and ``inputs.parquet``)."""
        folder = Path(folder)
        missing = [name for name in (REWARDS, INPUTS) if not (folder / name).exists()]
        if missing:
            raise FileNotFoundError(
                f"{folder} has no {' or '.join(missing)}: label it first (`polar label --menu MENU --out {folder}`)"
            )
        rewards, inputs = pd.read_parquet(folder / REWARDS), pd.read_parquet(folder / INPUTS)
        programs = tuple(dict.fromkeys(rewards["program"]))
        wide = rewards.pivot(index="id", columns="program", values="correct")
        said = rewards.pivot(index="id", columns="program", values="prediction") if "prediction" in rewards else None
        if wide.isna().any().any() or set(wide.index) != set(inputs["id"]) or len(rewards) != wide.size:
            raise ValueError(f"{folder / REWARDS}: some inputs lack some programs (not a whole menu run)")
        layers = rewards.groupby("program", sort=False)["layers"].first().loc[list(programs)].to_numpy()
        return cls(
            ids=tuple(inputs["id"]),
            levels=inputs["level"].astype(str).to_numpy(),
            programs=programs,
            layers=layers,
            correct=wide.loc[inputs["id"], list(programs)].to_numpy(bool),
            inputs=inputs.reset_index(drop=True),
            predictions=None if said is None else said.loc[inputs["id"], list(programs)].to_numpy(object),
        )

    @classmethod
    def concat(cls, parts: Sequence[Matrix]) -> Matrix:
        """One matrix of several labeled with one menu (the shards of a split labeled on different days)."""
        if not parts:
            raise ValueError("no matrices to join")
        for part in parts[1:]:
            parts[0].same_menu(part)
        ids = [i for part in parts for i in part.ids]
        if len(set(ids)) != len(ids):
            raise ValueError("the matrices to join share inputs")
        return cls(
            ids=tuple(ids),
            levels=np.concatenate([p.levels for p in parts]),
            programs=parts[0].programs,
            layers=parts[0].layers,
            correct=np.concatenate([p.correct for p in parts]),
            inputs=pd.concat([p.inputs for p in parts], ignore_index=True),
            predictions=None
            if any(p.predictions is None for p in parts)
            else np.concatenate([p.predictions for p in parts]),
        )

    def take(self, rows: np.ndarray) -> Matrix:
        """The matrix of some inputs (a boolean mask or indices, in that order)."""
        rows = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows)
        return Matrix(
            ids=tuple(self.ids[i] for i in rows),
            levels=self.levels[rows],
            programs=self.programs,
            layers=self.layers,
            correct=self.correct[rows],
            inputs=self.inputs.iloc[rows].reset_index(drop=True),
            predictions=None if self.predictions is None else self.predictions[rows],
        )

    def same_menu(self, other: Matrix) -> None:
        if self.programs != other.programs:
            raise ValueError("the matrices were labeled with different menus: label every split with one menu.txt")


def check_disjoint(**splits: Matrix) -> None:
    """Raise when two splits share a question (normalised as the splits are drawn)."""
    seen: dict[str, str] = {}
    for name, matrix in splits.items():
        for question in matrix.inputs["question"]:
            key = normalise(question)
            if key in seen and seen[key] != name:
                raise ValueError(f"the {seen[key]} and {name} matrices share the question {question!r}")
            seen[key] = name


# ------------------------------------------------------------------------------------------------ selections
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


def per_level(matrix: Matrix, chosen: dict[str, int], name: str = "best program per level") -> Selection:
    """The program ``chosen[level]`` for each input (the full depth for a level not in ``chosen``)."""
    choice = np.array([chosen.get(level, 0) for level in matrix.levels])
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


def tune_gate(validation: Matrix, j: int, feature: str) -> float:
    """The threshold of :func:`gated` with the most right answers on ``validation`` (ties: the lower, which
    runs program ``j`` less often); ``-inf`` never runs it."""
    values = np.unique(validation.inputs[feature].to_numpy())
    candidates = [-np.inf, *[float(v) for v in values], np.inf]  # "< v" for each distinct value, and all
    scores = [gated(validation, j, feature, t).choice for t in candidates]
    right = [int(validation.correct[np.arange(len(c)), c].sum()) for c in scores]
    return candidates[int(np.argmax(right))]  # argmax takes the first: the lowest threshold among ties


# ------------------------------------------------------------------------------------------------ scoring
def score(matrix: Matrix, selection: Selection, right: np.ndarray | None = None) -> dict:
    """pass@1 (Wilson 95%), exact McNemar p against base greedy, the difference from it with its exact paired
    interval (:func:`polar.report.paired_interval`), fixes and breaks, layers / D. ``right``: whether each chosen
    program answered, as measured on the model (default: read from the matrix)."""
    n = len(matrix.ids)
    if len(selection.choice) != n:
        raise ValueError(f"{selection.name}: {len(selection.choice)} choices for {n} inputs")
    if right is None:
        right = matrix.correct[np.arange(n), selection.choice]
    right, base = np.asarray(right, bool), matrix.correct[:, 0]
    k = int(right.sum())
    fixes, breaks = int((right & ~base).sum()), int((~right & base).sum())
    return {
        "method": selection.name,
        "inputs": n,
        "correct": k,
        "pass@1": k / n if n else 0.0,
        "ci95": wilson(k, n),
        "p_vs_base": mcnemar_p(list(base), list(right)),
        "diff": (fixes - breaks) / n if n else 0.0,
        "diff_ci95": paired_interval(k, int(base.sum()), {"a_only": fixes, "b_only": breaks}, n),
        "fixes": fixes,
        "breaks": breaks,
        "layers_ratio": float(selection.cost.mean() / matrix.depth) if n else 0.0,
        "programs_used": len(set(selection.choice.tolist())),
    }


def scores(matrix: Matrix, selections: Sequence[Selection]) -> pd.DataFrame:
    """:func:`score` of each selection, one row each."""
    return pd.DataFrame([score(matrix, s) for s in selections])
