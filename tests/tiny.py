"""Tiny randomly initialised models, one per supported architecture, built from a config (no download)."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

DEPTH = 6
VOCAB = 96
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=DEPTH,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    # A wide init gives peaked next-token distributions, so that greedy comparisons between
    # numerically different but equivalent paths never hinge on a near tie.
    initializer_range=0.3,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    tie_word_embeddings=False,
)

CONFIGS = {
    "llama": lambda: LlamaConfig(**COMMON),
    "qwen2": lambda: Qwen2Config(**COMMON),
    "qwen3": lambda: Qwen3Config(**COMMON, head_dim=16),
    # Sliding windows shorter than the test prompts, so that the window really cuts.
    "mistral": lambda: MistralConfig(**COMMON, sliding_window=7),
    "gemma2": lambda: Gemma2Config(**COMMON, head_dim=16, sliding_window=7, query_pre_attn_scalar=16),
    "gemma3": lambda: Gemma3TextConfig(
        **COMMON, head_dim=16, sliding_window=7, query_pre_attn_scalar=16, sliding_window_pattern=3
    ),
    "phi3": lambda: Phi3Config(**{**COMMON, "pad_token_id": 0}),
}

ARCHS = sorted(CONFIGS)


def tiny_model(arch: str, seed: int = 0, vocab_size: int = VOCAB):
    torch.manual_seed(seed)
    config = CONFIGS[arch]()
    config.vocab_size = vocab_size
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random weights of a generation model emit EOS whenever it happens to be argmax: keep the
    # generated sequences long by making EOS (and padding) unlikely.
    with torch.no_grad():
        head = model.get_output_embeddings()
        head.weight[2].mul_(0.0)
        head.weight[0].mul_(0.0)
    return model.eval()


def prompt(seed: int, length: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (length,), generator=g).tolist()


def word_embedder(dim: int = 8):
    """A question embedder with no model to load: one fixed random vector per word (seeded by the word's crc32)."""
    import zlib

    from polar.embedder import Embedder

    def encode(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [[zlib.crc32(w.encode()) for w in t.split()] or [0] for t in texts]
        x = torch.zeros(len(rows), max(map(len, rows)), dim)  # (B, T, E)
        mask = torch.zeros(x.shape[:2], dtype=torch.long)  # (B, T)
        for i, row in enumerate(rows):
            x[i, : len(row)] = torch.stack([torch.randn(dim, generator=torch.Generator().manual_seed(s)) for s in row])
            mask[i, : len(row)] = 1
        return x, mask

    return Embedder("words", dim, encode)
