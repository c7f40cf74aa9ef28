"""Prompt builders: one per prompt style, recorded by id with every label and result.

``plain`` writes few-shot examples as ``Question: ... / Answer: ...`` blocks (the convention of
lm-evaluation-harness, for base and chat models alike); ``chat`` writes them as earlier conversation
turns through the model's chat template. Either way the model is expected to answer on one line, so
generation stops at the first newline (see :func:`stop_token_ids`).

``plain`` is the default of the label and evaluation stages because it is the better prompt for the
bundled chat model: SmolLM2-135M-Instruct, 3-shot, 40 questions per synthetic level, 25/30/12/5/1 correct
plain against 15/6/7/2/0 through its chat template (``bench/levels.py --prompt chat``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from polar.tasks.answers import answer_line  # re-exported: the answer is the first generated line
from polar.tasks.schema import Example

__all__ = ["PROMPT_STYLES", "PromptBuilder", "PromptMismatch", "PromptSpec", "answer_line", "stop_token_ids"]

PROMPT_STYLES = ("plain", "chat")

INSTRUCTION = "Answer with the final answer only."


@dataclass(frozen=True)
class PromptBuilder:
    """Builds token ids for a question, with few-shot ``(question, answer)`` pairs."""

    style: str  # "plain" or "chat"
    version: str = "v1"  # bump when the wording changes: labels made with another wording differ

    def __post_init__(self) -> None:
        if self.style not in PROMPT_STYLES:
            raise ValueError(f"prompt style must be one of {PROMPT_STYLES}, got {self.style!r}")

    def id(self, shots: int) -> str:
        return f"{self.style}-{shots}shot-{self.version}"

    def text(self, question: str, shots: Sequence[tuple[str, str]], tokenizer: PreTrainedTokenizerBase) -> str:
        if self.style == "chat":
            messages = [{"role": "system", "content": INSTRUCTION}]
            for q, a in shots:
                messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            messages.append({"role": "user", "content": question})
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        blocks = [f"Question: {q}\nAnswer: {a}" for q, a in shots]
        return "\n\n".join([*blocks, f"Question: {question}\nAnswer:"])

    def encode(self, question: str, shots: Sequence[tuple[str, str]], tokenizer: PreTrainedTokenizerBase) -> list[int]:
        text = self.text(question, shots, tokenizer)
        # The chat template already writes the BOS/special tokens it wants.
        return tokenizer(text, add_special_tokens=self.style == "plain")["input_ids"]


class PromptMismatch(ValueError):
    """Two stages would prompt the model differently: their results are not comparable."""


ANY_LEVEL = "*"  # the shots for a question whose level is unknown (e.g. a served request without one)


@dataclass(frozen=True)
class PromptSpec:
    """Everything that decides a prompt, as one recorded value: style, shots, and the shots themselves.

    Made once from the few-shot pool (``shots.parquet`` of the ingest stage); stored with the labels,
    carried by the predictor, checked by evaluation and used by the served model, so that the prompt a
    program was searched with is the prompt it is evaluated and served with. Every question of a level
    gets the same shots (the first ``shots`` of that level in the pool), so the prompts of a level share
    their prefix.
    """

    style: str = "plain"
    shots: int = 3
    source: str = ""  # where the shots came from (the pool file's name and SHA-256)
    examples: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # level -> (question, answer)
    version: str = PromptBuilder.version

    def __post_init__(self) -> None:
        PromptBuilder(self.style)  # checks the style

    @classmethod
    def from_pool(cls, pool: str | Path | None, style: str = "plain", shots: int = 3) -> PromptSpec:
        """The spec whose shots are the first ``shots`` examples of each level of the pool file."""
        if shots == 0:
            return cls(style, 0, "none")
        if pool is None:
            raise ValueError(f"{shots}-shot prompts need a few-shot pool: pass the shots.parquet of `polar ingest`")
        pool = Path(pool)
        if not pool.exists():
            raise FileNotFoundError(f"few-shot pool not found: {pool} (`polar ingest` writes shots.parquet)")
        import pandas as pd

        rows = [Example.from_dict(r) for r in pd.read_parquet(pool).to_dict(orient="records")]
        digest = hashlib.sha256(pool.read_bytes()).hexdigest()[:12]
        return cls.from_examples(rows, style, shots, f"{pool.name} sha256:{digest}")

    @classmethod
    def from_examples(
        cls, rows: Sequence[Example], style: str = "plain", shots: int = 3, source: str = ""
    ) -> PromptSpec:
        """The spec whose shots are the first ``shots`` of each level of ``rows`` (a few-shot pool)."""
        if shots == 0:
            return cls(style, 0, "none")
        by_level: dict[str, list[tuple[str, str]]] = {}
        for e in rows:
            by_level.setdefault(e.level, []).append((e.question, e.answer))
        examples = {level: pairs[:shots] for level, pairs in sorted(by_level.items()) if len(pairs) >= shots}
        mixed = [pair for pairs in zip(*by_level.values(), strict=False) for pair in pairs]  # levels in turn
        if len(mixed) < shots:
            raise ValueError(f"{source} holds {len(rows)} few-shot examples; {shots}-shot prompts need more")
        examples[ANY_LEVEL] = mixed[:shots]
        return cls(style, shots, source, examples)

    def shots_for(self, level: str | None) -> list[tuple[str, str]]:
        """The few-shot pairs of ``level`` (the pool's mixed ones for a level it does not have)."""
        if self.shots == 0:
            return []
        return list(self.examples.get(str(level), self.examples[ANY_LEVEL]))

    def encode(self, question: str, level: str | None, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """Token ids of the prompt for ``question`` of ``level``."""
        return PromptBuilder(self.style, self.version).encode(question, self.shots_for(level), tokenizer)

    @property
    def id(self) -> str:
        """``plain-3shot-v1-<12 hex>``: the style, shots and a digest of everything else."""
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
        return f"{PromptBuilder(self.style, self.version).id(self.shots)}-{digest}"

    def to_dict(self) -> dict:
        return {
            "style": self.style,
            "shots": self.shots,
            "source": self.source,
            "version": self.version,
            "examples": {k: [list(p) for p in v] for k, v in self.examples.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> PromptSpec:
        examples = {k: [tuple(p) for p in v] for k, v in data.get("examples", {}).items()}
        return cls(data["style"], int(data["shots"]), data.get("source", ""), examples, data.get("version", "v1"))

    def check(self, other: PromptSpec, what: str) -> None:
        """Refuse ``other`` (``what`` names where it comes from) unless it is this very prompt."""
        if other.id == self.id:
            return
        diffs = [
            k for k in ("style", "shots", "source", "version", "examples") if getattr(self, k) != getattr(other, k)
        ]
        raise PromptMismatch(
            f"{what} uses the prompt {other.id}, but the predictor was trained on labels made with {self.id} "
            f"({', '.join(diffs)} differ): use the labels' prompt settings (style {self.style}, {self.shots} shots "
            f"from {self.source or 'nowhere'}), or label and train again with the new ones"
        )


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Tokens whose text contains a newline: the one-line answer is complete when one is generated."""
    vocab = tokenizer.get_vocab()
    ids = []
    for token_id in vocab.values():
        if "\n" in tokenizer.decode([token_id]):
            ids.append(token_id)
    return sorted(ids)
