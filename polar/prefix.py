"""Shared-prompt prefill: many programs over one prompt, each distinct prefix of layer visits computed once.

Programs are paths in a trie of layer visits. Two programs that start with the same visits have the
same hidden states and KV entries for the prompt up to where they part, so the prefill walks the
trie level by level and runs each node once (nodes of one level that visit the same layer run as one
batch). A :class:`PrefixStore` keeps the nodes across calls for the same prompt: search evaluates
programs in rounds, and each new program then costs only the visits after its longest known prefix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from polar.hf import Decoder, ProgramCache, SlotPool
from polar.plan import Plan

__all__ = ["PrefixStore", "common_prefix", "prefill_nodes", "prefill_shared", "prefill_suffixes", "suffix_nodes"]

Prefix = tuple[int, ...]
State = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # hidden (1, T, C), keys and values (1, heads, T, d)
# suffixes' states (:func:`suffix_nodes`): hidden states after each program, each node's index, keys and values
Suffixes = tuple[dict[Prefix, torch.Tensor], dict[Prefix, int], torch.Tensor, torch.Tensor]


def common_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens that every prompt starts with, leaving each prompt at least one token of its own."""
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for i in range(n):
        if any(p[i] != first[i] for p in prompts):
            return i
    return max(n, 0)


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


def prefill_nodes(
    dec: Decoder, ids: torch.Tensor, mask: torch.Tensor, plan: Plan, store: PrefixStore | None = None
) -> tuple[dict[Prefix, torch.Tensor], dict[Prefix, tuple[torch.Tensor, torch.Tensor]]]:
    """Walk the trie of ``plan``'s programs over one prompt ``ids`` (1, T), each node once.

    Returns the hidden states (1, T, C) after each program (by its layer visits) and the keys and values
    (1, heads, T, d) of every node (prefix of layer visits).
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
    return finals, states


def prefill_shared(
    dec: Decoder,
    ids: torch.Tensor,
    mask: torch.Tensor,
    plan: Plan,
    store: PrefixStore | None = None,
    capacity: int | None = None,
) -> tuple[torch.Tensor, ProgramCache]:
    """Prefill one prompt ``ids`` (1, T) under every program of ``plan``.

    Returns the last position's hidden states (B, C) and the per-visit cache laid out as ``plan`` expects
    (static slots of ``capacity`` positions if given, see :class:`~polar.hf.ProgramCache`).
    """
    finals, states = prefill_nodes(dec, ids, mask, plan, store)
    programs = [p.layers for p in plan.programs]
    last = torch.cat([finals[p][:, -1:] for p in programs])  # (B, 1, C)
    slots: list[tuple[torch.Tensor, torch.Tensor]] = []
    for c in plan.calls:
        parts = [states[programs[r][: v + 1]] for r, v in zip(c.members, c.visits, strict=True)]
        slots.append((torch.cat([k for k, _ in parts]), torch.cat([v for _, v in parts])))
    return last[:, -1], ProgramCache.from_states(slots, capacity)


def prefill_suffixes(
    dec: Decoder,
    prefix: dict[Prefix, tuple[torch.Tensor, torch.Tensor]] | None,
    ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    menu: Plan,
    rows: Plan,
    owners: Sequence[tuple[int, int]],
    capacity: int,
    pool: SlotPool | None = None,
    states: Suffixes | None = None,
) -> tuple[torch.Tensor, ProgramCache]:
    """Run ``n`` prompt suffixes ``ids`` (n, S) after a shared prefix under every program of ``menu``.

    The suffixes walk the same trie as the prefix: each node (prefix of layer visits) runs once for all ``n``
    suffixes, not once per program that starts with it. ``prefix`` holds the prefix's keys and values per node
    (:func:`prefill_nodes`; None: no shared prefix). ``mask`` (n, P + S) covers prefix and suffixes, and
    ``positions`` (n, S) are the suffix tokens' positions. ``rows`` is the plan of the decoding rows, row
    ``r`` being suffix ``owners[r][0]`` under program ``owners[r][1]`` of the menu.

    Returns the last position's hidden states (rows, C), from which each row's first new token is picked, and
    the rows' per-visit cache laid out as ``rows`` expects: static slots of ``capacity`` positions, written in
    place (taken from ``pool`` if given). ``states``: the suffixes' states per node when the caller already has
    them (:func:`suffix_nodes` of the same arguments).
    """
    n, m, s = ids.shape[0], len(menu.programs), ids.shape[1]
    p = mask.shape[1] - s
    programs = [q.layers for q in menu.programs]
    finals, nodes, suffix_keys, suffix_values = states or suffix_nodes(dec, prefix, ids, mask, positions, menu)
    by_owner = torch.stack([finals[q] for q in programs], dim=1).reshape(n * m, -1)  # (suffix i, program j): i * m + j
    last = by_owner[torch.tensor([i * m + j for i, j in owners], device=by_owner.device)]  # (rows, C)
    parts = [(suffix_keys, None), (suffix_values, None)]  # per key / value: the suffixes', the prefix's per node
    if prefix:
        order = list(nodes)
        parts = [
            (suffix_keys, torch.cat([prefix[pre][0] for pre in order])),  # (nodes, heads, P, d)
            (suffix_values, torch.cat([prefix[pre][1] for pre in order])),
        ]
    device = suffix_keys.device
    slots: list[tuple[torch.Tensor, torch.Tensor]] = []
    for c in rows.calls:
        pairs = zip(c.members, c.visits, strict=True)
        node = torch.tensor([nodes[programs[owners[r][1]][: v + 1]] for r, v in pairs], device=device)
        own = node * n + torch.tensor([owners[r][0] for r in c.members], device=device)
        keys, values = (_write_slot(suffix, prefixes, node, own, p, capacity, pool) for suffix, prefixes in parts)
        slots.append((keys, values))
    return last, ProgramCache.from_buffers(slots, p + s)


def suffix_nodes(
    dec: Decoder,
    prefix: Mapping[Prefix, tuple[torch.Tensor, torch.Tensor]] | None,
    ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    menu: Plan,
    last: bool = True,
) -> Suffixes:
    """Walk the trie of ``menu``'s programs over the suffixes ``ids`` (n, S), each node once for all of them.

    ``prefix`` holds each node's keys and values of the tokens before the suffixes: (1, heads, P, d) shared by
    every suffix, or (n, heads, P, d), one prefix per suffix.

    Returns the hidden states after each program (the last position's (n, C), or with ``last=False`` every
    position's (n, S, C)), the index of every node, and the suffixes' own keys and values of all nodes
    (nodes * n, heads, S, d): node ``i``'s at rows ``i * n`` onwards.
    """
    n = ids.shape[0]
    embedded = dec.embed(ids)  # (n, S, C)
    past = ProgramCache.from_states([next(iter(prefix.values()))]) if prefix else None  # its length, for masks
    masks = dec.masks(embedded, mask, past, positions, menu.kinds)
    del past  # it held a node's prefix states for their length alone
    rope = dec.position_embeddings(embedded, positions, menu.kinds)
    p = mask.shape[1] - ids.shape[1]
    programs = [q.layers for q in menu.programs]
    hidden: dict[Prefix, torch.Tensor] = {(): embedded}
    nodes: dict[Prefix, int] = {}  # node -> its index in the stacked suffix states
    keys: list[torch.Tensor] = []  # per node, the suffixes' keys (n, heads, S, d)
    values: list[torch.Tensor] = []
    finals: dict[Prefix, torch.Tensor] = {}
    for j in range(max(len(q) for q in programs)):
        todo: dict[int, list[Prefix]] = {}
        for pre in dict.fromkeys(q[: j + 1] for q in programs if len(q) > j):
            todo.setdefault(pre[-1], []).append(pre)
        nxt: dict[Prefix, torch.Tensor] = {}
        for layer, prefixes in todo.items():
            kind, g = menu.layer_kinds[layer], len(prefixes)
            x = torch.cat([hidden[pre[:-1]] for pre in prefixes])  # (g * n, S, C)
            tmp = ProgramCache(1)
            if prefix:
                states = [prefix[pre] for pre in prefixes]  # each node's once (a mapping may build them on access)
                tmp.layers[0].update(
                    torch.cat([k.expand(n, -1, -1, -1) for k, _ in states]),
                    torch.cat([v.expand(n, -1, -1, -1) for _, v in states]),
                )
                del states
            cos, sin = rope[kind]
            y = dec.run_layer(layer, x, _tile(masks[kind], g), (_tile(cos, g), _tile(sin, g)), _tile(positions, g), tmp)
            k, v = tmp.layers[0].keys[:, :, p:], tmp.layers[0].values[:, :, p:]  # the suffixes' own
            for i, pre in enumerate(prefixes):
                nxt[pre] = y[i * n : (i + 1) * n]
                nodes[pre] = len(keys)
                keys.append(k[i * n : (i + 1) * n].contiguous())
                values.append(v[i * n : (i + 1) * n].contiguous())
        for q in programs:
            if len(q) == j + 1:
                finals[q] = nxt[q][:, -1] if last else nxt[q]  # (n, C) or (n, S, C)
        hidden = nxt
    return finals, nodes, torch.cat(keys), torch.cat(values)


def _tile(t: torch.Tensor | None, g: int) -> torch.Tensor | None:
    """``t`` (n, ...) repeated ``g`` times along the batch, for ``g`` nodes that run as one batch."""
    return t if t is None or g == 1 else t.repeat(g, *[1] * (t.dim() - 1))


def _write_slot(
    suffix: torch.Tensor,
    prefixes: torch.Tensor | None,
    node: torch.Tensor,
    own: torch.Tensor,
    p: int,
    capacity: int,
    pool: SlotPool | None,
) -> torch.Tensor:
    """One cache slot's keys (or values), written in place: the prefix, the suffix, then zeros up to ``capacity``.

    Args:
        suffix: every node's suffix states (nodes * n, heads, S, d).
        prefixes: every node's prefix states (nodes, heads, P, d), or None without a shared prefix.
        node: the node of each member of the slot's call (members,).
        own: each member's row in ``suffix`` (members,).
        p: the prefix's length P.
        capacity: the slot's positions.
        pool: where to take the buffer from (a fresh one if None).

    Returns:
        The slot (members, heads, capacity, d).
    """
    s = suffix.shape[2]
    shape = (node.shape[0], suffix.shape[1], capacity, suffix.shape[3])
    buffer = (
        pool.empty(shape, suffix.dtype, suffix.device)
        if pool
        else torch.empty(shape, dtype=suffix.dtype, device=suffix.device)
    )
    if prefixes is not None:
        torch.index_select(prefixes, 0, node, out=buffer[:, :, :p])
    torch.index_select(suffix, 0, own, out=buffer[:, :, p : p + s])
    buffer[:, :, p + s :] = 0
    return buffer
