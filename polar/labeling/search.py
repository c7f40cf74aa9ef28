"""The search labeler: MCTS program search for each input, one :class:`~polar.labeling.folder.LabelRecord` each.

Each record holds the base answer, every evaluated program with its reward, the valid ones and the shortest
valid one with its compact form. :func:`polar.labeling.run.run_labeling` writes the records to resumable shards
and merges them into ``labels.jsonl`` in input order: a finished folder holds the same bytes however the work was
split or interrupted.

The prompt (style, shots and the shots themselves, :class:`polar.tasks.prompts.PromptSpec`) is built once from
the few-shot pool and recorded in ``settings.json``; every record names it by id.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import ClassVar

from polar.backbone import Backbone, load, numerics
from polar.labeling.folder import (
    SCHEMA,
    Evaluated,
    LabelRecord,
    check_settings,
    merge_shards,
    read_labels,
    record_header,
    write_manifest,
)
from polar.prefix import PrefixStore
from polar.programs import CompactProgram, Program, ProgramError
from polar.search import Evaluation, search
from polar.settings import EngineConfig, LabelConfig
from polar.tasks.answers import grade
from polar.tasks.prompts import PromptSpec, stop_token_ids
from polar.tasks.schema import Example

__all__ = ["SearchLabeler", "label_one"]


def label_one(
    backbone: Backbone, example: Example, prompt: PromptSpec, config: LabelConfig, stops: list[int]
) -> tuple[LabelRecord, float]:
    """Search programs for one input.

    Args:
        backbone: the base model.
        example: the input.
        prompt: the prompt spec it is asked with.
        config: the label settings (the search, the generation budget, the compact form's ``k_max``).
        stops: the token ids that end an answer.

    Returns:
        Its record and the search's wall-clock seconds.
    """
    ids = prompt.encode(example.question, example.level, backbone.tokenizer)
    executor = backbone.executor
    store = PrefixStore(config.prefix_store_mb << 20)  # prompt states per prefix, reused across rounds

    def evaluate(programs: Sequence[Program]) -> list[Evaluation]:
        outs = executor.generate([ids], programs, config.max_new_tokens, stop_token_ids=stops, prefix_store=store)
        evals = []
        for program, g in zip(programs, outs, strict=True):
            prediction, ok = grade(g.text, example.answer, example.answer_kind)
            evals.append(Evaluation(program.text, float(ok), len(program), prediction, g.text))
        return evals

    start = time.perf_counter()
    result = search(executor.depth, evaluate, config.search)
    seconds = time.perf_counter() - start
    shortest = result.shortest
    compact, why = None, None
    if shortest is not None:
        try:
            compact = str(CompactProgram.from_program(Program.parse(shortest.program), executor.depth, config.k_max))
        except ProgramError as err:
            why = str(err)
    record = LabelRecord(
        **record_header(example, backbone.spec, executor.depth, prompt.id),
        prompt_tokens=len(ids),
        space=config.search.space,
        base_program=result.base.program,
        base_prediction=result.base.prediction,
        base_text=result.base.text,
        base_correct=result.base.reward > 0,
        evaluated=tuple(Evaluated(e.program, e.reward, e.length, e.prediction) for e in result.evaluations),
        valid=tuple(e.program for e in result.valid),
        shortest=shortest.program if shortest else None,
        shortest_length=shortest.length if shortest else None,
        compact=compact,
        compact_error=why,
        evaluations=len(result.evaluations),
    )
    return record, seconds


@dataclass
class SearchLabeler:
    """Labels each input by an MCTS search over programs (``labels.jsonl``); see :class:`~polar.labeling.run.Labeler`.

    ``backbone``, when given, is used as it is (its ``spec`` is what the records name); otherwise ``model`` is
    loaded on ``device`` when the first input is labeled (a folder labeled to the end loads no model).
    """

    model: str
    tasks: str | Path
    config: LabelConfig = field(default_factory=LabelConfig)
    device: str = "auto"
    backbone: Backbone | None = None
    engine: EngineConfig = field(default_factory=EngineConfig)  # dtype and threads, when the model is loaded here
    record_kind: ClassVar[type] = LabelRecord

    @property
    def name(self) -> str:
        """The search space (skip, loop or joint): the default label folder's name."""
        return self.config.search.space

    @cached_property
    def prompt(self) -> PromptSpec:
        """The prompt of these settings (recorded in ``settings.json``)."""
        return self.config.prompt_spec(self.tasks)

    def _result_settings(self) -> dict:
        # Not prefix_store_mb (speed only) nor where the pool file lies: the prompt spec records its content.
        return {k: v for k, v in self.config.to_dict().items() if k not in ("prefix_store_mb", "shots_from")}

    def prepare(self, out_dir: Path, restart_on_change: bool = False) -> None:
        """Create ``out_dir`` for these settings, or check that what it holds was made with them."""
        settings = {
            "schema": SCHEMA,
            "model": self.model,
            "tasks": str(self.tasks),
            "config": self._result_settings(),
            "prompt": self.prompt.to_dict(),
            "engine": self.numerics(),
        }
        check_settings(Path(out_dir), settings, restart_on_change)

    def numerics(self) -> dict:
        """The dtype, device and threads the labels are (to be) made with: part of the folder's settings."""
        if self.backbone is not None:
            return self.backbone.numerics
        return numerics(self.engine.dtype, self.device, self.engine.threads)

    def label_batch(self, examples: Sequence[Example]) -> Iterator[tuple[LabelRecord, float]]:
        """Search each of ``examples`` in turn; yields its record and search seconds as soon as it is done."""
        if self.backbone is None:
            self.backbone = load(self.model, self.device, self.engine.dtype, threads=self.engine.threads)
        stops = stop_token_ids(self.backbone.tokenizer)
        for example in examples:
            yield label_one(self.backbone, example, self.prompt, self.config, stops)

    def finish(self, out_dir: Path, ids: Sequence[str]) -> Path:
        """Merge the shards of ``out_dir`` into ``labels.jsonl`` (in the order of ``ids``) and write the manifest."""
        merged = merge_shards(out_dir, ids)
        head = {"model": self.model, "tasks": str(self.tasks)}
        verdicts = [r.base_correct for r in read_labels(merged)]
        write_manifest(out_dir, head, verdicts, {"config": self._result_settings(), "prompt": self.prompt.id})
        return merged
