"""From a question to its answer along a program: the one path that evaluation measures and serving runs.

An :class:`Answerer` fixes what the predictor was labeled with — the prompt spec, the generation budget and the
stop tokens — so that the evaluation and the served model cannot drift apart: both pick programs with
:func:`polar.predictor.predict`, encode with :meth:`Answerer.encode`, generate with :meth:`Answerer.generate`
and read the answer with :func:`polar.tasks.answers.answer_of`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from polar.executor import GREEDY, Generation, Sampling
from polar.programs import Program
from polar.tasks.prompts import PromptSpec, stop_token_ids

__all__ = ["Answerer"]


@dataclass
class Answerer:
    """A base model (a :class:`polar.backbone.Backbone`) answering with one prompt and one generation budget."""

    backbone: object
    prompt: PromptSpec
    max_new_tokens: int
    stops: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.stops = stop_token_ids(self.backbone.tokenizer)

    def encode(self, question: str, level: str | None) -> list[int]:
        """The prompt's tokens for ``question`` (the level's few-shot examples; None: the pool's mixed ones)."""
        return self.prompt.encode(question, level, self.backbone.tokenizer)

    def generate(
        self, prompts: Sequence[Sequence[int]], programs: Sequence[Program], sampling: Sampling = GREEDY
    ) -> list[Generation]:
        """Generate as :meth:`polar.executor.Executor.generate` pairs prompts and programs, within the budget."""
        return self.backbone.executor.generate(
            prompts, programs, self.max_new_tokens, sampling, stop_token_ids=self.stops
        )

    def run_each(
        self, examples: Sequence, programs: Sequence[Program], batch: int = 16, desc: str = "answer"
    ) -> list[Generation]:
        """Each example answered under its own program, greedy; inputs of one level and program are batched
        (a program's greedy text does not depend on the batch), results in input order."""
        from tqdm import tqdm

        if len(examples) != len(programs):
            raise ValueError(f"{len(examples)} examples and {len(programs)} programs")
        out: list[Generation | None] = [None] * len(examples)
        order = sorted(range(len(examples)), key=lambda i: (examples[i].level, programs[i].text))
        for start in tqdm(range(0, len(order), batch), desc=desc, unit="batch", leave=False):
            rows = order[start : start + batch]
            prompts = [self.encode(examples[i].question, examples[i].level) for i in rows]
            for i, g in zip(rows, self.generate(prompts, [programs[i] for i in rows]), strict=True):
                out[i] = g
        return out
