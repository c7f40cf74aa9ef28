"""A menu's reward matrix: which program of the menu answers which input, with the inputs' features beside it.

A :class:`Matrix` is a ``polar label --menu`` folder as arrays: ``correct[i, j]`` says whether program ``j`` of the
menu answers input ``i`` (program 0 is the full depth), with the inputs' confidence features beside it.
:func:`check_disjoint` refuses matrices that share a question (``polar train --method menu`` holds out whole
questions of one matrix with :func:`polar.training.split.split_matrix`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from polar.labeling.folder import INPUTS, REWARDS
from polar.tasks.files import read_parquet
from polar.tasks.splits import normalise

__all__ = ["Matrix", "check_disjoint"]


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
        made = "by `polar label --menu`"
        rewards = read_parquet(folder / REWARDS, f"one row per input and program, written {made}")
        inputs = read_parquet(folder / INPUTS, f"one row per input, written {made}")
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
