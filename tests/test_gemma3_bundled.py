"""The bundled Gemma-3-270M: sliding-window and global layers, a base model (plain prompts)."""

import pytest
import torch

from polar.backbone import load
from polar.hf import FULL, SLIDING

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma():
    return load("gemma3-270m", device="cpu")


def test_loads_as_a_base_model_with_both_attention_kinds(gemma):
    assert gemma.model_type == "gemma3_text" and gemma.depth == 18 and not gemma.chat
    kinds = gemma.executor.decoder.layer_kinds
    assert set(kinds) == {FULL, SLIDING}
    assert gemma.encode_prompt("Question: 2+2?\nAnswer:")[0] == gemma.tokenizer.bos_token_id


def test_identity_equals_stock_and_loops_cache_correctly(gemma):
    ids = gemma.encode_prompt("Question: What is 3 + 4?\nAnswer:")
    x = torch.tensor([ids])
    stock_logits = gemma.model(x).logits
    ours = gemma.executor.forward(x, torch.ones_like(x), gemma.executor.plan(["0-17"]))
    torch.testing.assert_close(ours, stock_logits.float(), rtol=1e-3, atol=1e-3)
    # Loop a global layer (5) and a sliding one (4): each visit keeps its own kind and cache slot.
    loop = "0-5,4-5,6-17"
    cached, recomputed = (gemma.executor.generate([ids], [loop], 10, use_cache=c)[0] for c in (True, False))
    assert cached.tokens == recomputed.tokens and cached.layers_per_token == 20


def test_menu_grid_runs_questions_of_every_length_together_and_as_alone(gemma, monkeypatch):
    """Its 512-token window covers a labeling row (prompt and answer), so one grid batches every question length."""
    import polar.grid
    from polar.grid import generate_grid
    from polar.ingest import synthetic_shots
    from polar.programs import Program
    from polar.tasks import synthetic
    from polar.tasks.prompts import PromptSpec, stop_token_ids

    spec = PromptSpec.from_examples(synthetic_shots(), "plain", 3, "synthetic shots")
    prompts = [spec.encode(e.question, e.level, gemma.tokenizer) for e in synthetic.generate(3, 4, 2, "train")]
    assert len({len(p) for p in prompts}) > 1  # questions of several lengths
    programs = [Program.parse(p) for p in ("0-17", "0-16", "0-8,7-17")]
    stops, batches = stop_token_ids(gemma.tokenizer), []
    run = polar.grid._suffixes
    monkeypatch.setattr(polar.grid, "_suffixes", lambda *a: batches.append(len(a[4])) or run(*a))
    grid = generate_grid(gemma.executor, prompts, programs, 8, stops)
    assert batches == [len(prompts)]
    for ids, row in zip(prompts, grid, strict=True):
        alone = gemma.executor.generate([ids], programs, 8, stop_token_ids=stops)
        assert [c.tokens for c in row] == [g.tokens for g in alone]
