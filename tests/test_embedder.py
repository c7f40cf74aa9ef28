"""Frozen embedders: the base model's own hidden states, the bundled MiniLM, and clear errors."""

import pytest
import torch
from tiny import tiny_model

from polar.backbone import Backbone
from polar.embedder import EmbedderError, load_embedder


def test_minilm_gives_one_vector_per_token():
    embedder = load_embedder("minilm")
    x, mask = embedder(["What is 2 + 3?", "Tom has 5 apples and buys 2 more."], batch_size=1)
    assert embedder.dim == 384 and x.shape[0] == 2 and x.shape[2] == 384
    assert mask[0].sum() < mask[1].sum() == x.shape[1]  # padded to the longer text
    x1, _ = embedder(["What is 2 + 3?"])
    torch.testing.assert_close(x1[0, : int(mask[0].sum())], x[0, : int(mask[0].sum())], atol=1e-5, rtol=1e-4)
    assert x.requires_grad is False and not x.is_inference()  # usable as training data


@pytest.mark.slow  # the bundled tokenizer
def test_backbone_embedder_matches_the_stock_hidden_states(smollm2):
    model = tiny_model("llama", vocab_size=len(smollm2.tokenizer))
    backbone = Backbone(model, smollm2.tokenizer, "tiny", False)
    ids = smollm2.tokenizer("What is 2 + 3?")["input_ids"]
    stock = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    for n in (0, 2):
        x, mask = load_embedder(f"backbone:{n}", backbone)(["What is 2 + 3?"])
        assert mask.sum() == len(ids)
        torch.testing.assert_close(x[0], stock[n][0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("backbone:x", "write backbone:N"),
        ("backbone:99", "only 6 layers"),
        ("/no/such/encoder", "cannot load embedder"),
    ],
)
def test_bad_specs_say_what_to_write(spec, match):
    backbone = Backbone(tiny_model("llama"), None, "tiny", False)
    with pytest.raises(EmbedderError, match=match):
        load_embedder(spec, backbone)
