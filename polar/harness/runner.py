"""The tensor work behind the harness's requests: scoring continuations and generating until stop strings.

:func:`score` takes rows of (context, continuation, program). Rows with the same context and program form one
group: the context runs once (its prefill fills a per-visit KV cache, :class:`~polar.hf.ProgramCache`), and every
continuation of the group is then scored from that cache, so the choices of a multiple-choice question cost one
prefill plus their own tokens. Groups are batched, each row under its own program.

:func:`generate` is the executor's cached greedy loop (:mod:`polar.decoding`: prefill, then one token per step over
static per-visit slots) with one addition: every few tokens the rows' text so far is checked for the request's stop
strings, and rows that reached one leave the batch, as rows that produced EOS do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from polar.decoding import CHECK_EVERY, GREEDY, Sampling, compact, decode_step, next_token, prefill, record
from polar.executor import Executor
from polar.hf import ProgramCache
from polar.programs import Program

__all__ = ["Group", "generate", "group_rows", "score"]


@dataclass
class Group:
    """Continuations scored after one context under one program."""

    context: tuple[int, ...]
    program: Program
    continuations: list[tuple[int, ...]]
    rows: list[int]  # the input row of each continuation


def group_rows(rows: Sequence[tuple[Sequence[int], Sequence[int], Program]]) -> list[Group]:
    """Rows (context, continuation, program) grouped by context and program, longest context first (so that a
    batch pads little)."""
    groups: dict[tuple, Group] = {}
    for r, (context, continuation, program) in enumerate(rows):
        if not context or not continuation:
            raise ValueError(f"row {r}: a scored row needs a context and a continuation of at least one token")
        key = (tuple(context), program)
        group = groups.setdefault(key, Group(tuple(context), program, [], []))
        group.continuations.append(tuple(continuation))
        group.rows.append(r)
    return sorted(groups.values(), key=lambda g: -len(g.context))


def score(
    executor: Executor,
    rows: Sequence[tuple[Sequence[int], Sequence[int], Program]],
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[float, bool]]:
    """Log-probability of each continuation after its context under its program, and whether greedy decoding would
    produce it.

    Args:
        rows: (context tokens, continuation tokens, program) per request.
        batch_size: continuations per forward; a group larger than that runs alone.
        progress: called with the number of rows done after each batch.

    Returns:
        ``(logprob, is_greedy)`` per row, in input order.
    """
    out: list[tuple[float, bool] | None] = [None] * len(rows)
    batch: list[Group] = []
    for group in [*group_rows(rows), None]:
        if batch and (group is None or sum(len(g.rows) for g in batch) + len(group.rows) > batch_size):
            for r, result in zip((r for g in batch for r in g.rows), _score_batch(executor, batch), strict=True):
                out[r] = result
            if progress is not None:
                progress(sum(len(g.rows) for g in batch))
            batch = []
        if group is not None:
            batch.append(group)
    return out  # type: ignore[return-value]


@torch.inference_mode()
def _score_batch(executor: Executor, groups: list[Group]) -> list[tuple[float, bool]]:
    """Score the continuations of ``groups``: one prefill of their contexts, then every continuation from its
    context's cache."""
    plan = executor.plan([g.program for g in groups])
    ctx_ids, ctx_mask = executor.pad_left([g.context for g in groups])  # (G, T)
    cache = ProgramCache(plan.n_slots)
    first = torch.log_softmax(executor.forward(ctx_ids, ctx_mask, plan, cache, keep=1)[:, 0], -1)  # (G, V)
    owner = [g for g, group in enumerate(groups) for _ in group.continuations]  # (N,) group of each continuation
    conts = [c for group in groups for c in group.continuations]
    device = ctx_ids.device
    owner_t = torch.tensor(owner, device=device)
    heads = torch.tensor([c[0] for c in conts], device=device)  # (N,) first continuation tokens
    logprob = first[owner_t, heads].double()  # (N,) sums in float64: the float32 rounding of long sums is ~1e-5
    greedy = first[owner_t].argmax(-1) == heads
    width = max(len(c) for c in conts) - 1  # continuation tokens fed after the context
    if width > 0:
        rows_plan, sources = plan.select(owner)
        rows_cache = cache.gather(sources)
        ids = torch.full((len(conts), width), executor.pad_token_id, dtype=torch.long)
        targets = torch.zeros((len(conts), width), dtype=torch.long)
        valid = torch.zeros((len(conts), width), dtype=torch.bool)
        for j, c in enumerate(conts):  # right-padded: pads come after every real token, so they change nothing
            ids[j, : len(c) - 1] = torch.tensor(c[:-1])
            targets[j, : len(c) - 1] = torch.tensor(c[1:])
            valid[j, : len(c) - 1] = True
        ids, targets, valid = ids.to(device), targets.to(device), valid.to(device)
        mask = torch.cat([ctx_mask[owner_t], valid.long()], dim=1)  # (N, T + width)
        logp = torch.log_softmax(executor.forward(ids, mask, rows_plan, rows_cache), -1)  # (N, width, V)
        picked = logp.gather(-1, targets[..., None])[..., 0]  # (N, width)
        logprob = logprob + (picked.double() * valid).sum(-1)
        greedy = greedy & ((logp.argmax(-1) == targets) | ~valid).all(-1)
    return list(zip(logprob.tolist(), greedy.tolist(), strict=True))


@torch.inference_mode()
def generate(
    executor: Executor,
    prompts: Sequence[Sequence[int]],
    programs: Sequence[Program],
    max_new_tokens: int,
    stop_strings: Sequence[str],
    decode_text: Callable[[list[int]], str],
    sampling: Sampling = GREEDY,
) -> list[list[int]]:
    """New tokens of each prompt under its program, until EOS, a stop string in the text, or ``max_new_tokens``.

    Args:
        decode_text: token ids -> text, as the caller will decode the result (the stop strings are looked for in it).

    Returns:
        Each row's new tokens: up to and including EOS, or every token produced up to the check that found a stop
        string in its text (the caller cuts the text at the stop string).
    """
    if max_new_tokens < 1:
        return [[] for _ in prompts]
    dec = executor.decoder
    plan = executor.plan(programs)
    ids, mask = executor.pad_left(prompts)
    eos = torch.tensor(sorted(executor.eos_token_ids) or [-1], device=ids.device)
    generator = None
    if not sampling.greedy:
        generator = torch.Generator(device=ids.device).manual_seed(sampling.seed)
    ends: list[int | None] = [None] * len(prompts)  # tokens kept per row, once its text reached a stop string
    hidden, state = prefill(dec, ids, mask, plan, max_new_tokens)
    for t in range(max_new_tokens):
        if t:
            hidden = decode_step(dec, state)
        token = dec.pick(hidden).token if sampling.greedy else next_token(dec.logits(hidden), sampling, generator)
        record(state, token, eos)
        if t + 1 == max_new_tokens or state.steps % CHECK_EVERY:
            continue
        live = (~state.done).nonzero()[:, 0].tolist()
        written = state.tokens[state.rows[live], : state.steps].tolist() if live else []
        for b, tokens in zip(live, written, strict=True):
            if any(s in decode_text(tokens) for s in stop_strings):
                state.done[b] = True
                ends[int(state.rows[b])] = state.steps
        if bool(state.done.all()):
            break
        if bool(state.done.any()):
            state = compact(state)
    out = []
    for row, tokens in enumerate(state.tokens[:, : state.steps].tolist()):
        tokens = tokens[: ends[row] or state.steps]
        hit = next((i for i, tok in enumerate(tokens) if tok in executor.eos_token_ids), None)
        out.append(tokens if hit is None else tokens[: hit + 1])
    return out
