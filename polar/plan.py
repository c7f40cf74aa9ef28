"""Execution plans: the order of layer calls for a batch of programs, and their cache slots.

Rows of a batch run their own programs. The plan is a sequence of *ticks*; a tick is one call of one
layer on every row whose next visit is that layer, chosen as the lowest such layer. Rows that skip or
loop layers thus rejoin the others as soon as they visit the same layer again: for one-edit variants
of a program a forward costs about D layer calls, not D per distinct program. Each call has its own KV
cache slot, so each visit of a layer keeps its own history. The schedule depends only on the programs,
so it is the same at every decoding step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from polar.programs import Program

__all__ = ["Call", "Plan"]


@dataclass(frozen=True)
class Call:
    layer: int
    kind: str  # attention kind of the layer
    members: tuple[int, ...]  # rows of the batch that make this call, in slot order
    visits: tuple[int, ...]  # for each member, the position of this visit in its program
    rows: torch.Tensor | None  # the members as a tensor; None when every row of the batch makes the call
    slot: int  # KV cache slot of this call


@dataclass
class Plan:
    """Layer calls, tick by tick, for a batch of programs (one per row)."""

    programs: tuple[Program, ...]
    layer_kinds: tuple[str, ...]
    device: torch.device
    calls: list[Call] = field(default_factory=list)  # one per tick, in order
    kinds: set[str] = field(default_factory=set)
    n_slots: int = 0

    @classmethod
    def build(cls, programs: Sequence[Program], layer_kinds: Sequence[str], device: torch.device) -> Plan:
        plan = cls(tuple(programs), tuple(layer_kinds), device)
        n_rows = len(programs)
        ptr = [0] * n_rows  # next visit of each row
        while True:
            pending = [(p[ptr[r]], r) for r, p in enumerate(programs) if ptr[r] < len(p)]
            if not pending:
                break
            layer = min(lay for lay, _ in pending)
            members = tuple(r for lay, r in pending if lay == layer)
            visits = tuple(ptr[r] for r in members)
            rows = None if len(members) == n_rows else torch.tensor(members, device=device)
            plan.calls.append(Call(layer, layer_kinds[layer], members, visits, rows, plan.n_slots))
            plan.kinds.add(layer_kinds[layer])
            plan.n_slots += 1
            for r in members:
                ptr[r] += 1
        return plan

    @property
    def layer_calls(self) -> int:
        return len(self.calls)

    def select(self, keep: Sequence[int]) -> tuple[Plan, list[list[tuple[int, int]]]]:
        """The plan of rows ``keep`` (in that order), and for each of its slots, per member, where its
        cache comes from: ``(old slot, position in the old slot's batch)``."""
        new = Plan.build([self.programs[r] for r in keep], self.layer_kinds, self.device)
        where = {
            (r, v): (c.slot, i) for c in self.calls for i, (r, v) in enumerate(zip(c.members, c.visits, strict=True))
        }
        sources = [[where[keep[r], v] for r, v in zip(c.members, c.visits, strict=True)] for c in new.calls]
        return new, sources
