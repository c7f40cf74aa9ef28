import json

import pytest
import torch
from tiny import tiny_model
from transformers import GPT2Config, GPT2LMHeadModel

from polar.backbone import BUNDLED, ModelSpecError, load, models_dir
from polar.hf import Decoder, UnsupportedModelError
from polar.programs import Program


def test_unknown_name_lists_the_bundled_models():
    with pytest.raises(ModelSpecError, match="unknown model 'smollm3'.*smollm2-135m, gemma3-270m"):
        load("smollm3")


def test_missing_paths_are_named():
    with pytest.raises(ModelSpecError, match="GGUF file not found: nowhere/m.gguf"):
        load("nowhere/m.gguf")
    with pytest.raises(ModelSpecError, match="model path not found: ./nowhere"):
        load("./nowhere")


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelSpecError, match="no config.json"):
        load(str(tmp_path))


def test_unreachable_hub_id_says_what_to_do_instead():
    with pytest.raises(
        ModelSpecError, match="could not load 'nobody/no-such-model' from the Hugging Face hub.*bundled"
    ):
        load("nobody/no-such-model")


def test_unsupported_architecture_is_refused(tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="'gpt2' is not supported.*llama"):
        load(str(tmp_path))
    with pytest.raises(UnsupportedModelError, match="gpt2"):
        Decoder.of(GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64)))


def test_layer_kinds_follow_the_config():
    assert set(Decoder.of(tiny_model("gemma3")).layer_kinds) == {"full_attention", "sliding_attention"}
    assert set(Decoder.of(tiny_model("mistral")).layer_kinds) == {"sliding_attention"}
    assert set(Decoder.of(tiny_model("llama")).layer_kinds) == {"full_attention"}


@pytest.mark.slow
def test_local_folder_loads_with_the_bundled_tokenizer(tmp_path, smollm2):
    model = tiny_model("qwen3", vocab_size=len(smollm2.tokenizer))
    model.save_pretrained(tmp_path)
    smollm2.tokenizer.save_pretrained(tmp_path)
    backbone = load(str(tmp_path), device="cpu")
    assert backbone.model_type == "qwen3" and backbone.depth == 6
    assert backbone.chat  # the tokenizer has a chat template
    g = backbone.executor.generate([backbone.encode_prompt("hi")], ["0-2,1-2,3-5"], 4)[0]
    assert g.layers_per_token == 8


@pytest.mark.slow
def test_bundled_smollm2_loads_and_answers(smollm2):
    assert smollm2.depth == BUNDLED["smollm2-135m"].depth == 30 and smollm2.chat and smollm2.model_type == "llama"
    meta = json.loads((models_dir() / "smollm2-135m" / "polar.json").read_text())
    assert meta["depth"] == 30 and len(meta["source_sha256"]) == 64
    ids = smollm2.encode_prompt("What is 7 + 5?")
    full, skip = smollm2.executor.generate([ids], [Program.identity(30), "0-4,8-29"], max_new_tokens=24)
    assert "12" in full.text
    assert "12" in skip.text and skip.layers_per_token == 27


@pytest.mark.slow
def test_bundled_smollm2_identity_equals_stock_and_loops_cache_correctly(smollm2):
    ids = smollm2.encode_prompt("Name a colour.")
    x = torch.tensor([ids])
    stock = smollm2.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12, do_sample=False)
    ours = smollm2.executor.generate([ids], ["0-29"], 12)[0]
    assert ours.tokens == stock[0, len(ids) :].tolist()
    loop = "0-9,8-9,10-29"
    cached, recomputed = (smollm2.executor.generate([ids], [loop], 12, use_cache=c)[0] for c in (True, False))
    assert cached.tokens == recomputed.tokens


def test_processes_that_start_together_convert_a_bundled_model_once(tmp_path, monkeypatch):
    # Two labelers (or test workers) on a fresh clone: the second waits for the first one's folder instead of
    # converting again and replacing it while the first reads from it.
    import threading
    import time

    import polar.backbone as backbone

    monkeypatch.setenv("POLAR_MODELS_DIR", str(tmp_path))
    calls = []

    def slow_convert(name, out):
        calls.append(name)
        time.sleep(0.5)
        out.mkdir()
        (out / backbone._META).write_text("{}")

    monkeypatch.setattr(backbone, "convert", slow_convert)
    results = []
    threads = [threading.Thread(target=lambda: results.append(backbone.ensure_converted("m"))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["m"] and results == [tmp_path / "m"] * 3


def test_check_spec_refuses_what_cannot_load_without_loading(tmp_path):
    from polar.backbone import ModelSpecError, check_spec

    check_spec("smollm2-135m")  # bundled: nothing converted or loaded to say so
    check_spec("Qwen/Qwen3-0.6B")  # a hub id is not looked up
    (tmp_path / "empty").mkdir()
    bad = {
        "smollm2-135": "unknown model 'smollm2-135': bundled models are smollm2-135m",
        str(tmp_path / "missing.gguf"): "GGUF file not found",
        str(tmp_path / "empty"): "no config.json in it",
        str(tmp_path / "nowhere"): "model path not found",
    }
    for spec, message in bad.items():
        with pytest.raises(ModelSpecError, match=message):
            check_spec(spec)


def test_depth_and_slug_come_from_the_spec_without_loading_weights(tmp_path):
    from polar.backbone import model_depth, model_slug

    tiny_model("llama").config.save_pretrained(tmp_path / "m")  # a config alone: no weights to load
    assert model_depth(str(tmp_path / "m")) == tiny_model("llama").config.num_hidden_layers
    assert model_depth("gemma3-270m") == BUNDLED["gemma3-270m"].depth  # not converted for it
    with pytest.raises(ModelSpecError, match="model path not found"):
        model_depth(str(tmp_path / "nowhere"))
    assert [model_slug(s) for s in ("smollm2-135m", "models/smollm2-135m/", "x/q.gguf", "Qwen/Qwen3-0.6B")] == [
        "smollm2-135m",
        "smollm2-135m",
        "q",
        "Qwen3-0.6B",
    ]
