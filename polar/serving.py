"""The MLflow pyfunc model: the base model run along the registered selector's program for each question.

A "models from code" script (MLflow 3): :func:`polar.registry.register` logs this file as the model,
with the selector folder as an artifact (a fixed program, a program per level, or a predictor's safetensors and
JSON config, :mod:`polar.selection.selector`); nothing is pickled. Serve with

    MLFLOW_TRACKING_URI=sqlite:///mlflow/mlflow.db mlflow models serve -m models:/NAME@champion --env-manager local

It is the system the evaluation measured: the same program choice (:meth:`polar.selection.selector.Selector.choose`), and the
same :class:`polar.answering.Answerer` — the predictor's recorded prompt spec (style, shots and the shots
themselves), the labels' generation budget and stop tokens, and the same answer extraction as ``polar evaluate``.

Input: a table with a ``question`` column and optionally ``level`` (the level's few-shot examples are used;
without one, the pool's mixed examples). Output, per row: the generated ``text``, the extracted ``answer``,
the ``program`` (canonical text form), ``layers`` executed per token and the model's ``depth``.

A selector studied on a menu scored by likelihood (multiple choice, a cloze prompt) answers as the study did:
the input also needs a ``choices`` column (each row a list of the option texts, in order, ``question`` without
them), and ``answer`` is the letter of the choice the study's rule picks from their likelihoods, ``text`` its text.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class PolarModel(PythonModel):
    def load_context(self, context) -> None:
        from polar.answering import Answerer
        from polar.backbone import load_as_recorded
        from polar.selection.selector import Selector, artifact_meta

        config = context.model_config or {}
        folder = context.artifacts["predictor"]
        _, meta = artifact_meta(folder)
        spec = config.get("base_model") or meta["base_model"]
        backbone = load_as_recorded(spec, meta.get("numerics"), config.get("device", "auto"))  # as it was evaluated
        self.selector = Selector.load(folder, backbone=backbone)
        rule = config.get("rule", "sum")
        self.answerer = Answerer(backbone, self.selector.prompt, int(config["max_new_tokens"]), rule)
        self.answer_kind = config.get("answer_kind", "number")

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:  # noqa: ARG002
        from polar.tasks.answers import answer_of

        frame = pd.DataFrame(model_input)
        if "question" not in frame:
            raise ValueError("input needs a 'question' column (and optionally 'level')")
        questions = [str(q) for q in frame["question"]]
        levels = [str(v) if isinstance(v, str) and v else None for v in frame.get("level", [None] * len(frame))]
        programs = self.selector.choose(questions, levels)
        if self.answerer.prompt.format == "cloze":
            return self._choose(frame, questions, levels, programs)
        rows = []
        for question, level, program in zip(questions, levels, programs, strict=True):
            g = self.answerer.generate([self.answerer.encode(question, level)], [program])[0]
            rows.append(
                {
                    "text": g.text,
                    "answer": answer_of(g.text, self.answer_kind),
                    "program": program.text,
                    "layers": len(program),
                    "depth": g.depth,
                }
            )
        return pd.DataFrame(rows)

    def _choose(self, frame: pd.DataFrame, questions, levels, programs) -> pd.DataFrame:
        from polar.tasks.schema import LETTERS, Example, options_block

        if "choices" not in frame:
            raise ValueError("this model answers multiple-choice questions: the input needs a 'choices' column")
        examples = []
        for n, (question, level, choices) in enumerate(zip(questions, levels, frame["choices"], strict=True)):
            choices = tuple(str(c) for c in choices)
            if len(choices) < 2 or len(choices) > len(LETTERS):
                raise ValueError(f"row {n}: 'choices' needs 2 to {len(LETTERS)} option texts, got {len(choices)}")
            # The answer field is not read when choosing; "A" only makes the record whole.
            examples.append(Example(f"request/{n}", question + options_block(choices), "A", "request", level or "",
                                    "request", "choice", choices))  # fmt: skip
        picked = self.answerer.choose(examples, programs)
        depth = self.answerer.backbone.depth
        return pd.DataFrame(
            [
                {"text": e.choices[k], "answer": LETTERS[k], "program": p.text, "layers": len(p), "depth": depth}
                for e, k, p in zip(examples, picked, programs, strict=True)
            ]
        )


mlflow.models.set_model(PolarModel())
