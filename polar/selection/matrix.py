"""A menu's reward matrix: which program of the menu answers which input, with the inputs' features beside it.

A :class:`Matrix` is a ``polar label --menu`` folder as arrays: ``correct[i, j]`` says whether program ``j`` of the
menu answers input ``i`` (program 0 is the full depth), with the inputs' confidence features beside it.
:func:`check_disjoint` refuses matrices that share a question (``polar train --method menu`` holds out whole
questions of one matrix with :func:`polar.training.split.split_matrix`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
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
    # (n, m) the reference answer's (multiple choice: the right choice's) summed log-likelihood under each program;
    # None for folders labeled before likelihoods were recorded
    answer_logprob: np.ndarray | None = None
    # Likelihood scoring: the length-normalised rule's verdicts and answers (``correct`` holds the summed rule's)
    correct_norm: np.ndarray | None = None
    predictions_norm: np.ndarray | None = None
    rule: str = "sum"  # which rule ``correct`` and ``predictions`` hold (see :meth:`with_rule`)

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

        def column(name: str, dtype) -> np.ndarray | None:
            if name not in rewards or rewards[name].isna().any():
                return None
            table = rewards.pivot(index="id", columns="program", values=name)
            return table.loc[inputs["id"], list(programs)].to_numpy(dtype)

        return cls(
            ids=tuple(inputs["id"]),
            levels=inputs["level"].astype(str).to_numpy(),
            programs=programs,
            layers=layers,
            correct=wide.loc[inputs["id"], list(programs)].to_numpy(bool),
            inputs=inputs.reset_index(drop=True),
            predictions=None if said is None else said.loc[inputs["id"], list(programs)].to_numpy(object),
            answer_logprob=column("answer_logprob", float),
            correct_norm=column("correct_norm", bool),
            predictions_norm=column("prediction_norm", object),
        )

    @property
    def rules(self) -> tuple[str, ...]:
        """The answer rules recorded: ``sum`` always; ``norm`` too for a menu scored by likelihood."""
        return ("sum", "norm") if self.correct_norm is not None else ("sum",)

    def with_rule(self, rule: str) -> Matrix:
        """This matrix with ``correct`` and ``predictions`` those of ``rule`` (``sum``: the choice of highest summed
        log-likelihood, or the graded answer line under generation; ``norm``: per character)."""
        if rule == self.rule:
            return self
        if rule not in self.rules:
            raise ValueError(f"no {rule!r} answers in this matrix; it records {', '.join(self.rules)}")
        if rule != "norm" or self.rule != "sum":
            raise ValueError(f"a matrix switches from the sum rule to the norm one, not from {self.rule} to {rule}")
        return replace(
            self, correct=self.correct_norm, predictions=self.predictions_norm, correct_norm=self.correct,
            predictions_norm=self.predictions, rule=rule,
        )  # fmt: skip

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
        if len({p.rule for p in parts}) > 1:
            raise ValueError("the matrices to join answer by different rules")

        def joined(name: str) -> np.ndarray | None:
            arrays = [getattr(p, name) for p in parts]
            return None if any(a is None for a in arrays) else np.concatenate(arrays)

        return cls(
            ids=tuple(ids),
            levels=np.concatenate([p.levels for p in parts]),
            programs=parts[0].programs,
            layers=parts[0].layers,
            correct=np.concatenate([p.correct for p in parts]),
            inputs=pd.concat([p.inputs for p in parts], ignore_index=True),
            predictions=joined("predictions"),
            answer_logprob=joined("answer_logprob"),
            correct_norm=joined("correct_norm"),
            predictions_norm=joined("predictions_norm"),
            rule=parts[0].rule,
        )

    def take(self, rows: np.ndarray) -> Matrix:
        """The matrix of some inputs (a boolean mask or indices, in that order)."""
        rows = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows)

        def part(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[rows]

        return replace(
            self,
            ids=tuple(self.ids[i] for i in rows),
            levels=self.levels[rows],
            correct=self.correct[rows],
            inputs=self.inputs.iloc[rows].reset_index(drop=True),
            predictions=part(self.predictions),
            answer_logprob=part(self.answer_logprob),
            correct_norm=part(self.correct_norm),
            predictions_norm=part(self.predictions_norm),
        )

    def fix_rates(self, samples: int) -> dict:
        """Per try, how often an input the full depth gets wrong is answered right by a menu program (each program
        but the full depth, on average) and by a sample of the base model (its recorded share of right samples;
        under likelihood scoring the expected share of a choice drawn at the menu's temperature)."""
        wrong = ~self.correct[:, 0]
        n = int(wrong.sum())
        program = float(self.correct[wrong, 1:].mean()) if n and self.correct.shape[1] > 1 else 0.0
        sample = float(self.inputs["sample_correct"].to_numpy()[wrong].mean()) if n and samples else None
        return {"base_wrong": n, "menu_program": program, "base_sample": sample, "samples": samples}

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
