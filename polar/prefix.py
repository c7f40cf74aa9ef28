"""Shared-prompt prefill: many programs over one prompt, each distinct prefix of layer visits computed once.

Programs are paths in a trie of layer visits. Two programs that start with the same visits have the
same hidden states and KV entries for the prompt up to where they part, so the prefill walks the
trie level by level and runs each node once (nodes of one level that visit the same layer run as one
batch). A :class:`PrefixStore` keeps the nodes across calls for the same prompt: search evaluates
programs in rounds, and each new program then costs only the visits after its longest known prefix.
"""

from __future__ import annotations

import torch

from polar.hf import Decoder, ProgramCache
from polar.plan import Plan

__all__ = ["PrefixStore", "prefill_shared"]

Prefix = tuple[int, ...]
State = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # hidden (1, T, C), keys and values (1, heads, T, d)


class PrefixStore:
    """Prompt states per prefix of layer visits, for one prompt, up to ``max_bytes`` of tensors."""

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = max_bytes
        self.prompt: tuple[int, ...] | None = None
        self.nodes: dict[Prefix, State] = {}
        self.bytes = 0
        self.hits = 0  # layer calls saved, for reports

    def bind(self, prompt: tuple[int, ...]) -> None:
        """Use the store for ``prompt``; a different prompt empties it."""
        if prompt != self.prompt:
            self.prompt, self.nodes, self.bytes = prompt, {}, 0

    def add(self, prefix: Prefix, state: State) -> None:
        size = sum(t.numel() * t.element_size() for t in state)
        if self.bytes + size <= self.max_bytes:  # full: keep what is there, compute the rest
            self.nodes[prefix] = state
            self.bytes += size


def prefill_shared(
    dec: Decoder,
    ids: torch.Tensor,
    mask: torch.Tensor,
    plan: Plan,
    store: PrefixStore | None = None,
    capacity: int | None = None,
) -> tuple[torch.Tensor, ProgramCache]:
    """Prefill one prompt ``ids`` (1, T) under every program of ``plan``.

    Returns the last-position logits (B, 1, V) and the per-visit cache laid out as ``plan`` expects
    (static slots of ``capacity`` positions if given, see :class:`~polar.hf.ProgramCache`).
    """
    if store is not None:
        store.bind(tuple(ids[0].tolist()))
    position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (1, T)
    embedded = dec.embed(ids)  # (1, T, C)
    masks = dec.masks(embedded, mask, None, position_ids, plan.kinds)
    rope = dec.position_embeddings(embedded, position_ids, plan.kinds)
    programs = [p.layers for p in plan.programs]
    known = store.nodes if store is not None else {}
    hidden: dict[Prefix, torch.Tensor] = {(): embedded}
    states: dict[Prefix, tuple[torch.Tensor, torch.Tensor]] = {}
    finals: dict[Prefix, torch.Tensor] = {}
    for j in range(max(len(p) for p in programs)):
        level = list(dict.fromkeys(p[: j + 1] for p in programs if len(p) > j))  # distinct prefixes
        nxt: dict[Prefix, torch.Tensor] = {}
        todo: dict[int, list[Prefix]] = {}
        for prefix in level:
            if prefix in known:
                h, k, v = known[prefix]
                nxt[prefix], states[prefix] = h, (k, v)
                store.hits += 1
            else:
                todo.setdefault(prefix[-1], []).append(prefix)
        for layer, prefixes in todo.items():
            kind = plan.layer_kinds[layer]
            x = torch.cat([hidden[pre[:-1]] for pre in prefixes])  # (n, T, C)
            tmp = ProgramCache(1)
            y = dec.run_layer(layer, x, masks[kind], rope[kind], position_ids, tmp.select(0))
            keys, values = tmp.layers[0].keys, tmp.layers[0].values  # (n, heads, T, d)
            for i, pre in enumerate(prefixes):
                nxt[pre], states[pre] = y[i : i + 1], (keys[i : i + 1], values[i : i + 1])
                if store is not None:
                    store.add(pre, (nxt[pre], *states[pre]))
        for p in programs:
            if len(p) == j + 1:
                finals[p] = nxt[p]
        hidden = nxt
    last = torch.cat([finals[p][:, -1:] for p in programs])  # (B, 1, C)
    slots: list[tuple[torch.Tensor, torch.Tensor]] = []
    for c in plan.calls:
        parts = [states[programs[r][: v + 1]] for r, v in zip(c.members, c.visits, strict=True)]
        slots.append((torch.cat([k for k, _ in parts]), torch.cat([v for _, v in parts])))
    return dec.logits(last), ProgramCache.from_states(slots, capacity)
