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

__all__ = [
    "PROMPT_FORMATS",
    "PROMPT_STYLES",
    "PromptBuilder",
    "PromptMismatch",
    "PromptSpec",
    "answer_line",
    "stop_token_ids",
]

PROMPT_STYLES = ("plain", "chat")
# How a question is put: ``qa`` the whole question (a multiple-choice one with its lettered options), the answer
# generated as a line (and a choice's likelihood that of its letter); ``cloze`` the question without its options,
# each choice's text scored after it (lm-evaluation-harness's ARC prompt), for menus scored by likelihood.
PROMPT_FORMATS = ("qa", "cloze")

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
    format: str = "qa"  # one of PROMPT_FORMATS

    def __post_init__(self) -> None:
        PromptBuilder(self.style)  # checks the style
        if self.format not in PROMPT_FORMATS:
            raise ValueError(f"prompt format must be one of {PROMPT_FORMATS}, got {self.format!r}")

    @classmethod
    def from_pool(cls, pool: str | Path | None, style: str = "plain", shots: int = 3, format: str = "qa") -> PromptSpec:
        """The spec whose shots are the first ``shots`` examples of each level of the pool file."""
        if shots == 0:
            return cls(style, 0, "none", format=format)
        if pool is None:
            raise ValueError(f"{shots}-shot prompts need a few-shot pool: pass the shots.parquet of `polar ingest`")
        pool = Path(pool)
        if not pool.exists():
            raise FileNotFoundError(f"few-shot pool not found: {pool} (`polar ingest` writes shots.parquet)")
        import pandas as pd

        rows = [Example.from_dict(r) for r in pd.read_parquet(pool).to_dict(orient="records")]
        digest = hashlib.sha256(pool.read_bytes()).hexdigest()[:12]
        return cls.from_examples(rows, style, shots, f"{pool.name} sha256:{digest}", format)

    @classmethod
    def from_examples(
        cls, rows: Sequence[Example], style: str = "plain", shots: int = 3, source: str = "", format: str = "qa"
    ) -> PromptSpec:
        """The spec whose shots are the first ``shots`` of each level of ``rows`` (a few-shot pool); a cloze
        prompt's shots are the questions without their options, answered with the right choice's text."""
        if shots == 0:
            return cls(style, 0, "none", format=format)
        if format == "cloze" and not all(e.choices for e in rows):
            raise ValueError(
                f"{source}: few-shot examples without choices; a cloze prompt (likelihood scoring is for multiple-choice "
                "tasks: arc-easy, arc-challenge, mmlu-pro-math) needs multiple-choice shots"
            )
        by_level: dict[str, list[tuple[str, str]]] = {}
        for e in rows:
            pair = (e.stem, e.choices[e.answer_index]) if format == "cloze" else (e.question, e.answer)
            by_level.setdefault(e.level, []).append(pair)
        examples = {level: pairs[:shots] for level, pairs in sorted(by_level.items()) if len(pairs) >= shots}
        mixed = [pair for pairs in zip(*by_level.values(), strict=False) for pair in pairs]  # levels in turn
        if len(mixed) < shots:
            raise ValueError(f"{source} holds {len(rows)} few-shot examples; {shots}-shot prompts need more")
        examples[ANY_LEVEL] = mixed[:shots]
        return cls(style, shots, source, examples, format=format)

    def shots_for(self, level: str | None) -> list[tuple[str, str]]:
        """The few-shot pairs of ``level`` (the pool's mixed ones for a level it does not have)."""
        if self.shots == 0:
            return []
        return list(self.examples.get(str(level), self.examples[ANY_LEVEL]))

    def encode(self, question: str, level: str | None, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """Token ids of the prompt for ``question`` of ``level``."""
        return PromptBuilder(self.style, self.version).encode(question, self.shots_for(level), tokenizer)

    def question_of(self, example: Example) -> str:
        """What the prompt asks of ``example``: the whole question, or under cloze the question without its options."""
        return example.stem if self.format == "cloze" else example.question

    def answers_of(self, example: Example) -> list[str]:
        """The texts whose likelihood is scored after the prompt, written as the few-shot answers are (after
        ``Answer:``, a space first in the plain style): a multiple-choice question's choices (their texts under
        cloze, their letters otherwise; the reference is ``example.answer_index``), else the reference answer."""
        lead = " " if self.style == "plain" else ""
        if self.format == "cloze":
            if not example.choices:
                raise ValueError(
                    f"{example.id}: a cloze prompt scores choices, and this question has none (likelihood scoring "
                    "is for multiple-choice tasks: arc-easy, arc-challenge, mmlu-pro-math)"
                )
            return [lead + text for text in example.choices]
        if example.choices:
            return [lead + chr(ord("A") + i) for i in range(len(example.choices))]
        return [lead + example.answer]

    def encode_scored(self, example: Example, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[list[int]]]:
        """The prompt's tokens for ``example`` and the tokens of each of :meth:`answers_of`: the tail of the prompt
        and answer tokenized together (as lm-evaluation-harness splits a context and its continuation), or the
        answer alone where tokenizing them together changes the prompt's last tokens."""
        ids = self.encode(self.question_of(example), example.level, tokenizer)
        text = PromptBuilder(self.style, self.version).text(
            self.question_of(example), self.shots_for(example.level), tokenizer
        )
        special = self.style == "plain"
        tails = []
        for answer in self.answers_of(example):
            whole = tokenizer(text + answer, add_special_tokens=special)["input_ids"]
            tail = whole[len(ids) :] if whole[: len(ids)] == ids else []
            tails.append(tail or tokenizer(answer, add_special_tokens=False)["input_ids"])
        return ids, tails

    @property
    def id(self) -> str:
        """``plain-3shot-v1-<12 hex>``: the style, shots and a digest of everything else."""
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
        return f"{PromptBuilder(self.style, self.version).id(self.shots)}-{digest}"

    def to_dict(self) -> dict:
        data = {
            "style": self.style,
            "shots": self.shots,
            "source": self.source,
            "version": self.version,
            "examples": {k: [list(p) for p in v] for k, v in self.examples.items()},
        }
        return data | ({"format": self.format} if self.format != "qa" else {})  # qa prompts keep their old ids

    @classmethod
    def from_dict(cls, data: dict) -> PromptSpec:
        examples = {k: [tuple(p) for p in v] for k, v in data.get("examples", {}).items()}
        return cls(
            data["style"], int(data["shots"]), data.get("source", ""), examples, data.get("version", "v1"),
            data.get("format", "qa"),
        )  # fmt: skip

    def check(self, other: PromptSpec, what: str) -> None:
        """Refuse ``other`` (``what`` names where it comes from) unless it is this very prompt."""
        if other.id == self.id:
            return
        diffs = [
            k
            for k in ("style", "shots", "source", "version", "examples", "format")
            if getattr(self, k) != getattr(other, k)
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
