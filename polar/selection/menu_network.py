"""M2: the PoLar network scored over a menu, trained on a reward matrix with its failed programs as negatives.

The network of :mod:`polar.predictor` gives every compact program a log-probability
(:func:`polar.predictor.program_logprob`). Here it is not decoded: it scores the programs of a menu, and a
softmax over the menu says how much it prefers each one for the input. Training fits that softmax to the
matrix: for every training input where some menu programs answer right and some do not, the loss is minus
the log of the probability the menu softmax puts on the right ones (every wrong program of the row is a
negative). Rows where every program is right, or none is, say nothing about the choice and are left out.

It trains for a fixed number of steps (thousands, not a few epochs) and keeps, for each operating point,
the checkpoint whose *decision* is best on validation: the most right answers with its gain threshold tuned
there (accuracy mode), and the fewest layers within ``margin`` of base greedy with its price tuned there
(efficiency mode). Choices then go through :func:`polar.selection.policies.choose_gain` / ``choose_cheap`` with
the softmax in place of the gain model's probabilities. Its settings are :class:`polar.settings.MenuNetworkConfig`;
``polar train --method menu`` fits it through :mod:`polar.training.menu`. The network reads only the question's text
(a frozen sentence encoder), so it runs no layer of the base model: every layer it costs is the chosen program's.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from polar.predictor import PredictorConfig, ProgramPredictor, menu_softmax, program_logprob, program_targets
from polar.programs import Program
from polar.selection.matrix import Matrix
from polar.selection.policies import choose_cheap, choose_gain, right_answers, static, tune_price, tune_threshold
from polar.settings import MenuNetworkConfig

__all__ = ["TARGETS", "MenuNetwork", "embed_each", "menu_loss", "soft_menu_loss"]

# What M2 is fitted to: ``verdict``, the right programs of each row (the 0/1 reward); ``likelihood``, a soft target
# over the menu from each program's gain in the reference answer's log-likelihood over the full depth (a softmax
# at temperature LIKELIHOOD_TAU nats), which every row carries.
TARGETS = ("verdict", "likelihood")
LIKELIHOOD_TAU = 1.0


def embed_each(questions: Sequence[str], embedder) -> tuple[torch.Tensor, torch.Tensor]:
    """Token vectors (n, T, E) and mask (n, T) with each question embedded alone (as a served question is),
    then padded to one width: padding changes neither the encoder's vectors nor the network's output."""
    parts = [embedder([q]) for q in tqdm(questions, desc="embed questions", unit="q", leave=False)]
    width = max(x.shape[1] for x, _ in parts)
    x = torch.cat([torch.nn.functional.pad(x, (0, 0, 0, width - x.shape[1])) for x, _ in parts])
    mask = torch.cat([torch.nn.functional.pad(m, (0, width - m.shape[1])) for _, m in parts])
    return x, mask


def menu_loss(scores: torch.Tensor, correct: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
    """Minus the log of the menu-softmax probability of the right programs, averaged over rows.

    Args:
        scores: (B, M) log-probabilities of the menu's programs; correct: (B, M) bool;
        usable: (M,) bool, the programs the network can emit (the others take no part).
    """
    s = scores.masked_fill(~usable, -math.inf)
    right = s.masked_fill(~correct, -math.inf)
    return (torch.logsumexp(s, 1) - torch.logsumexp(right, 1)).mean()


def soft_menu_loss(scores: torch.Tensor, target: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the menu softmax against a target distribution over the usable programs, averaged over rows.

    Args:
        scores: (B, M) log-probabilities of the menu's programs; target: (B, M), rows summing to 1 over ``usable``.
    """
    s = torch.log_softmax(scores.masked_fill(~usable, -math.inf), 1)
    return -(target * s.masked_fill(~usable, 0.0)).sum(1).mean()


def likelihood_target(matrix: Matrix, usable: torch.Tensor) -> torch.Tensor:
    """(n, M) the softmax over the usable programs of their log-likelihood gains over the full depth."""
    if matrix.answer_logprob is None:
        raise ValueError("a likelihood target needs the answer's likelihoods (label with this polar's menus)")
    gain = torch.from_numpy(matrix.answer_logprob - matrix.answer_logprob[:, :1]).float() / LIKELIHOOD_TAU
    return torch.softmax(gain.masked_fill(~usable, -math.inf), 1)


@dataclass
class MenuNetwork:
    """The network, the menu's compact forms, and one checkpoint per operating point."""

    config: MenuNetworkConfig
    programs: tuple[str, ...]
    depth: int
    embed_dim: int
    states: dict[str, dict] = field(default_factory=dict)  # mode -> state_dict
    # mode -> threshold (accuracy) or price (efficiency; None: no checkpoint within the margin, the full depth)
    tuned: dict[str, float | None] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.boundaries, self.ops, self.usable = program_targets(self.programs, self.depth)
        if Program.parse(self.programs[0]) != Program.identity(self.depth):
            raise ValueError(
                f"the menu's first program must be the full depth (0-{self.depth - 1}), as menu.txt has it"
            )
        torch.manual_seed(self.config.m2_seed)
        c = self.config
        self.net = ProgramPredictor(
            PredictorConfig(
                self.depth,
                self.embed_dim,
                c.m2_d_model,
                ff=c.m2_ff,
                encoder_layers=c.m2_encoder_layers,
                dropout=c.m2_dropout,
            )
        )

    @torch.no_grad()
    def proba(self, x: torch.Tensor, mask: torch.Tensor, mode: str | None = None) -> np.ndarray:
        """(n, M) the menu softmax of each input (programs without a compact form get 0), each question scored
        alone without its padding, as it is served. ``mode`` loads that operating point's checkpoint first."""
        if mode is not None:
            self.net.load_state_dict(self.states[mode])
        self.net.eval()
        out = []
        for xi, mi in zip(x, mask, strict=True):
            width = int(mi.sum())
            b, o = self.net(xi[None, :width], mi[None, :width])
            out.append(menu_softmax(b, o, (self.boundaries, self.ops, self.usable)))
        return torch.cat(out).double().numpy()

    def fit(
        self,
        train: Matrix,
        x: torch.Tensor,
        mask: torch.Tensor,
        validation: Matrix,
        xv,
        mv,
        margin: float,
        target: str = "verdict",
    ) -> MenuNetwork:
        """Train on ``train`` (its question vectors ``x``, ``mask``) towards ``target`` (:data:`TARGETS`), choosing
        checkpoints on ``validation`` by accuracy either way; efficiency mode keeps validation pass@1 within
        ``margin`` of base greedy."""
        if tuple(train.programs) != self.programs or tuple(validation.programs) != self.programs:
            raise ValueError("the matrices were labeled with another menu than the network's")
        if target not in TARGETS:
            raise ValueError(f"M2's target must be one of {TARGETS}, got {target!r}")
        c = self.config
        correct = torch.from_numpy(train.correct.copy())
        usable = self.usable
        if target == "likelihood":  # every row says something: the gains differ even where the verdicts agree
            soft = likelihood_target(train, usable)
            rows = torch.arange(len(correct))
        else:
            informative = (correct & usable).any(1) & (~correct & usable).any(1)
            rows = informative.nonzero()[:, 0]
        if len(rows) == 0:
            raise ValueError("no training input has both a right and a wrong menu program: nothing to learn")
        gen = torch.Generator().manual_seed(c.m2_seed)
        optim = torch.optim.AdamW(self.net.parameters(), lr=c.m2_lr, weight_decay=c.m2_weight_decay)
        warm = min(100, c.m2_steps // 10)
        sched = torch.optim.lr_scheduler.LambdaLR(
            optim,
            lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (c.m2_steps - warm))),
        )
        best = {"accuracy": (-1, 0), "efficiency": (math.inf, 0)}
        base = validation.correct[:, 0].mean()
        bar = tqdm(range(1, c.m2_steps + 1), desc="train M2", unit="step")
        for step in bar:
            self.net.train()
            idx = rows[torch.randint(len(rows), (min(c.m2_batch, len(rows)),), generator=gen)]
            b, o = self.net(x[idx], mask[idx])
            scores = program_logprob(b, o, self.boundaries, self.ops)
            if target == "likelihood":
                loss = soft_menu_loss(scores, soft[idx], usable)
            else:
                loss = menu_loss(scores, correct[idx], usable)
            optim.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
            optim.step()
            sched.step()
            if step % c.m2_eval_every and step != c.m2_steps:
                continue
            p = self.proba(xv, mv)
            threshold = tune_threshold(validation, p)
            right = right_answers(validation, choose_gain(validation, p, threshold, 0, "").choice)
            price = tune_price(validation, p, 0, margin)
            cheap = choose_cheap(validation, p, price, 0, "")
            layers = float(cheap.cost.mean())
            within = right_answers(validation, cheap.choice) / len(cheap.choice) >= base - margin
            self.history.append(
                {"step": step, "loss": loss.item(), "val_right": right, "threshold": threshold, "val_layers": layers}
            )
            bar.set_postfix(loss=f"{loss.item():.3f}", val_right=right, val_layers=f"{layers:.1f}")
            if right > best["accuracy"][0]:  # ties: the earlier step
                best["accuracy"] = (right, step)
                self.states["accuracy"], self.tuned["accuracy"] = copy.deepcopy(self.net.state_dict()), threshold
            if within and layers < best["efficiency"][0] - 1e-9:
                best["efficiency"] = (layers, step)
                self.states["efficiency"], self.tuned["efficiency"] = copy.deepcopy(self.net.state_dict()), price
        if "efficiency" not in self.states:  # no checkpoint stays within the margin: keep the full depth
            self.tuned["efficiency"] = None
        self.best = {mode: {"step": s, "value": v} for mode, (v, s) in best.items()}
        return self

    def predictor(self, mode: str = "accuracy", meta: dict | None = None) -> ProgramPredictor:
        """The servable predictor of ``mode`` (accuracy: the gain threshold): this network at that checkpoint,
        with the menu in its config, so that :func:`polar.predictor.predict` makes exactly :meth:`select`'s
        choice (efficiency mode's price is not a predictor setting)."""
        if mode != "accuracy":
            raise ValueError("only the accuracy mode's choice is a predictor (a gain threshold over the full depth)")
        config = dataclasses.replace(
            self.net.config, menu=self.programs, menu_threshold=self.tuned[mode], dropout=0.0, meta=meta or {}
        )
        model = ProgramPredictor(config)
        model.load_state_dict(self.states[mode])
        return model.eval()

    def select(self, matrix: Matrix, x: torch.Tensor, mask: torch.Tensor, mode: str, name: str):
        """The :class:`polar.selection.policies.Selection` of ``mode`` with its checkpoint and tuned setting."""
        if self.tuned[mode] is None:
            return static(matrix, 0, name)
        p = self.proba(x, mask, mode)
        pick = choose_gain if mode == "accuracy" else choose_cheap
        return pick(matrix, p, self.tuned[mode], 0, name)
