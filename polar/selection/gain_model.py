"""M1: a learned per-input choice over a menu, from features the model gives before it answers.

A :class:`GainModel` estimates, for every input and every program of the menu, the chance that the program
answers it right, from the input's features; a program's *gain* is that chance minus the full depth's. Its
``dense`` kind learns from the likelihood instead of the 0/1 verdict: the gain in the reference answer's (for
multiple choice the right choice's) summed log-likelihood over the full depth, which every input carries for
every program, not only the few whose verdict differs. The
choice rules are :mod:`polar.selection.policies`' (accuracy mode: :func:`~polar.selection.policies.choose_gain`;
efficiency mode: :func:`~polar.selection.policies.choose_cheap`).

Features (:data:`FEATURES`) and what they cost, which the selection is charged for (see
:mod:`polar.selection.policies`):

- ``level``: the task level, which the prompt already needs; free.
- ``confidence``: the greedy answer's mean log-probability, first-token margin and entropy: the full-depth
  greedy pass (whose answer is then free).
- ``agreement``: the share of a few samples that agree with the greedy answer: that pass and the samples.
- ``hidden:N``: the model's hidden state after its first ``N`` layers, at the prompt's last token and averaged
  over the question's tokens. Free when every program of the menu starts with those ``N`` layers (the chosen
  program goes on from there); ``N = D`` is the greedy pass's.
- ``question``: the question's embedding by a small sentence encoder (MiniLM, :func:`question_features`): no
  layer of the model, a small overhead of its own.

Wide blocks (hidden states, embeddings) are compressed by PCA fitted on the training split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from polar.programs import Program
from polar.selection.matrix import Matrix
from polar.tasks.prompts import PromptSpec
from polar.tasks.schema import stem_of

__all__ = [
    "FEATURES",
    "WIDE",
    "Features",
    "GainModel",
    "features",
    "hidden_features",
    "question_features",
    "shared_prefix",
]

CONFIDENCE = ("base_logprob", "base_margin", "base_entropy")
FEATURES = ("level", "confidence", "agreement", "hidden:N", "question")
WIDE = ("hidden:", "question")  # blocks compressed by PCA


def shared_prefix(programs: Sequence[str]) -> int:
    """How many leading layers (0, 1, 2, ...) every program of the menu runs first, in order."""
    layers = [tuple(Program.parse(p)) for p in programs]
    n = 0
    while all(len(x) > n and x[n] == n for x in layers):
        n += 1
    return n


@torch.inference_mode()
def hidden_features(
    backbone, prompt: PromptSpec, questions: Sequence[str], levels: Sequence[str], layers: int, batch: int = 16
) -> np.ndarray:
    """(n, 2C) hidden states after the first ``layers`` layers of the full depth, before the final norm: the
    prompt's last token, then the mean over the question's tokens (those after the level's few-shot prefix).
    Under a cloze prompt the question is asked without its options, as the menu asked it."""
    tok, executor = backbone.tokenizer, backbone.executor
    if not 0 < layers <= executor.depth:
        raise ValueError(f"hidden:{layers}: the model has {executor.depth} layers; write hidden:N with 0 < N <= D")
    plan = executor.plan([list(range(layers))])
    shared_by_level = {level: prompt.encode("", level, tok) for level in set(levels)}  # the few-shot part
    if prompt.format == "cloze":  # the prompt the menu ran: the question without its options
        questions = [stem_of(q) for q in questions]
    out = []
    for i in range(0, len(questions), batch):
        prompts, spans = [], []
        for question, level in zip(questions[i : i + batch], levels[i : i + batch], strict=True):
            ids = prompt.encode(question, level, tok)
            shared = shared_by_level[level]
            k = next((t for t, (a, b) in enumerate(zip(ids, shared, strict=False)) if a != b), len(shared))
            prompts.append(ids)
            spans.append(max(len(ids) - k, 1))
        ids, mask = executor.pad_left(prompts)
        hidden = executor.hidden_states(ids, mask, plan).float()  # (B, T, C), left-padded
        last = hidden[:, -1]
        mean = torch.stack([hidden[r, -s:].mean(0) for r, s in enumerate(spans)])
        out.append(torch.cat([last, mean], dim=-1).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def question_features(questions: Sequence[str], spec: str = "minilm") -> np.ndarray:
    """(n, E) mean-pooled token vectors of a frozen sentence encoder (:func:`polar.embedder.load_embedder`)."""
    from polar.embedder import load_embedder

    embedder = load_embedder(spec)
    x, mask = embedder(list(questions))
    pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    return pooled.numpy().astype(np.float32)


@dataclass(frozen=True)
class Features:
    """Feature blocks of one split (one per name) and the full-depth passes they need before a program is chosen."""

    names: tuple[str, ...]  # the feature specs, e.g. ("level", "confidence")
    blocks: tuple[np.ndarray, ...]  # (n, f_k) each; ``level``'s is (n, 1) of level names
    passes: int  # full-depth passes: 0 (free), 1 (the greedy pass), 1 + samples


def features(
    matrix: Matrix, names: Sequence[str], computed: dict[str, np.ndarray] | None = None, samples: int = 4
) -> Features:
    """The columns of ``names`` for ``matrix``; ``computed[name]`` holds the blocks that need a model
    (``hidden:N``: :func:`hidden_features` of its inputs, ``question``: :func:`question_features`)."""
    computed = computed or {}
    blocks, passes = [], 0
    free = shared_prefix(matrix.programs)
    for name in names:
        if name == "level":
            blocks.append(np.asarray(matrix.levels, dtype=str)[:, None])  # one-hot in GainModel, over train's levels
        elif name == "confidence":
            blocks.append(matrix.inputs[list(CONFIDENCE)].to_numpy(np.float32))
            passes = max(passes, 1)
        elif name == "agreement":
            blocks.append(matrix.inputs[["sample_agreement"]].to_numpy(np.float32))
            passes = max(passes, 1 + samples)
        elif (name.startswith("hidden:") and name[7:].isdigit()) or name == "question":
            if name not in computed:
                how = f"hidden_features(..., layers={name[7:]})" if name != "question" else "question_features"
                raise ValueError(f"feature {name}: compute {how} for this split first")
            if name != "question":
                n = int(name[7:])
                if n > free and n != matrix.depth:
                    raise ValueError(
                        f"feature {name}: the menu shares only its first {free} layers; use N <= {free} or D"
                    )
                passes = max(passes, 0 if n <= free else 1)
            if len(computed[name]) != len(matrix.ids):
                raise ValueError(f"feature {name}: {len(computed[name])} rows for {len(matrix.ids)} inputs")
            blocks.append(computed[name])
        else:
            raise ValueError(f"no feature {name!r}; the features are {', '.join(FEATURES)}")
    return Features(tuple(names), tuple(blocks), passes)


@dataclass
class GainModel:
    """P(program j answers input i right) from the input's features, for every program of a menu.

    ``kind="logistic"``: one L2 logistic regression per program on standardised features; ``"boosted"``: one
    gradient-boosted tree model over (features, program), which can learn which inputs a program suits;
    ``"dense"``: one ridge regression per program of the log-likelihood gain over the full depth (its estimates are
    gains in nats, not chances: only the accuracy mode's threshold, tuned on validation, reads them).
    Wide blocks (hidden states, embeddings) are compressed to ``components`` dimensions by PCA fitted on the
    training split.
    """

    kind: str = "logistic"
    components: int = 16
    c: float = 0.1
    seed: int = 0
    m: int = field(default=0, init=False)
    _pca: list = field(default_factory=list, repr=False)
    _levels: tuple[str, ...] = field(default=(), repr=False)  # the training split's levels, in order
    _models: list = field(default_factory=list, repr=False)

    def _design(self, f: Features, fit: bool) -> np.ndarray:
        if fit:
            self._pca = [
                PCA(min(self.components, *block.shape), random_state=self.seed).fit(block)
                for name, block in zip(f.names, f.blocks, strict=True)
                if name.startswith(WIDE)
            ]
            if "level" in f.names:
                self._levels = tuple(sorted(set(f.blocks[f.names.index("level")][:, 0])))
        cols, pcas = [], iter(self._pca)
        for name, block in zip(f.names, f.blocks, strict=True):
            if name == "level":  # a level not seen in training gets no column of its own (all zeros)
                cols.append(np.stack([block[:, 0] == level for level in self._levels], 1).astype(np.float32))
            else:
                cols.append(next(pcas).transform(block) if name.startswith(WIDE) else block)
        return np.concatenate(cols, 1)

    def fit(self, train: Matrix, f: Features) -> GainModel:
        x = self._design(f, fit=True)
        m = len(train.programs)
        self._models = []
        if self.kind == "logistic":
            for j in range(m):
                y = train.correct[:, j]
                if y.all() or not y.any():
                    self._models.append(float(y.mean()))
                    continue
                model = make_pipeline(StandardScaler(), LogisticRegression(C=self.c, max_iter=2000))
                self._models.append(model.fit(x, y))
        elif self.kind == "dense":
            if train.answer_logprob is None:
                raise ValueError("a dense gain model needs the answer's likelihoods (label with this polar's menus)")
            gain = train.answer_logprob - train.answer_logprob[:, :1]
            self._models = [0.0] + [
                make_pipeline(StandardScaler(), Ridge(alpha=1.0 / self.c)).fit(x, gain[:, j]) for j in range(1, m)
            ]
        elif self.kind == "boosted":
            rows = np.concatenate([np.repeat(x, m, 0), np.tile(np.arange(m), len(x))[:, None]], 1)
            model = HistGradientBoostingClassifier(
                max_iter=200,
                learning_rate=0.05,
                max_leaf_nodes=15,
                l2_regularization=1.0,
                categorical_features=[rows.shape[1] - 1],
                random_state=self.seed,
            )
            self._models = [model.fit(rows, train.correct.reshape(-1))]
        else:
            raise ValueError(f"no gain model {self.kind!r}: logistic, boosted or dense")
        self.m = m
        return self

    def proba(self, f: Features) -> np.ndarray:
        """(n, m) estimated chance that each program answers each input right."""
        x = self._design(f, fit=False)
        if self.kind == "boosted":
            rows = np.concatenate([np.repeat(x, self.m, 0), np.tile(np.arange(self.m), len(x))[:, None]], 1)
            return self._models[0].predict_proba(rows)[:, 1].reshape(len(x), self.m)
        cols = [
            np.full(len(x), model)
            if isinstance(model, float)
            else (model.predict(x) if self.kind == "dense" else model.predict_proba(x)[:, 1])
            for model in self._models
        ]
        return np.stack(cols, 1)
