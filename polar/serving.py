"""The MLflow pyfunc model: the base model run along the predictor's program for each question.

A "models from code" script (MLflow 3): :func:`polar.registry.register` logs this file as the model,
with the predictor folder (safetensors + JSON config) as an artifact; nothing is pickled. Serve with

    MLFLOW_TRACKING_URI=sqlite:///mlflow/mlflow.db mlflow models serve -m models:/NAME@champion --env-manager local

Input: a table with a ``question`` column (and optionally ``prompt``: the full prompt to run instead
of the default few-shot prompt). Output, per row: the generated ``text``, its one-line ``answer``,
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

        config = context.model_config or {}
        self.predictor = load_predictor(context.artifacts["predictor"])
        meta = self.predictor.config.meta
        self.backbone = load(config.get("base_model") or meta["base_model"], device=config.get("device", "auto"))
        self.embedder = load_embedder(meta["embedder"], backbone=self.backbone)
        self.prompt = config.get("prompt", "plain")
        self.max_new_tokens = int(config.get("max_new_tokens", 50))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:  # noqa: ARG002
        import torch

        from polar.predictor import decode
        from polar.tasks.prompts import PromptBuilder, answer_line, stop_token_ids

        frame = pd.DataFrame(model_input)
        if "question" not in frame:
            raise ValueError("input needs a 'question' column")
        questions = [str(q) for q in frame["question"]]
        x, mask = self.embedder(questions)
        with torch.no_grad():
            b, o = self.predictor(x, mask)
        programs = [decode(b[i], o[i], self.predictor.config, 1)[0] for i in range(len(questions))]
        builder, tok = PromptBuilder(self.prompt), self.backbone.tokenizer
        stops = stop_token_ids(tok)
        rows = []
        for i, (question, program) in enumerate(zip(questions, programs, strict=True)):
            if "prompt" in frame and isinstance(frame["prompt"].iloc[i], str):
                ids = self.backbone.encode_prompt(frame["prompt"].iloc[i])
            else:
                ids = builder.encode(question, [], tok)
            g = self.backbone.executor.generate([ids], [program], self.max_new_tokens, stop_token_ids=stops)[0]
            rows.append(
                {
                    "text": g.text,
                    "answer": answer_line(g.text or "").strip(),
                    "program": program.text,
                    "layers": len(program),
                    "depth": self.backbone.depth,
                }
            )
        return pd.DataFrame(rows)


mlflow.models.set_model(PolarModel())
