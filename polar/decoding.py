"""The executor's forward and token loop: prefill once, then one token per step over preallocated state.

:func:`run_plan` is one forward of a batch of rows, each under its program (see :mod:`polar.plan`).
Cached generation (:func:`decode`) is three small functions in a loop:

- :func:`prefill` runs the prompts and lays their keys and values into static per-visit cache slots of
  ``prompt + max_new_tokens - 1`` positions, next to an attention mask preallocated at that width;
- :func:`decode_step` feeds every row its last token and writes one position of each slot in place;
- :func:`record` writes the chosen tokens and marks the rows that produced a stop token.

Greedy tokens come from :meth:`~polar.hf.Decoder.pick`, which runs the head over the vocabulary in chunks
instead of materialising every row's logits.

Finished rows stay in the batch between checks (their tokens past the stop are cut by
:func:`finish`), so a step neither rebuilds the plan nor copies the cache, and asks the device nothing.
Every :data:`CHECK_EVERY` tokens one host check ends the loop when every row is done, and otherwise
:func:`compact` drops the finished rows (rebuilding the plan, copying the slots' written positions).

Sampled rows draw from one generator in batch order, so the rows in the batch decide each row's draws.
Sampling therefore keeps the rule that finished rows leave the batch at once (a check every token):
seeded samples are the same as before this loop existed, and as the reference path's.

:func:`decode_recomputed` is the slow reference semantics that cached decoding must reproduce: the
whole sequence again at every step, no cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from polar.hf import Decoder, ProgramCache
from polar.plan import Plan
from polar.prefix import PrefixStore, prefill_shared

__all__ = [
    "CHECK_EVERY",
    "COMPACT_AT",
    "GREEDY",
    "DecodeState",
    "Sampling",
    "compact",
    "decode",
    "decode_recomputed",
    "decode_step",
    "finish",
    "next_token",
    "prefill",
    "record",
    "run_plan",
]

# Greedy decoding asks the host whether rows finished once every CHECK_EVERY tokens: a finished row
# runs at most CHECK_EVERY - 1 wasted steps, and the steps between checks make no sync.
CHECK_EVERY = 4
# A check drops the finished rows once they are at least this fraction of the batch (0: any). On CPU a
# dead row costs as much as a live one; in the labeling case of bench/bench_engine.py (16 programs,
# rows ending at 8 to 50 tokens; new/previous executor, 3 pairs each, noisy) checking every 4 tokens
# and dropping any finished row measured 1.00, checking every token 0.98, waiting for half the batch
# 1.06, and every 8 tokens for half 1.13. On a GPU, where dead rows are nearly free, a higher fraction
# would save copies (not measured: no GPU).
COMPACT_AT = 0.0


@dataclass(frozen=True)
class Sampling:
    """Sampling settings; ``temperature == 0`` means greedy decoding."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


GREEDY = Sampling()


@dataclass
class DecodeState:
    """What the token loop carries from step to step; its tensors keep their size until :func:`compact`."""

    plan: Plan
    cache: ProgramCache  # static per-visit slots of `capacity` positions
    mask: torch.Tensor  # (b, capacity) bool: the slot position holds a token of the row
    positions: torch.Tensor  # (b,) position id of each row's next input
    token: torch.Tensor  # (b,) each row's last token: the next step's input
    done: torch.Tensor  # (b,) bool: the row has produced a stop token
    rows: torch.Tensor  # (b,) output row of each batch row
    tokens: torch.Tensor  # (n_rows, max_new_tokens) output buffer, every row of the call
    length: int  # positions written in every slot: the next write index
    steps: int = 0  # tokens produced per row


# ------------------------------------------------------------------------------------------- forward
def _rows(x, rows: torch.Tensor | None):
    """Select rows of a batch-first tensor (or of a tuple of them); batch-1 tensors broadcast."""
    if rows is None or x is None:
        return x
    if isinstance(x, tuple):
        return tuple(_rows(t, rows) for t in x)
    return x if x.shape[0] == 1 else x.index_select(0, rows)


def run_plan(
    dec: Decoder,
    input_ids: torch.Tensor,  # (B, q)
    attention_mask: torch.Tensor,  # (B, kv) 1 = real token
    plan: Plan,
    cache: ProgramCache | None = None,
    position_ids: torch.Tensor | None = None,  # (B, q)
) -> torch.Tensor:
    """Hidden states (B, q, C) after each row's program, before the final norm.

    Positions come from the attention mask (left padding) unless ``position_ids`` are given.
    """
    q = input_ids.shape[1]
    hidden = dec.embed(input_ids)  # (B, q, C)
    if position_ids is None:
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -q:]  # (B, q)
    masks = dec.masks(hidden, attention_mask, cache, position_ids, plan.kinds)
    rope = dec.position_embeddings(hidden, position_ids, plan.kinds)
    for c in plan.calls:
        slot = cache.select(c.slot) if cache is not None else None
        if c.rows is None:  # every row visits this layer now
            hidden = dec.run_layer(c.layer, hidden, masks[c.kind], rope[c.kind], position_ids, slot)
            continue
        h = dec.run_layer(  # some rows make this call; the others carry their hidden states
            c.layer,
            _rows(hidden, c.rows),
            _rows(masks[c.kind], c.rows),
            _rows(rope[c.kind], c.rows),
            _rows(position_ids, c.rows),
            slot,
        )
        hidden = hidden.index_copy(0, c.rows, h)
    return hidden


def next_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """The next token (b,) of each row from its logits (b, V)."""
    if sampling.greedy:
        return logits.argmax(-1)
    logits = logits / sampling.temperature
    if sampling.top_k > 0:
        kth = torch.topk(logits, min(sampling.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sampling.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > sampling.top_p  # keep the smallest set reaching top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


# --------------------------------------------------------------------------------- cached decoding
def prefill(
    dec: Decoder,
    ids: torch.Tensor,  # (B, T) left-padded prompts
    mask: torch.Tensor,  # (B, T) 1 = real token
    plan: Plan,
    max_new_tokens: int,
    shared_prompt: bool = False,
    store: PrefixStore | None = None,
    capacity: int | None = None,
) -> tuple[torch.Tensor, DecodeState]:
    """Run the prompts and set up the decoding state.

    Args:
        shared_prompt: every row has the same prompt; it is run once per distinct prefix of layer
            visits (:func:`polar.prefix.prefill_shared`, with ``store`` kept across calls).
        capacity: positions of each cache slot; at least ``T + max_new_tokens - 1`` (the default).

    Returns:
        The last hidden state (B, C) of each row (its first new token's, through :meth:`Decoder.pick` or
        :meth:`Decoder.logits`), and the state, ``max_new_tokens`` wide.
    """
    n, width = ids.shape
    need = width + max_new_tokens - 1  # the last new token is never fed back
    capacity = need if capacity is None else capacity
    if capacity < need:
        raise ValueError(f"a cache of {capacity} positions cannot hold {width} + {max_new_tokens - 1}")
    if shared_prompt:
        hidden, cache = prefill_shared(dec, ids[:1], mask[:1], plan, store, capacity)
    else:  # grow a cache by concatenation (exactly the uncached prompt's numbers), then lay it out static
        grown = ProgramCache(plan.n_slots)
        hidden = run_plan(dec, ids, mask, plan, grown)[:, -1]
        cache = ProgramCache.from_states([(s.keys, s.values) for s in grown.layers], capacity)
    full_mask = torch.zeros((n, capacity), dtype=torch.bool, device=ids.device)
    full_mask[:, :width] = mask.bool()
    state = DecodeState(
        plan=plan,
        cache=cache,
        mask=full_mask,
        positions=mask.long().sum(-1),  # the next position of each row: its real prompt length
        token=ids[:, -1],
        done=torch.zeros(n, dtype=torch.bool, device=ids.device),
        rows=torch.arange(n, device=ids.device),
        tokens=torch.zeros((n, max_new_tokens), dtype=torch.long, device=ids.device),
        length=width,
    )
    return hidden, state


def decode_step(dec: Decoder, state: DecodeState) -> torch.Tensor:
    """Feed each row its last token; returns its hidden state (b, C), the next token's. Writes slot position
    ``state.length`` in place: no allocation that grows, no host sync."""
    state.mask[:, state.length] = True
    hidden = run_plan(dec, state.token[:, None], state.mask, state.plan, state.cache, state.positions[:, None])
    state.length += 1
    state.positions += 1
    return hidden[:, -1]


def record(state: DecodeState, token: torch.Tensor, stops: torch.Tensor) -> None:
    """Write each row's new token (b,) and mark the rows that produced a stop token (no host sync)."""
    state.tokens[state.rows, state.steps] = token
    state.done |= torch.isin(token, stops)
    state.token = token
    state.steps += 1


def compact(state: DecodeState) -> DecodeState:
    """The state of the rows not yet done: their plan, and their cache rows copied into new slots."""
    keep = (~state.done).nonzero()[:, 0]
    plan, sources = state.plan.select(keep.tolist())
    return replace(
        state,
        plan=plan,
        cache=state.cache.gather(sources, state.length),
        mask=state.mask[keep],
        positions=state.positions[keep],
        token=state.token[keep],
        done=state.done[keep],
        rows=state.rows[keep],
    )


def decode(
    dec: Decoder,
    ids: torch.Tensor,  # (B, T) left-padded prompts
    mask: torch.Tensor,  # (B, T)
    plan: Plan,
    max_new_tokens: int,
    sampling: Sampling,
    stops: torch.Tensor,  # (S,) token ids that end a row
    generator: torch.Generator | None = None,
    shared_prompt: bool = False,
    store: PrefixStore | None = None,
    capacity: int | None = None,
) -> tuple[torch.Tensor, int]:
    """Cached generation. Returns the token buffer (B, max_new_tokens) and the steps run; read it with
    :func:`finish`. Arguments as in :func:`prefill`."""
    if max_new_tokens < 1:
        return ids.new_zeros((ids.shape[0], 0)), 0
    check_every, compact_at = (CHECK_EVERY, COMPACT_AT) if sampling.greedy else (1, 0.0)
    hidden, state = prefill(dec, ids, mask, plan, max_new_tokens, shared_prompt, store, capacity)
    for t in range(max_new_tokens):
        if t:
            hidden = decode_step(dec, state)
        token = dec.pick(hidden).token if sampling.greedy else next_token(dec.logits(hidden), sampling, generator)
        record(state, token, stops)
        if state.steps % check_every == 0 and t + 1 < max_new_tokens:
            n, n_done = len(state.rows), int(state.done.sum())  # the loop's only host sync
            if n_done == n:
                break
            if n_done >= max(1, math.ceil(compact_at * n)):
                state = compact(state)
    return state.tokens, state.steps


def finish(tokens: torch.Tensor, steps: int, stops: torch.Tensor) -> tuple[list[list[int]], list[bool]]:
    """Each row's tokens up to and including its first stop token, and whether it stopped.

    Args:
        tokens: (B, >= steps) what each row produced, from :func:`decode` or :func:`decode_recomputed`.
    """
    if steps == 0:
        return [[] for _ in range(tokens.shape[0])], [False] * tokens.shape[0]
    tokens = tokens[:, :steps]
    hits = torch.isin(tokens, stops)  # (B, steps)
    stopped = hits.any(-1)
    lengths = torch.where(stopped, hits.int().argmax(-1) + 1, steps)  # argmax: the first stop
    return [row[:n] for row, n in zip(tokens.tolist(), lengths.tolist(), strict=True)], stopped.tolist()


# -------------------------------------------------------------------------------------- reference
def decode_recomputed(
    dec: Decoder,
    ids: torch.Tensor,  # (B, T)
    mask: torch.Tensor,  # (B, T)
    plan: Plan,
    max_new_tokens: int,
    sampling: Sampling,
    stops: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, int]:
    """The reference semantics: the whole sequence recomputed at every step, finished rows leaving the
    batch at once. Returns what :func:`decode` returns."""
    tokens = ids.new_zeros((ids.shape[0], max_new_tokens))
    rows = torch.arange(ids.shape[0], device=ids.device)
    for t in range(max_new_tokens):
        logits = dec.logits(run_plan(dec, ids, mask, plan)[:, -1:])[:, -1]  # (b, V)
        token = next_token(logits, sampling, generator)
        tokens[rows, t] = token
        live = ~torch.isin(token, stops)
        if not bool(live.any()):
            return tokens, t + 1
        if not bool(live.all()):
            keep = live.nonzero()[:, 0]
            plan, _ = plan.select(keep.tolist())
            rows, ids, mask, token = rows[keep], ids[keep], mask[keep], token[keep]
        ids = torch.cat([ids, token[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return tokens, max_new_tokens
