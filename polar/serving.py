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
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class PolarModel(PythonModel):
    def load_context(self, context) -> None:
        from polar.answering import Answerer
        from polar.backbone import load
        from polar.selection.selector import Selector, artifact_meta

        config = context.model_config or {}
        folder = context.artifacts["predictor"]
        _, meta = artifact_meta(folder)
        backbone = load(config.get("base_model") or meta["base_model"], device=config.get("device", "auto"))
        self.selector = Selector.load(folder, backbone=backbone)
        self.answerer = Answerer(backbone, self.selector.prompt, int(config["max_new_tokens"]))
        self.answer_kind = config.get("answer_kind", "number")

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:  # noqa: ARG002
        from polar.tasks.answers import answer_of

        frame = pd.DataFrame(model_input)
        if "question" not in frame:
            raise ValueError("input needs a 'question' column (and optionally 'level')")
        questions = [str(q) for q in frame["question"]]
        levels = [str(v) if isinstance(v, str) and v else None for v in frame.get("level", [None] * len(frame))]
        programs = self.selector.choose(questions, levels)
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


mlflow.models.set_model(PolarModel())
