"""Every candidate selector of the study, fitted on train and tuned on validation, applicable to any split.

The candidates (names are the rows of every table):

- B0 base greedy; B1 the best static program on train; B2 the best program per level; B1' the shortest static
  program within the margin on train; B3 a confidence gate per feature, its threshold tuned on validation;
- M1 gain models (:mod:`polar.selection.gain_model`), logistic and boosted, over several feature sets, in
  accuracy mode and (on features that cost no layer) efficiency mode, each threshold or price tuned on validation;
  in accuracy mode also ``dense``, fitted to the log-likelihood gain where the matrices record likelihoods;
- M2 the PoLar network scored over the menu (:mod:`polar.selection.menu_network`), one checkpoint per mode.

Features that need the model (hidden states, question embeddings) come from a :class:`FeatureCache`, which keeps
each block on disk under a digest of the inputs and prompt, so a re-run (or the test phase) reads them back.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from polar.selection.gain_model import WIDE, Features, GainModel, features, hidden_features, question_features
from polar.selection.gain_model import shared_prefix as free_layers
from polar.selection.matrix import Matrix
from polar.selection.menu_network import MenuNetwork, embed_each
from polar.selection.policies import (
    BASE,
    FEATURE_PASSES,
    Selection,
    best_per_level,
    best_static,
    choose_cheap,
    choose_gain,
    gated,
    per_level,
    shortest_within,
    static,
    tune_gate,
    tune_price,
    tune_threshold,
)
from polar.settings import SelectConfig
from polar.tasks.prompts import PromptSpec

__all__ = ["ACCURACY_SETS", "FREE_SETS", "KINDS", "M2_DENSE_NAME", "M2_NAME", "Candidates", "FeatureCache"]

# M1's feature sets; ``{free}`` is the number of leading layers every menu program shares (free to read).
ACCURACY_SETS = (
    ("level",),
    ("level", "confidence"),
    ("level", "confidence", "agreement"),
    ("level", "hidden:{free}"),
    ("level", "question"),
    ("level", "confidence", "question"),
    ("level", "confidence", "agreement", "hidden:{free}"),
)
FREE_SETS = (("level",), ("level", "hidden:{free}"), ("level", "question"))  # efficiency mode: no extra pass
KINDS = ("logistic", "boosted")
DENSE = "dense"  # accuracy mode only, on matrices with likelihoods
M2_NAME = "M2 {mode} PoLar network over the menu"
M2_DENSE_NAME = "M2 {mode} PoLar network over the menu, likelihood target"


class FeatureCache:
    """Model-computed feature blocks of a matrix's inputs, kept as ``.npy`` files under ``folder``.

    Args:
        backbone: a callable that returns the loaded base model (called only when a block must be computed).
        prompt: the prompt the matrices were labeled with (the hidden states are those of its prompts).
        model: the base model's spec, part of each block's key (one folder may serve several models).
        numerics: the dtype, device and threads the blocks are computed with, part of their key too (a block
            computed otherwise has other floats).
    """

    def __init__(
        self,
        backbone: Callable[[], object],
        prompt: PromptSpec,
        folder: str | Path,
        model: str,
        numerics: dict | None = None,
    ) -> None:
        self.backbone, self.prompt, self.folder, self.model = backbone, prompt, Path(folder), model
        self.numerics = numerics
        self.extraction_ms: dict[str, float] = {}  # block -> ms per input, when computed in this run
        self._loaded: dict[Path, np.ndarray] = {}

    def __call__(self, matrix: Matrix, name: str) -> np.ndarray:
        key = [self.model, self.prompt.id, name, list(matrix.ids)]
        key = json.dumps(key + ([self.numerics] if self.numerics else []), sort_keys=True)
        key = hashlib.sha256(key.encode()).hexdigest()[:16]
        path = self.folder / f"{name.replace(':', '-')}-{key}.npy"
        if path not in self._loaded:
            self._loaded[path] = np.load(path) if path.exists() else self._compute(matrix, name, path)
        return self._loaded[path]

    def _compute(self, matrix: Matrix, name: str, path: Path) -> np.ndarray:
        start = time.perf_counter()
        questions = list(matrix.inputs["question"])
        if name == "question":
            x = question_features(questions)
        else:
            layers = int(name.split(":")[1])
            x = hidden_features(self.backbone(), self.prompt, questions, list(matrix.levels), layers)
        self.extraction_ms[name] = 1000 * (time.perf_counter() - start) / max(len(x), 1)
        self.folder.mkdir(parents=True, exist_ok=True)
        np.save(path, x)
        return x


class Candidates:
    """Every candidate, fitted on ``train`` and tuned on ``validation`` (nothing else is read)."""

    def __init__(
        self, train: Matrix, validation: Matrix, cache: FeatureCache, samples: int, config: SelectConfig
    ) -> None:
        train.same_menu(validation)
        self.cache, self.samples, self.config = cache, samples, config
        self.free = free_layers(train.programs)
        self.overhead_ms: dict[str, float] = {}
        self._vectors: dict[tuple[str, ...], tuple] = {}
        self.b1 = best_static(train)
        self.b2 = best_per_level(train)
        self.short = shortest_within(train, config.margin)
        points = 100 * config.margin
        self.short_name = f"B1' shortest static program within {points:g} point{'s' * (points != 1)} (train)"
        self.gates = {f: tune_gate(validation, self.b1, f) for f in FEATURE_PASSES}
        self.models: dict[str, tuple[str, tuple[str, ...], GainModel]] = {}
        self.tuned: dict[str, float] = {}
        self.skipped: dict[str, str] = {}  # candidates that could not be fitted on this train split, and why
        self.m2: MenuNetwork | None = None
        self.m2_dense: MenuNetwork | None = None
        self.dense = config.dense and train.answer_logprob is not None and validation.answer_logprob is not None
        if len(train.programs) < 2:  # nothing to choose between: only the static and gated baselines apply
            self.skipped["M1"] = self.skipped["M2"] = "the menu holds only the full depth"
            return
        if config.m1:
            self._fit_m1(train, validation)
        from polar.embedder import load_embedder

        self.embedder = load_embedder(config.m2.m2_embedder)
        self.m2 = MenuNetwork(config.m2, train.programs, train.depth, self.embedder.dim)
        try:
            self.m2.fit(train, *self.vectors(train), validation, *self.vectors(validation), config.margin)
        except ValueError as err:  # e.g. no training input has both a right and a wrong program
            self.m2 = None
            self.skipped["M2"] = str(err)
        if self.dense:
            dense = MenuNetwork(config.m2, train.programs, train.depth, self.embedder.dim)
            args = (train, *self.vectors(train), validation, *self.vectors(validation), config.margin)
            self.m2_dense = dense.fit(*args, target="likelihood")

    def _feature_sets(self, sets: tuple[tuple[str, ...], ...]) -> list[tuple[str, ...]]:
        """The sets with ``{free}`` filled in; sets that read hidden states are dropped when no layer is free."""
        out = []
        for names in sets:
            if self.free == 0 and any("{free}" in n for n in names):
                continue  # the menu's programs share no first layer: reading one would cost a pass
            out.append(tuple(n.format(free=self.free) for n in names))
        return out

    def _fit_m1(self, train: Matrix, validation: Matrix) -> None:
        for mode, sets in (("accuracy", ACCURACY_SETS), ("efficiency", FREE_SETS)):
            dense = (DENSE,) if mode == "accuracy" and self.dense else ()
            for names in self._feature_sets(sets):
                for kind in (*KINDS, *dense):
                    key = f"M1 {mode} {kind} [{'+'.join(names)}]"
                    try:
                        model = GainModel(kind).fit(train, self._features(train, names))
                    except ValueError as err:  # a split too small or too uniform for this model
                        self.skipped[key] = str(err)
                        continue
                    fv = self._features(validation, names)
                    proba = model.proba(fv)
                    if mode == "accuracy":
                        tuned = tune_threshold(validation, proba)
                    else:
                        tuned = tune_price(validation, proba, fv.passes, self.config.margin)
                    self.models[key], self.tuned[key] = (mode, names, model), float(tuned)

    def vectors(self, matrix: Matrix):
        """M2's input: each question's token vectors, embedded alone as a served question is."""
        if matrix.ids not in self._vectors:
            self._vectors[matrix.ids] = embed_each(list(matrix.inputs["question"]), self.embedder)
        return self._vectors[matrix.ids]

    def _features(self, matrix: Matrix, names: tuple[str, ...]) -> Features:
        computed = {n: self.cache(matrix, n) for n in names if n.startswith(WIDE)}
        return features(matrix, names, computed, self.samples)

    def select(self, matrix: Matrix) -> dict[str, Selection]:
        """Every candidate's choice on ``matrix``, by name, in table order."""
        out = {
            BASE: static(matrix, 0, BASE),
            "B1 best static program": static(matrix, self.b1, "B1 best static program"),
            "B2 best program per level": per_level(matrix, self.b2, "B2 best program per level"),
        }
        out[self.short_name] = static(matrix, self.short, self.short_name)
        for feature, threshold in self.gates.items():
            name = f"B3 gate on {feature}"
            out[name] = gated(matrix, self.b1, feature, threshold, self.samples, name)
        for key, (mode, names, model) in self.models.items():
            f = self._features(matrix, names)
            start = time.perf_counter()
            pick = choose_gain if mode == "accuracy" else choose_cheap
            out[key] = pick(matrix, model.proba(f), self.tuned[key], f.passes, key)
            self.overhead_ms[key] = 1000 * (time.perf_counter() - start) / max(len(matrix.ids), 1)
        for network, name in ((self.m2, M2_NAME), (self.m2_dense, M2_DENSE_NAME)):
            for mode in ("accuracy", "efficiency") if network is not None else ():
                key = name.format(mode=mode)
                start = time.perf_counter()
                out[key] = network.select(matrix, *self.vectors(matrix), mode, key)
                self.overhead_ms[key] = 1000 * (time.perf_counter() - start) / max(len(matrix.ids), 1)
        return out

    def frozen(self, matrix: Matrix) -> dict:
        """What was chosen, as data (programs by text): the record ``frozen.json`` keeps."""
        return {
            "programs": list(matrix.programs),
            "depth": matrix.depth,
            "b1": matrix.programs[self.b1],
            "b2": {level: matrix.programs[j] for level, j in self.b2.items()},
            "b1_short": matrix.programs[self.short],
            "gates": self.gates,
            "m1": {
                k: {"mode": m, "features": list(n), "kind": model.kind, "tuned": self.tuned[k]}
                for k, (m, n, model) in self.models.items()
            },
            "m2": _network_record(self.m2),
            "m2_dense": _network_record(self.m2_dense),
            "skipped": self.skipped,
        }


def _network_record(network: MenuNetwork | None) -> dict | None:
    if network is None:
        return None
    return {
        "config": network.config.to_dict(),
        "tuned": network.tuned,
        "checkpoints": network.best,
        "history": network.history,
    }
