"""Baselines the predictor is measured against: static pruning (ShortGPT) and random programs.

ShortGPT (Men et al., 2024) removes the ``n`` layers of lowest Block Influence,
``BI_i = 1 - E[cos(h_i, h_{i+1})]`` over the tokens of calibration prompts: a layer that barely turns
its input goes first. It is one static program for every input. Random programs get, input by input,
the length of the predictor's program and are drawn by random admissible edits of the full depth,
so they isolate what the predictor's *choice* of layers is worth beyond its length.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from polar.programs import Program
from polar.search import child_programs
from polar.settings import SearchConfig

__all__ = ["block_influence", "random_program", "shortgpt_program"]


@torch.inference_mode()
def block_influence(backbone, prompts: Sequence[Sequence[int]], batch: int = 8) -> list[float]:
    """Block Influence of every layer over ``prompts`` (token ids); higher = more important.

    The last layer's output is read after the final norm by transformers' ``output_hidden_states``
    in several architectures, so its influence is not comparable: it gets ``inf`` (never removed).
    """
    executor = backbone.executor
    depth = executor.depth
    sums, count = torch.zeros(depth - 1, dtype=torch.float64), 0
    for i in range(0, len(prompts), batch):
        ids, mask = executor.pad_left(prompts[i : i + batch])
        states = backbone.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        real = mask.bool()  # (B, T)
        for layer in range(depth - 1):
            cos = torch.nn.functional.cosine_similarity(states[layer].float(), states[layer + 1].float(), dim=-1)
            sums[layer] += cos[real].double().sum().cpu()
        count += int(real.sum())
    return [*(1 - sums / count).tolist(), float("inf")]


def shortgpt_program(influence: Sequence[float], n_remove: int) -> Program:
    """The full depth without the ``n_remove`` layers of lowest influence."""
    depth = len(influence)
    n_remove = max(0, min(n_remove, depth - 1))
    drop = set(sorted(range(depth), key=lambda i: influence[i])[:n_remove])
    return Program(tuple(i for i in range(depth) if i not in drop))


def random_program(depth: int, length: int, rng: random.Random, max_visits: int = 2) -> Program:
    """A random program of ``length`` layers: random single-layer skips or repeats of the full depth
    (joint search's admissible edits), one skip and one repeat when ``length == depth``."""
    config = SearchConfig(space="joint", min_length_ratio=1e-9, max_length_ratio=10.0, max_visits=max_visits)
    program = Program.identity(depth)
    steps = ["skip", "repeat"] if length == depth else ["skip" if length < depth else "repeat"] * abs(length - depth)
    for kind in steps:
        children = [
            c for c in child_programs(program, depth, config, root=False) if (len(c) < len(program)) == (kind == "skip")
        ]
        if not children:
            break  # no admissible edit left (every layer already runs twice, say)
        program = rng.choice(children)
    return program
