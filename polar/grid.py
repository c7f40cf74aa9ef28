"""A grid of prompts x programs whose prompts share a prefix: the prefix runs once per program, not per prompt.

Dense menu labeling runs every program of a menu on every input. The inputs of a level share their few-shot
examples, so their prompts share a long token prefix (the examples) and differ in a short suffix (the
question). :func:`generate_grid` computes the prefix's hidden states and per-visit keys and values under each
program once (each distinct prefix of layer visits once, :func:`polar.prefix.prefill_shared`), lays them into
every row of that program, runs only the suffixes (left-padded after the prefix: the gap is masked, positions
continue from the prefix), then decodes greedily as :mod:`polar.decoding` does. Each row also gets the
log-probability of the tokens it generated and, at its first new token, the top-2 margin and the entropy of the
next-token distribution.

Rows are the same tokens as each prompt run alone under each program (tests hold them equal on every
architecture and on the bundled SmolLM2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from polar.decoding import CHECK_EVERY, DecodeState, compact, decode_step, finish, record, run_plan
from polar.hf import SLIDING, ProgramCache
from polar.prefix import prefill_shared
from polar.programs import Program

__all__ = ["GridRow", "common_prefix", "generate_grid"]


@dataclass(frozen=True)
class GridRow:
    """What one prompt produced under one program."""

    tokens: list[int]  # new tokens, up to and including the stop token
    text: str | None
    logprob: float  # sum of the log-probabilities of ``tokens``
    margin: float  # top-1 minus top-2 probability of the first new token's distribution
    entropy: float  # its entropy (nats)


def common_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens that every prompt starts with, leaving each prompt at least one token of its own."""
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for i in range(n):
        if any(p[i] != first[i] for p in prompts):
            return i
    return max(n, 0)


@torch.inference_mode()
def generate_grid(
    executor,
    prompts: Sequence[Sequence[int]],
    programs: Sequence[Program],
    max_new_tokens: int,
    stop_token_ids: Sequence[int] = (),
) -> list[list[GridRow]]:
    """Greedy generation of every prompt under every program; ``out[i][j]`` is prompt ``i`` under program ``j``.

    Suffixes of different lengths are left-padded after the prefix. A sliding-window layer measures its window
    in cache positions, which a padding gap would stretch, so models with one run each suffix length apart.
    """
    dec, device = executor.decoder, executor.device
    menu = executor.plan(programs)
    p = common_prefix(prompts)
    prefix_cache = None
    if p:  # the prefix once per program (each distinct prefix of layer visits once)
        prefix = torch.tensor([list(prompts[0][:p])], device=device)
        _, prefix_cache = prefill_shared(dec, prefix, torch.ones_like(prefix), menu)
    groups: dict[int, list[int]] = {}
    for i, x in enumerate(prompts):
        groups.setdefault(len(x) - p if SLIDING in menu.kinds else 0, []).append(i)
    out: list[list[GridRow]] = [[] for _ in prompts]
    for members in groups.values():
        rows = _suffixes(
            executor, menu, prefix_cache, p, [prompts[i][p:] for i in members], max_new_tokens, stop_token_ids
        )
        for i, row in zip(members, rows, strict=True):
            out[i] = row
    return out


def _suffixes(
    executor, menu, prefix_cache, p: int, suffixes, max_new_tokens: int, stop_token_ids
) -> list[list[GridRow]]:
    """The rows of ``suffixes`` (after the ``p`` prefix tokens held by ``prefix_cache``) under every program."""
    dec, device = executor.decoder, executor.device
    n, m = len(suffixes), len(menu.programs)
    ids, suffix_mask = executor.pad_left([list(x) for x in suffixes])  # (n, S)
    s = ids.shape[1]
    capacity = p + s + max_new_tokens - 1
    plan, sources = menu.select([j for _ in range(n) for j in range(m)])  # row r = (suffix r // m, program r % m)
    grown = prefix_cache.gather(sources) if prefix_cache is not None else ProgramCache(plan.n_slots)
    r = n * m
    mask = torch.zeros((r, capacity), dtype=torch.bool, device=device)
    mask[:, :p] = True
    mask[:, p : p + s] = suffix_mask.bool().repeat_interleave(m, dim=0)
    ids = ids.repeat_interleave(m, dim=0)
    lengths = mask[:, p : p + s].long().sum(-1)  # (r,) real suffix tokens
    positions = (p + mask[:, p : p + s].long().cumsum(-1) - 1).clamp(min=p)  # (r, S): the prefix's positions go on
    hidden = run_plan(dec, ids, mask[:, : p + s], plan, grown, positions)  # grows the cache by the suffixes
    logits = dec.logits(hidden[:, -1:])[:, -1]  # (r, V)
    cache = ProgramCache.from_states([(x.keys, x.values) for x in grown.layers], capacity)
    probs = torch.softmax(logits, dim=-1)
    top2 = probs.topk(2, dim=-1).values
    margins = (top2[:, 0] - top2[:, 1]).tolist()
    entropies = (-(probs * torch.log(probs.clamp_min(1e-30))).sum(-1)).tolist()
    state = DecodeState(
        plan=plan,
        cache=cache,
        mask=mask,
        positions=p + lengths,
        token=ids[:, -1],
        done=torch.zeros(r, dtype=torch.bool, device=device),
        rows=torch.arange(r, device=device),
        tokens=torch.zeros((r, max_new_tokens), dtype=torch.long, device=device),
        length=p + s,
    )
    stops = torch.tensor(sorted(executor.eos_token_ids | set(stop_token_ids)) or [-1], device=device)
    logprob = torch.zeros(r, device=device)
    for t in range(max_new_tokens):
        if t:
            logits = decode_step(dec, state)
        token = logits.argmax(-1)
        picked = torch.log_softmax(logits, dim=-1).gather(-1, token[:, None])[:, 0]
        logprob.index_add_(0, state.rows, torch.where(state.done, 0.0, picked))  # rows done before add nothing
        record(state, token, stops)
        if state.steps % CHECK_EVERY == 0 and t + 1 < max_new_tokens:
            n_done = int(state.done.sum())  # the loop's only host sync
            if n_done == len(state.rows):
                break
            if n_done:
                state = compact(state)
    tokens, _ = finish(state.tokens, state.steps, stops)
    logprobs = logprob.tolist()
    out = [[None] * m for _ in range(n)]
    for k, row in enumerate(tokens):
        out[k // m][k % m] = GridRow(row, executor.decode(row), logprobs[k], margins[k], entropies[k])
    return out
