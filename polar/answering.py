"""From a question to its answer along a program: the one path that evaluation measures and serving runs.

An :class:`Answerer` fixes what the predictor was labeled with — the prompt spec, the generation budget and the
stop tokens — so that the evaluation and the served model cannot drift apart: both pick programs with
:func:`polar.predictor.predict`, encode with :meth:`Answerer.encode`, generate with :meth:`Answerer.generate`
and read the answer with :func:`polar.tasks.answers.answer_of`. Under a cloze prompt (a menu scored by
likelihood) there is no generation: :meth:`Answerer.choose` answers with the choice the study's rule picks from
the choices' likelihoods (:func:`polar.likelihood.best_choice`), as the labels did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from polar.executor import GREEDY, Generation, Sampling
from polar.likelihood import best_choice, score_grid
from polar.programs import Program
from polar.tasks.answers import grade
from polar.tasks.prompts import PromptSpec, stop_token_ids
from polar.tasks.schema import LETTERS, Example

__all__ = ["Answerer"]


@dataclass
class Answerer:
    """A base model (a :class:`polar.backbone.Backbone`) answering with one prompt and one generation budget."""

    backbone: object
    prompt: PromptSpec
    max_new_tokens: int
    rule: str = "sum"  # under a cloze prompt: how the answer is read from the choices' likelihoods
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

    def choose(self, examples: Sequence[Example], programs: Sequence[Program], batch: int = 16) -> list[int]:
        """Under a cloze prompt: each multiple-choice example's choice (its index) under its own program, by the
        answer rule; inputs of one program are scored together (a score does not depend on the batch)."""
        if self.prompt.format != "cloze":
            raise ValueError(f"the prompt {self.prompt.id} generates its answers; choices are chosen under cloze")
        tok = self.backbone.tokenizer
        out: list[int | None] = [None] * len(examples)
        by_program: dict[str, list[int]] = {}
        for i, program in enumerate(programs):
            by_program.setdefault(program.text, []).append(i)
        for rows in by_program.values():
            for start in range(0, len(rows), batch):
                part = rows[start : start + batch]
                encoded = [self.prompt.encode_scored(examples[i], tok) for i in part]
                scores = score_grid(self.backbone.executor, [p for p, _ in encoded], [t for _, t in encoded],
                                    [programs[part[0]]])  # fmt: skip
                for i, per_program in zip(part, scores, strict=True):
                    out[i] = best_choice(per_program[0], self.prompt.answers_of(examples[i]), self.rule)
        return out  # type: ignore[return-value]

    def answer_each(
        self, examples: Sequence[Example], programs: Sequence[Program], desc: str = "answer"
    ) -> list[tuple[str | None, bool]]:
        """Each example's (answer, whether it is right) under its own program, as the labels graded it: the
        generated answer line graded, or under a cloze prompt the letter of the chosen choice."""
        if self.prompt.format == "cloze":
            picked = self.choose(examples, programs)
            return [(LETTERS[k], LETTERS[k] == e.answer) for k, e in zip(picked, examples, strict=True)]
        generations = self.run_each(examples, programs, desc=desc)
        return [grade(g.text, e.answer, e.answer_kind) for g, e in zip(generations, examples, strict=True)]
