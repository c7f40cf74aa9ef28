"""Teacher-forced log-likelihoods of continuations, for prompts sharing a prefix x programs, in one grid.

Dense menus score every program on every input. Where :mod:`polar.grid` generates each row's answer, this
module scores given continuations: the reference answer after the prompt, or each choice of a multiple-choice
question. Three levels share their states:

1. the prompts' common prefix (the few-shot block) runs once per node of the programs' trie
   (:func:`polar.prefix.prefill_nodes`; pass ``nodes`` to reuse a grid's);
2. each prompt's own suffix (the question) runs once per node for all prompts
   (:func:`polar.prefix.suffix_nodes`), giving the log-probability of every continuation's first token;
3. the continuations' other tokens run once per node after their prompt's states, all continuations of all
   prompts in one batch, so a question of ten choices costs its own tokens once, not ten times.

Rows of different lengths are left-padded (the gap masked, positions continuing), except on models with
sliding-window layers whose window a gap could stretch: there rows of one length run together. Tests hold
every score equal to :meth:`polar.executor.Executor.score` of the prompt and continuation alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from polar.hf import SLIDING
from polar.prefix import Prefix, common_prefix, prefill_nodes, suffix_nodes
from polar.programs import Program

__all__ = [
    "ROWS_PER_BATCH",
    "RULES",
    "Likelihood",
    "best_choice",
    "check_continuations",
    "score_grid",
    "score_suffixes",
    "suffix_layout",
]

# How a multiple-choice answer is read from the choices' likelihoods: ``sum`` the highest summed log-likelihood,
# ``norm`` the highest per character of the choice's text (lm-evaluation-harness's acc_norm).
RULES = ("sum", "norm")

ROWS_PER_BATCH = 64  # continuations run together in level 3 (memory: each carries its prompt's keys per node)
_POSITIONS_PER_HEAD = 64  # positions whose whole-vocabulary logits exist at once


@dataclass(frozen=True)
class Likelihood:
    """One continuation's teacher-forced log-likelihood after its prompt, under one program."""

    logprob: float  # sum over the continuation's tokens
    tokens: int  # the continuation's tokens

    @property
    def per_token(self) -> float:
        return self.logprob / self.tokens


def best_choice(likelihoods: Sequence[Likelihood | float], texts: Sequence[str], rule: str = "sum") -> int:
    """The index of the choice ``rule`` picks from the choices' likelihoods (``texts``: the scored texts; ties: the
    first)."""
    if rule not in RULES:
        raise ValueError(f"answer rule must be one of {RULES}, got {rule!r}")
    sums = [x.logprob if isinstance(x, Likelihood) else float(x) for x in likelihoods]
    values = sums if rule == "sum" else [v / max(len(t), 1) for v, t in zip(sums, texts, strict=True)]
    return max(range(len(values)), key=lambda k: (values[k], -k))


@torch.inference_mode()
def score_grid(
    executor,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[Sequence[int]]],
    programs: Sequence[Program],
    nodes: dict[Prefix, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> list[list[list[Likelihood]]]:
    """``out[i][j][c]``: continuation ``c`` of prompt ``i`` under program ``j``.

    Args:
        executor: the base model's :class:`~polar.executor.Executor`.
        prompts: token ids of each prompt.
        continuations: per prompt, the token ids of each of its continuations (at least one, none empty).
        programs: the programs (one trie).
        nodes: the keys and values per node of the prompts' common prefix, when a grid already has them
            (:func:`polar.prefix.prefill_nodes` over ``prompts[0][:common_prefix(prompts)]``).

    Raises:
        ValueError: a prompt without continuations, or an empty continuation.
    """
    check_continuations(prompts, continuations)
    dec, device = executor.decoder, executor.device
    menu = executor.plan(programs)
    p = common_prefix(prompts)
    if p and nodes is None:
        prefix = torch.tensor([list(prompts[0][:p])], device=device)
        _, nodes = prefill_nodes(dec, prefix, torch.ones_like(prefix), menu)
    longest = max(len(x) for x in prompts) + max(len(c) for conts in continuations for c in conts)
    by_length = SLIDING in menu.kinds and longest > (dec.sliding_window or 0)  # a gap would stretch a window
    groups: dict[int, list[int]] = {}
    for i, x in enumerate(prompts):
        groups.setdefault(len(x) - p if by_length else 0, []).append(i)
    out: list[list[list[Likelihood]]] = [[] for _ in prompts]
    for members in groups.values():
        scores = _group(executor, menu, nodes if p else None, p, [prompts[i][p:] for i in members],
                        [continuations[i] for i in members], by_length)  # fmt: skip
        for i, row in zip(members, scores, strict=True):
            out[i] = row
    return out


def check_continuations(prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[Sequence[int]]]) -> None:
    """Raise ValueError unless every prompt has continuations, each of at least one token."""
    if len(continuations) != len(prompts):
        raise ValueError(f"{len(continuations)} continuation lists for {len(prompts)} prompts")
    if any(not conts for conts in continuations) or any(not c for conts in continuations for c in conts):
        raise ValueError("every prompt needs at least one continuation, and a continuation at least one token")


def _group(executor, menu, nodes, p: int, suffixes, continuations, by_length: bool) -> list[list[list[Likelihood]]]:
    """Levels 2 and 3 for the prompt ``suffixes`` (after ``p`` shared prefix tokens, whose states are ``nodes``)."""
    ids, own, positions = suffix_layout(executor, p, suffixes)
    states = suffix_nodes(executor.decoder, nodes, ids, own, positions, menu)  # level 2
    return score_suffixes(executor, menu, nodes, own, positions, states, continuations, by_length)


def suffix_layout(executor, p: int, suffixes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``suffixes`` left-padded (n, S), the mask over prefix and suffixes (n, p + S) and the suffix tokens'
    positions (n, S), continuing from the ``p`` prefix tokens."""
    ids, suffix_mask = executor.pad_left([list(x) for x in suffixes])
    own = torch.ones((ids.shape[0], p + ids.shape[1]), dtype=torch.bool, device=ids.device)
    own[:, p:] = suffix_mask.bool()
    positions = (p + suffix_mask.long().cumsum(-1) - 1).clamp(min=p)
    return ids, own, positions


def score_suffixes(
    executor, menu, nodes, own, positions, states, continuations, by_length: bool
) -> list[list[list[Likelihood]]]:
    """``out[i][j][c]`` from the suffixes' states per node (``states``: :func:`polar.prefix.suffix_nodes` over the
    layout of :func:`suffix_layout`), as a generation grid already has them: each continuation's first token from
    its prompt's last position, the others in level 3 (rows of one length together if ``by_length``)."""
    dec = executor.decoder
    finals, index, keys, values = states
    programs = [q.layers for q in menu.programs]
    logprob = {(i, c, j): 0.0 for i, conts in enumerate(continuations) for c in range(len(conts))
               for j in range(len(programs))}  # fmt: skip
    for j, q in enumerate(programs):  # each continuation's first token, from the prompt's last position
        first = _log_softmax(dec, finals[q])  # (n, V)
        for i, conts in enumerate(continuations):
            for c, cont in enumerate(conts):
                logprob[i, c, j] += float(first[i, cont[0]])
    rest = [(i, c) for i, conts in enumerate(continuations) for c, cont in enumerate(conts) if len(cont) > 1]
    batches: dict[int, list[tuple[int, int]]] = {}
    for i, c in rest:
        batches.setdefault(len(continuations[i][c]) if by_length else 0, []).append((i, c))
    for rows in batches.values():
        for start in range(0, len(rows), ROWS_PER_BATCH):
            part = rows[start : start + ROWS_PER_BATCH]
            _continue(executor, menu, nodes, own, positions[:, -1], index, keys, values, continuations, part, logprob)
    return [
        [[Likelihood(logprob[i, c, j], len(cont)) for c, cont in enumerate(conts)] for j in range(len(programs))]
        for i, conts in enumerate(continuations)
    ]


def _continue(executor, menu, nodes, own, last, index, keys, values, continuations, rows, logprob) -> None:
    """Level 3: the tokens after the first of the continuations ``rows`` ((prompt, continuation) pairs), each after
    its prompt's keys and values per node; adds their log-probabilities into ``logprob``."""
    dec, device = executor.decoder, own.device
    n = own.shape[0]
    owner = torch.tensor([i for i, _ in rows], device=device)
    conts = [continuations[i][c] for i, c in rows]
    ids, mask = executor.pad_left([cont[:-1] for cont in conts])  # (r, L): each token predicts the next
    state_mask = torch.cat([own[owner], mask.bool()], dim=1)
    positions = last[owner, None] + mask.cumsum(-1)  # the prompt's last position, then on
    prefix = _PromptStates(index, keys, values, owner, n, nodes)
    hidden, _, _, _ = suffix_nodes(dec, prefix, ids, state_mask, positions, menu, last=False)
    width = ids.shape[1]
    where = [(r, width - len(cont) + 1 + t, cont[t + 1]) for r, cont in enumerate(conts) for t in range(len(cont) - 1)]
    at_rows = torch.tensor([r for r, _, _ in where], device=device)
    at_cols = torch.tensor([col for _, col, _ in where], device=device)
    targets = torch.tensor([tok for _, _, tok in where], device=device)
    for j, q in enumerate(menu.programs):
        picked = hidden[q.layers][at_rows, at_cols]  # (positions, C)
        logp = torch.cat(
            [
                _log_softmax(dec, picked[k : k + _POSITIONS_PER_HEAD]).gather(
                    -1, targets[k : k + _POSITIONS_PER_HEAD, None]
                )[:, 0]
                for k in range(0, len(targets), _POSITIONS_PER_HEAD)
            ]
        ).tolist()
        for (r, _, _), value in zip(where, logp, strict=True):
            i, c = rows[r]
            logprob[i, c, j] += value


class _PromptStates(Mapping):
    """Each node's keys and values of the prompts before the continuations ``owner`` (r,): the shared prefix's, if
    any, then the prompt's own, (r, heads, P + S, d). Built when the trie walk reaches the node and dropped after:
    holding every node's at once costs nodes x r x (P + S) positions (gigabytes for long few-shot prompts)."""

    def __init__(self, index, keys, values, owner, n: int, nodes) -> None:
        self._index, self._keys, self._values, self._owner, self._n, self._nodes = index, keys, values, owner, n, nodes

    def __getitem__(self, pre: Prefix) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self._index[pre] * self._n + self._owner
        k, v = self._keys[rows], self._values[rows]  # the prompt's own, (r, heads, S, d)
        if self._nodes:
            shared_k, shared_v = self._nodes[pre]
            k = torch.cat([shared_k.expand(len(rows), -1, -1, -1), k], dim=2)
            v = torch.cat([shared_v.expand(len(rows), -1, -1, -1), v], dim=2)
        return k, v

    def __iter__(self):
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


def _log_softmax(dec, hidden: torch.Tensor) -> torch.Tensor:
    """(b, C) hidden states -> (b, V) log-probabilities of the next token."""
    return torch.log_softmax(dec.logits(hidden[:, None])[:, 0], dim=-1)
