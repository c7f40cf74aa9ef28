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

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from polar.tasks.answers import answer_line  # re-exported: the answer is the first generated line

__all__ = ["PROMPT_STYLES", "PromptBuilder", "answer_line", "stop_token_ids"]

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


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Tokens whose text contains a newline: the one-line answer is complete when one is generated."""
    vocab = tokenizer.get_vocab()
    ids = []
    for token_id in vocab.values():
        if "\n" in tokenizer.decode([token_id]):
            ids.append(token_id)
    return sorted(ids)
