"""A grid of prompts x programs whose prompts share a prefix: the prefix runs once per program, not per prompt.

Dense menu labeling runs every program of a menu on every input. The inputs of a level share their few-shot
examples, so their prompts share a long token prefix (the examples) and differ in a short suffix (the
question). :func:`generate_grid` computes the prefix's hidden states and per-visit keys and values once per
distinct prefix of layer visits (:func:`polar.prefix.prefill_nodes`), then runs only the suffixes, walking the
same trie: each node runs once for all suffixes, not once per program that starts with it
(:func:`polar.prefix.prefill_suffixes`; suffixes are left-padded after the prefix, the gap masked, positions
continuing from the prefix). The rows' caches are laid out from the nodes, and decoding is greedy as
:mod:`polar.decoding` does. Each row also gets the log-probability of the tokens it generated and, under the
grid's first program, the top-2 margin and the entropy of the first new token's distribution. Tokens and
log-probabilities come from :meth:`polar.hf.Decoder.pick`, which never holds every row's logits at once.

Rows are the same tokens as each prompt run alone under each program (tests hold them equal on every
architecture and on the bundled SmolLM2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from polar.decoding import CHECK_EVERY, DecodeState, Sampling, compact, decode_step, finish, next_token, record
from polar.hf import SLIDING
from polar.likelihood import Likelihood, check_continuations, score_suffixes, suffix_layout
from polar.plan import Plan
from polar.prefix import common_prefix, prefill_nodes, prefill_suffixes, suffix_nodes
from polar.programs import Program

__all__ = ["COMPACT_AT", "GridRow", "Samples", "common_prefix", "generate_grid"]

# A check drops the finished rows once they are at least this fraction of the grid's rows. Dropping copies
# every kept row's cache into new slots, which a grid has many of (one per layer call of 32 programs): in
# one grid of 8 level-3 inputs x 32 programs, dropping the first 2 of 256 rows took 5.3 s of a 41 s grid,
# the 244 that finish next 0.04 s. Rows of one grid mostly finish together, so waiting loses little.
COMPACT_AT = 0.25


@dataclass(frozen=True)
class GridRow:
    """What one prompt produced under one program."""

    tokens: list[int]  # new tokens, up to and including the stop token
    text: str | None
    logprob: float  # sum of the log-probabilities of ``tokens``
    margin: float | None  # top-1 minus top-2 probability of the first new token's distribution
    entropy: float | None  # its entropy (nats); both for the grid's first program only, else None
    likelihoods: tuple[Likelihood, ...] = ()  # the given continuations' (greedy rows only)


@dataclass(frozen=True)
class Samples:
    """Sampled rows of each prompt under the grid's first program, drawn as
    ``executor.generate([prompt], [program] * count, sampling=replace(sampling, seed=seeds[i]))`` draws them."""

    count: int
    sampling: Sampling
    seeds: Sequence[int]  # one per prompt


@torch.inference_mode()
def generate_grid(
    executor,
    prompts: Sequence[Sequence[int]],
    programs: Sequence[Program],
    max_new_tokens: int,
    stop_token_ids: Sequence[int] = (),
    samples: Samples | None = None,
    continuations: Sequence[Sequence[Sequence[int]]] | None = None,
) -> list[list[GridRow]]:
    """Greedy generation of every prompt under every program; ``out[i][j]`` is prompt ``i`` under program ``j``.

    With ``samples``, ``out[i]`` goes on with ``samples.count`` rows sampled under ``programs[0]``: they share
    the prompt's prefill and the batch with the greedy rows, and each prompt's draws come from its own
    generator, so they do not depend on the other rows.

    With ``continuations`` (per prompt, token ids of texts such as its reference answer), each greedy row also gets
    their teacher-forced log-likelihoods (as :func:`polar.likelihood.score_grid` scores them), from the same prefix
    and question states: only the continuations' own tokens run again.

    Suffixes of different lengths are left-padded after the prefix. A sliding-window layer measures its window
    in cache positions, which a padding gap would stretch, so models with one run each suffix length apart,
    unless every row's cache fits in the window (the window then hides nothing and the gap changes nothing).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: a grid row needs at least one new token")
    dec, device = executor.decoder, executor.device
    menu = executor.plan(programs)
    p = common_prefix(prompts)
    nodes = None
    if p:  # the prefix once per program (each distinct prefix of layer visits once)
        prefix = torch.tensor([list(prompts[0][:p])], device=device)
        _, nodes = prefill_nodes(dec, prefix, torch.ones_like(prefix), menu)
    if continuations is not None:
        check_continuations(prompts, continuations)
    longest = max(len(x) for x in prompts)
    within = longest + max_new_tokens - 1 < (dec.sliding_window or 0)  # windows hide nothing
    if continuations is not None:
        within = within and longest + max(len(c) for conts in continuations for c in conts) <= (dec.sliding_window or 0)
    by_length = SLIDING in menu.kinds and not within
    groups: dict[int, list[int]] = {}
    for i, x in enumerate(prompts):
        groups.setdefault(len(x) - p if by_length else 0, []).append(i)
    out: list[list[GridRow]] = [[] for _ in prompts]
    for members in groups.values():
        drawn = None if samples is None else replace(samples, seeds=[samples.seeds[i] for i in members])
        suffixes = [prompts[i][p:] for i in members]
        conts = None if continuations is None else [continuations[i] for i in members]
        rows = _suffixes(executor, menu, nodes, p, suffixes, max_new_tokens, stop_token_ids, drawn, conts, by_length)
        for i, row in zip(members, rows, strict=True):
            out[i] = row
    return out


def _suffixes(
    executor,
    menu,
    nodes,
    p: int,
    suffixes,
    max_new_tokens: int,
    stop_token_ids,
    samples: Samples | None,
    continuations=None,
    by_length: bool = False,
) -> list[list[GridRow]]:
    """The rows of ``suffixes`` (after the ``p`` prefix tokens whose keys and values per node are ``nodes``)
    under every program, then their samples; each node of the programs' trie runs once for all suffixes. With
    ``continuations``, the greedy rows' likelihoods of them, from the same states."""
    dec, device = executor.decoder, executor.device
    n, m = len(suffixes), len(menu.programs)
    k = samples.count if samples else 0
    owners = [(i, j) for i in range(n) for j in range(m)] + [(i, 0) for i in range(n) for _ in range(k)]
    ids, own, positions = suffix_layout(executor, p, suffixes)  # (n, S), (n, p + S), (n, S)
    capacity = p + ids.shape[1] + max_new_tokens - 1
    plan = Plan.build([menu.programs[j] for _, j in owners], menu.layer_kinds, device)
    states = suffix_nodes(dec, nodes, ids, own, positions, menu)  # each node once, for the rows and the scores
    hidden, cache = prefill_suffixes(
        dec, nodes, ids, own, positions, menu, plan, owners, capacity, executor.slot_pool, states
    )
    scored = None
    if continuations is not None:
        scored = score_suffixes(executor, menu, nodes, own, positions, states, continuations, by_length)
    del states  # the rows' caches hold what decoding needs
    state = _start(plan, cache, ids, own, [i for i, _ in owners], p, capacity, max_new_tokens)
    draws = _Draws(samples, n * m, device) if k else None
    firsts = torch.arange(0, n * m, m, device=device)  # each suffix's row under the first program
    stops = torch.tensor(sorted(executor.eos_token_ids | set(stop_token_ids)) or [-1], device=device)
    tokens, logprobs, (margins, entropies) = _decode(executor, hidden, state, firsts, draws, stops, max_new_tokens)
    out: list[list[GridRow]] = [[] for _ in range(n)]
    for row, (i, j) in enumerate(owners):  # each suffix's program rows, then its samples, in row order
        first = row < n * m and j == 0
        margin, entropy = (margins[i], entropies[i]) if first else (None, None)
        likelihoods = tuple(scored[i][j]) if scored is not None and row < n * m else ()
        out[i].append(GridRow(tokens[row], executor.decode(tokens[row]), logprobs[row], margin, entropy, likelihoods))
    return out


def _start(
    plan: Plan, cache, ids, own, suffix_of: list[int], p: int, capacity: int, max_new_tokens: int
) -> DecodeState:
    """The decoding state of rows whose suffixes are ``suffix_of``, just prefilled: each row attends to the
    prefix and its suffix's real tokens (``own``, (n, p + S)) and goes on from its suffix's last token."""
    device = ids.device
    r, s = len(suffix_of), ids.shape[1]
    of = torch.tensor(suffix_of, device=device)
    mask = torch.zeros((r, capacity), dtype=torch.bool, device=device)
    mask[:, : p + s] = own[of]
    lengths = mask[:, p : p + s].long().sum(-1)  # (r,) real suffix tokens
    return DecodeState(
        plan=plan,
        cache=cache,
        mask=mask,
        positions=p + lengths,
        token=ids[of, -1],
        done=torch.zeros(r, dtype=torch.bool, device=device),
        rows=torch.arange(r, device=device),
        tokens=torch.zeros((r, max_new_tokens), dtype=torch.long, device=device),
        length=p + s,
    )


def _decode(
    executor, hidden, state: DecodeState, firsts, draws: _Draws | None, stops, max_new_tokens: int
) -> tuple[list[list[int]], list[float], tuple[list[float], list[float]]]:
    """Decode ``state``'s rows from their prefill's last ``hidden`` states, greedily except the ``draws``: each
    row's new tokens (up to its stop) and their summed log-probability, and the margins and entropies of the
    first new token's distribution of the rows ``firsts``. The rows' caches go back to the slot pool."""
    dec, pool = executor.decoder, executor.slot_pool
    logprob = torch.zeros(len(state.rows), device=state.rows.device)
    for t in range(max_new_tokens):
        if t:
            hidden = decode_step(dec, state)
        drawn = draws.live(state) if draws is not None else None
        if draws is not None and drawn is None:
            draws = None  # every sample has ended: no more host syncs for them
        keep = ([firsts] if t == 0 else []) + ([drawn.positions] if drawn else [])
        picked = dec.pick(hidden, torch.cat(keep) if keep else None)
        token, picked_logprob = picked.token, picked.logprob
        if t == 0:
            confidence = _confidence(picked.logits[: len(firsts)])
        if drawn:
            draws.draw(drawn, picked.logits[len(picked.logits) - len(drawn.positions) :], token, picked_logprob)
        logprob.index_add_(0, state.rows, torch.where(state.done, 0.0, picked_logprob))  # rows done before add 0
        record(state, token, stops)
        if state.steps % CHECK_EVERY == 0 and t + 1 < max_new_tokens:
            live, n_done = len(state.rows), int(state.done.sum())  # the greedy loop's only host sync
            if n_done == live:
                break
            if n_done >= max(1, math.ceil(COMPACT_AT * live)):
                kept = compact(state)
                pool.give(state.cache)
                state = kept
    pool.give(state.cache)
    tokens, _ = finish(state.tokens, state.steps, stops)
    return tokens, logprob.tolist(), confidence


def _confidence(logits: torch.Tensor) -> tuple[list[float], list[float]]:
    """The top-2 probability margin and the entropy (nats) of each row's next-token distribution (b, V)."""
    probs = torch.softmax(logits, dim=-1)
    top2 = probs.topk(2, dim=-1).values
    entropy = -(probs * torch.log(probs.clamp_min(1e-30))).sum(-1)
    return (top2[:, 0] - top2[:, 1]).tolist(), entropy.tolist()


@dataclass(frozen=True)
class _Live:
    """One step's sampled rows not yet done: their batch positions (k,) and, per suffix, their offsets in it."""

    positions: torch.Tensor
    groups: dict[int, list[int]]


class _Draws:
    """The sampled rows' tokens, step by step: each suffix's rows not yet done, in row order, draw from the
    suffix's own generator (as a batch of only those rows would: their draws do not depend on other rows)."""

    def __init__(self, samples: Samples, first: int, device: torch.device) -> None:
        self.sampling, self.k, self.first = samples.sampling, samples.count, first  # sampled rows: first, first + 1...
        self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in samples.seeds]

    def live(self, state: DecodeState) -> _Live | None:
        """The sampled rows not yet done, in row order; None once there are none."""
        rows, done = state.rows.tolist(), state.done.tolist()  # a host sync per step while samples run
        groups: dict[int, list[int]] = {}
        positions = []
        for b, (row, finished) in enumerate(zip(rows, done, strict=True)):
            if row >= self.first and not finished:
                groups.setdefault((row - self.first) // self.k, []).append(len(positions))
                positions.append(b)
        return _Live(torch.tensor(positions, device=state.rows.device), groups) if positions else None

    def draw(self, live: _Live, logits: torch.Tensor, token: torch.Tensor, logprob: torch.Tensor) -> None:
        """Draw the ``live`` rows' tokens from their logits (k, V) (in ``live.positions``' order) into ``token``,
        and their log-probabilities into ``logprob``: both (b,), greedy's choice for every other row."""
        at = live.positions
        for i, offsets in live.groups.items():
            part = logits[offsets]
            drawn = next_token(part, self.sampling, self.generators[i])
            token[at[offsets]] = drawn
            logprob[at[offsets]] = torch.log_softmax(part, dim=-1).gather(-1, drawn[:, None])[:, 0]
