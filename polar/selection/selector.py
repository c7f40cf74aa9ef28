"""A servable selector: the folder the registry logs and the served model reads, one program per question.

A selector folder holds ``selector.json`` (its kind, the programs it can choose and its provenance) and, for a
network, the predictor's ``predictor.safetensors`` and ``config.json``. Three kinds are servable:

- ``static``: one program for every question (base greedy is the full-depth program, the baseline champion);
- ``per_level``: a program per task level, the full depth for a level it never saw;
- ``network``: a trained predictor (M2's menu network or the PoLar network's decoder), :func:`polar.predictor.predict`.

A folder written by ``polar train`` (a predictor, no ``selector.json``) reads as a ``network`` selector, so every
registered version serves through :meth:`Selector.choose`. The selection study writes selectors only for the
candidates it can serve; a choice that needs features of the base model's own pass (confidence gates, M1) is
scored but not served.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from polar.programs import Program

__all__ = ["KINDS", "SELECTOR", "Selector", "SelectorSpec", "artifact_meta"]

SELECTOR = "selector.json"
KINDS = ("static", "per_level", "network")


@dataclass(frozen=True)
class SelectorSpec:
    """What ``selector.json`` holds."""

    kind: str  # one of KINDS
    method: str  # the study's name of the candidate, e.g. "B0 base greedy"
    depth: int
    program: str | None = None  # static: the program
    programs: dict[str, str] = field(default_factory=dict)  # per_level: level -> program
    meta: dict = field(default_factory=dict)  # base_model, prompt, max_new_tokens, label files, settings

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"selector kind {self.kind!r}: the servable kinds are {', '.join(KINDS)}")
        texts = [self.program] if self.kind == "static" else list(self.programs.values())
        if self.kind == "static" and self.program is None:
            raise ValueError("a static selector needs its program")
        for text in texts if self.kind != "network" else []:
            Program.parse(text).validate(self.depth)

    def to_dict(self) -> dict:
        return asdict(self)


def artifact_meta(folder: str | Path) -> tuple[dict, dict]:
    """``(settings, meta)`` of a selector or predictor folder: what the registry logs as parameters and tags."""
    folder = Path(folder)
    for name in (SELECTOR, "config.json"):
        if (folder / name).exists():
            data = json.loads((folder / name).read_text())
            return {k: v for k, v in data.items() if k != "meta"}, data.get("meta", {})
    raise FileNotFoundError(f"{folder} holds neither {SELECTOR} (`polar select`) nor config.json (`polar train`)")


class Selector:
    """A loaded selector folder: :meth:`choose` gives each question its program, as it was evaluated."""

    def __init__(self, spec: SelectorSpec, network=None, embedder=None) -> None:
        self.spec, self.network, self.embedder = spec, network, embedder

    @classmethod
    def save(cls, folder: str | Path, spec: SelectorSpec, network=None) -> Path:
        """Write ``selector.json`` (and the network's files for a network selector) into ``folder``."""
        from polar.predictor import save as save_predictor

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if (spec.kind == "network") != (network is not None):
            raise ValueError("a network selector needs its network, and only it has one")
        if network is not None:
            save_predictor(network, folder)
        (folder / SELECTOR).write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path, backbone=None, device: str = "cpu") -> Selector:
        """The selector of ``folder``; a network's embedder is loaded here (``backbone`` for ``backbone:N``)."""
        from polar import predictor as P

        folder = Path(folder)
        if (folder / SELECTOR).exists():
            spec = SelectorSpec(**json.loads((folder / SELECTOR).read_text()))
        else:  # a `polar train` predictor folder
            model = P.load(folder, device=device)
            spec = SelectorSpec("network", "predictor", model.config.depth, meta=model.config.meta)
        if spec.kind != "network":
            return cls(spec)
        from polar.embedder import load_embedder

        network = P.load(folder, device=device)
        return cls(spec, network, load_embedder(network.config.meta["embedder"], backbone=backbone, device=device))

    @property
    def prompt(self):
        """The prompt the selector's labels were made with (:class:`polar.tasks.prompts.PromptSpec`)."""
        from polar.tasks.prompts import PromptSpec

        if "prompt" not in self.spec.meta:
            raise ValueError(f"the selector {self.spec.method!r} records no prompt spec: make it again")
        return PromptSpec.from_dict(self.spec.meta["prompt"])

    def choose(self, questions: Sequence[str], levels: Sequence[str | None]) -> list[Program]:
        """One program per question (each question alone: a choice never depends on the rest of a request)."""
        if len(questions) != len(levels):
            raise ValueError(f"{len(questions)} questions and {len(levels)} levels")
        full = Program.identity(self.spec.depth)
        if self.spec.kind == "static":
            return [Program.parse(self.spec.program)] * len(questions)
        if self.spec.kind == "per_level":
            return [Program.parse(self.spec.programs[lv]) if lv in self.spec.programs else full for lv in levels]
        from polar.predictor import predict

        return [ranked[0] for ranked in predict(self.network, self.embedder, list(questions), 1)]
