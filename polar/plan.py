"""Execution plans: which layer calls make each step of a batch of programs, and their cache slots.

Rows of a batch run their own programs. At step ``j`` the rows are grouped by the layer they visit;
each group is one layer call on its rows with its own KV cache slot. A row whose program is shorter
than ``j`` just carries its hidden states through.
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
    rows: torch.Tensor | None  # the same rows as a tensor; None when every row of the batch makes it
    slot: int  # KV cache slot of this visit


@dataclass
class Plan:
    """For each step of the programs, the layer calls that make it (one per distinct layer)."""

    programs: tuple[Program, ...]
    layer_kinds: tuple[str, ...]
    device: torch.device
    steps: list[list[Call]] = field(default_factory=list)
    kinds: set[str] = field(default_factory=set)
    n_slots: int = 0

    @classmethod
    def build(cls, programs: Sequence[Program], layer_kinds: Sequence[str], device: torch.device) -> Plan:
        plan = cls(tuple(programs), tuple(layer_kinds), device)
        n_rows = len(programs)
        for j in range(max(len(p) for p in programs)):
            by_layer: dict[int, list[int]] = {}
            for r, program in enumerate(programs):
                if j < len(program):
                    by_layer.setdefault(program[j], []).append(r)
            calls = []
            for layer, members in by_layer.items():
                rows = None if len(members) == n_rows else torch.tensor(members, device=device)
                calls.append(Call(layer, layer_kinds[layer], tuple(members), rows, plan.n_slots))
                plan.kinds.add(layer_kinds[layer])
                plan.n_slots += 1
            plan.steps.append(calls)
        return plan

    @property
    def layer_calls(self) -> int:
        return sum(len(calls) for calls in self.steps)

    def select(self, keep: Sequence[int]) -> tuple[Plan, list[tuple[int, torch.Tensor]]]:
        """The plan of rows ``keep`` (in that order), and for each of its slots where its cache comes
        from: ``(old slot, positions of the kept rows within the old slot's batch)``."""
        new = Plan.build([self.programs[r] for r in keep], self.layer_kinds, self.device)
        old_of = {r_new: r_old for r_new, r_old in enumerate(keep)}
        sources: list[tuple[int, torch.Tensor]] = []
        for old_calls, new_calls in zip(self.steps, new.steps, strict=False):
            by_layer = {c.layer: c for c in old_calls}
            for c in new_calls:
                old = by_layer[c.layer]
                position = {r: i for i, r in enumerate(old.members)}
                picked = [position[old_of[r]] for r in c.members]
                sources.append((old.slot, torch.tensor(picked, device=self.device)))
        return new, sources
