"""The MLflow pyfunc model: the base model run along the predictor's program for each question.

A "models from code" script (MLflow 3): :func:`polar.registry.register` logs this file as the model,
with the predictor folder (safetensors + JSON config) as an artifact; nothing is pickled. Serve with

    MLFLOW_TRACKING_URI=sqlite:///mlflow/mlflow.db mlflow models serve -m models:/NAME@champion --env-manager local

It is the system the evaluation measured: the same prompt (the predictor's recorded prompt spec: style,
shots and the shots themselves), the same program choice (:func:`polar.predictor.predict`), the same
generation budget and the same answer extraction as ``polar evaluate``.

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
        from polar.backbone import load
        from polar.embedder import load_embedder
        from polar.predictor import load as load_predictor
        from polar.predictor import prompt_spec

        config = context.model_config or {}
        self.predictor = load_predictor(context.artifacts["predictor"])
        meta = self.predictor.config.meta
        self.backbone = load(config.get("base_model") or meta["base_model"], device=config.get("device", "auto"))
        self.embedder = load_embedder(meta["embedder"], backbone=self.backbone)
        self.prompt = prompt_spec(self.predictor)
        self.max_new_tokens = int(config["max_new_tokens"])
        self.answer_kind = config.get("answer_kind", "number")

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:  # noqa: ARG002
        from polar.predictor import predict
        from polar.tasks.answers import extract_answer
        from polar.tasks.prompts import answer_line, stop_token_ids

        frame = pd.DataFrame(model_input)
        if "question" not in frame:
            raise ValueError("input needs a 'question' column (and optionally 'level')")
        questions = [str(q) for q in frame["question"]]
        levels = [str(v) if isinstance(v, str) and v else None for v in frame.get("level", [None] * len(frame))]
        programs = [ranked[0] for ranked in predict(self.predictor, self.embedder, questions, 1)]
        tok, stops = self.backbone.tokenizer, stop_token_ids(self.backbone.tokenizer)
        rows = []
        for question, level, program in zip(questions, levels, programs, strict=True):
            ids = self.prompt.encode(question, level, tok)
            g = self.backbone.executor.generate([ids], [program], self.max_new_tokens, stop_token_ids=stops)[0]
            rows.append(
                {
                    "text": g.text,
                    "answer": extract_answer(answer_line(g.text or ""), self.answer_kind),
                    "program": program.text,
                    "layers": len(program),
                    "depth": self.backbone.depth,
                }
            )
        return pd.DataFrame(rows)


mlflow.models.set_model(PolarModel())
