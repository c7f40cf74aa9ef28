"""The network fitter (polar/training/network.py): its targets, its split, a run that learns, what it records."""

import json

import pytest
from conftest import write_labels
from tiny import tiny_model, word_embedder
from typer.testing import CliRunner

from polar.backbone import Backbone
from polar.cli import app
from polar.predictor import decode, load
from polar.programs import Program
from polar.settings import TrainConfig
from polar.training import TrainResult, train
from polar.training.network import _targets_of, load_targets
from polar.training.split import held_out_questions, split_targets


def test_targets_weight_full_depth_down_and_drop_inexpressible():
    config = TrainConfig(full_weight=0.3)
    valid = ["0-5", "0-2,4-5", "0-3,0-1"]  # the last runs layers out of order: no compact form
    targets = _targets_of("q", valid, 6, config)
    assert len(targets) == 2
    weights = sorted(t.weight for t in targets)
    assert weights == pytest.approx([0.3 / 1.3, 1 / 1.3])
    assert _targets_of("q", ["0-5"], 6, config)[0].weight == 1.0  # full depth alone keeps its weight
    assert _targets_of("q", [], 6, config) == []


def test_split_targets_never_leaks():
    config = TrainConfig()
    targets = [t for i in range(20) for t in _targets_of(f"q{i}", ["0-5", "0-4"], 6, config)]
    train_t, val_t = split_targets(targets, 0.25, seed=0)
    assert not {t.question for t in train_t} & {t.question for t in val_t}
    assert len({t.question for t in val_t}) == 5


def test_broken_label_file_names_the_line(tmp_path):
    path = write_labels(tmp_path / "labels.jsonl", [{"question": "q", "depth": 6, "valid": ["0-5"], "model": "m"}])
    path.write_text(path.read_text() + "not json\n")
    with pytest.raises(ValueError, match="labels.jsonl:2: broken record"):
        load_targets([path], TrainConfig())
    with pytest.raises(FileNotFoundError, match="run `polar label` first"):
        load_targets([tmp_path / "missing.jsonl"], TrainConfig())


@pytest.mark.slow  # the bundled tokenizer
def test_training_learns_programs_that_depend_on_the_question(tmp_path, smollm2):
    """Two kinds of question, each with its own program: the trained predictor tells them apart."""
    backbone = Backbone(tiny_model("llama", vocab_size=len(smollm2.tokenizer)), smollm2.tokenizer, "tiny", False)
    records = []
    for i in range(24):
        add = i % 2 == 0
        records.append(
            {
                "question": f"What is {i} + {i + 1}?" if add else f"Name the colour number {i}.",
                "depth": 6,
                "model": "tiny",
                "valid": ["0-2,4-5"] if add else ["0-3,3-5"],
            }
        )
    path = write_labels(tmp_path / "labels.jsonl", records)
    config = TrainConfig(embedder="backbone:1", epochs=60, batch=8, lr=2e-3, d_model=32, dropout=0.0)
    out = train([path], tmp_path / "predictor", config, backbone=backbone, device="cpu").out_dir
    model = load(out)
    assert model.config.meta["embedder"] == "backbone:1" and len(model.config.meta["labels_sha256"]) == 64
    assert model.config.decoder == "search"
    assert (out / "history.json").exists() and model.config.meta["best"]["epoch"] >= 1
    from polar.embedder import load_embedder

    x, mask = load_embedder("backbone:1", backbone)(["What is 30 + 31?", "Name the colour number 31."])
    b, o = model(x, mask)
    assert decode(b[0], o[0], model.config, 1)[0] == Program.parse("0-2,4-5")
    assert decode(b[1], o[1], model.config, 1)[0] == Program.parse("0-3,3-5")


def test_space_and_level_filters(tmp_path):
    records = [
        {"question": "a", "level": "1", "depth": 6, "model": "m", "valid": ["0-2,4-5", "0-3,3-5"]},
        {"question": "b", "level": "2", "depth": 6, "model": "m", "valid": ["0-3,3-5"]},
    ]
    path = write_labels(tmp_path / "labels.jsonl", records)
    skip, summary = load_targets([path], TrainConfig(space="skip"))
    assert [t.question for t in skip] == ["a"] and summary["inputs_with_targets"] == 1
    loop, _ = load_targets([path], TrainConfig(space="loop"))
    assert [t.question for t in loop] == ["a", "b"] and all(sum(t.boundaries) >= 2 for t in loop)
    level2, summary = load_targets([path], TrainConfig(levels=("2",)))
    assert [t.question for t in level2] == ["b"] and summary["inputs"] == 1
    with pytest.raises(ValueError, match="no input .* valid skip program .* at levels 2"):
        load_targets([path], TrainConfig(space="skip", levels=("2",)))


def test_labels_of_two_prompts_are_refused(tmp_path):
    from conftest import TEST_PROMPT

    from polar.tasks.prompts import PromptMismatch

    record = {"question": "a", "level": "1", "depth": 6, "model": "m", "valid": ["0-5"]}
    one = write_labels(tmp_path / "a" / "labels.jsonl", [record])
    two = write_labels(tmp_path / "b" / "labels.jsonl", [record], {**TEST_PROMPT, "shots": 0, "examples": {}})
    with pytest.raises(PromptMismatch, match="made with different prompts"):
        load_targets([one, two], TrainConfig())
    _, summary = load_targets([one], TrainConfig())
    assert summary["prompt"] == TEST_PROMPT


def test_train_cli_names_missing_labels(tmp_path):
    from typer.testing import CliRunner

    from polar.cli import app

    args = ["train", "--labels", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "p"), "--space", "skip"]
    result = CliRunner().invoke(app, [*args, "--levels", "1-3"])
    assert result.exit_code == 2 and "run `polar label` first" in " ".join(result.output.split())
    bad = CliRunner().invoke(app, [*args[:-2], "--space", "both"])
    assert bad.exit_code == 2 and "space must be one of" in " ".join(bad.output.split())


def test_held_out_questions_is_one_seeded_shuffle_of_the_distinct_texts():
    questions = [f"q{i}" for i in range(10)] * 3  # each labeled three times: counted once
    held = held_out_questions(questions, 0.3, seed=4)
    assert len(held) == 3 and held == held_out_questions(reversed(questions), 0.3, seed=4)  # order does not matter
    assert held != held_out_questions(questions, 0.3, seed=5)
    assert held_out_questions(["only"], 0.9, seed=0) == set()  # one question: nothing held out


def _labels(tmp_path):
    """Sums take the skip, colours the repeat: 24 inputs of two kinds, four of each held out."""
    records = []
    for i in range(24):
        add = i % 2 == 0
        question = f"What is {i} + {i + 1}?" if add else f"Name the colour number {i}."
        records.append(
            {"question": question, "depth": 6, "model": "tiny", "valid": ["0-2,4-5"] if add else ["0-3,3-5"]}
        )
    return write_labels(tmp_path / "labels" / "labels.jsonl", records)


def test_train_returns_and_records_its_result_and_the_cli_prints_it(tmp_path, monkeypatch):
    monkeypatch.setattr("polar.training.network.load_embedder", lambda *_, **__: word_embedder())
    path = _labels(tmp_path)
    args = ["train", "--labels", str(path), "--out", str(tmp_path / "p"), "--epochs", "4", "--d-model", "16"]
    run = CliRunner().invoke(app, [*args, "--batch", "8"])
    assert run.exit_code == 0, run.output
    result = TrainResult.read(tmp_path / "p")
    history = json.loads((tmp_path / "p" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]  # history.json as it always was: one entry per epoch
    best = min(history, key=lambda h: h["val_loss"])
    assert (result.method, result.unit, result.trained, result.metric) == ("network", "epoch", 4, "val_loss")
    assert (result.best, result.value) == (best["epoch"], best["val_loss"])
    assert result.label_files == (str(path),) and result.out_dir == tmp_path / "p"
    assert result.data == {
        "depth": 6,
        "model": "tiny",
        "inputs": 24,
        "inputs_with_targets": 24,
        "train_targets": 19,
        "val_targets": 5,
    }
    printed = " ".join(run.output.split())
    assert f"best epoch {result.best}, validation loss {result.value:.3f}; 24/24 inputs had a valid program" in printed
    meta = load(tmp_path / "p").config.meta
    assert meta["best"] == {"epoch": result.best, "val_loss": result.value} and meta["method"] == "network"
    assert "m2_steps" not in meta["train"] and meta["train"]["epochs"] == 4  # the settings the network read
    assert TrainResult.from_dict(json.loads(result.to_json())) == result
    again = train([path], tmp_path / "q", TrainConfig(epochs=4, d_model=16, batch=8), device="cpu")
    assert (tmp_path / "q" / "predictor.safetensors").read_bytes() == (
        tmp_path / "p" / "predictor.safetensors"
    ).read_bytes()
    assert again.value == result.value  # one seed, one result


@pytest.mark.parametrize(
    ("given", "named", "instead"),
    [
        (["--m2-steps", "50"], "--m2-steps", "--epochs"),
        (["--m2-d-model", "32"], "--m2-d-model", "--d-model"),
        (["--m2-eval-every", "5"], "--m2-eval-every", "has no setting for"),
    ],
)
def test_method_network_refuses_the_menu_settings(tmp_path, given, named, instead):
    run = CliRunner().invoke(app, ["train", "--labels", str(_labels(tmp_path)), "--out", str(tmp_path / "p"), *given])
    said = " ".join(run.output.split())
    assert run.exit_code == 2 and f"--method network does not read {named}" in said and instead in said, said
    assert not (tmp_path / "p").exists()  # refused before anything ran


def test_method_network_refuses_menu_settings_from_params_too(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  m2_lr: 0.01\n  epochs: 3\n")
    run = CliRunner().invoke(app, ["train", "--params", str(params), "--labels", "x", "--out", str(tmp_path / "p")])
    said = " ".join(run.output.split())
    assert run.exit_code == 2 and "--m2-lr (params.yaml train.m2_lr), given 0.01" in said and "--lr" in said
    params.write_text("train:\n  m2_lr: 0.0005\n")  # the default: nothing to refuse
    run = CliRunner().invoke(app, ["train", "--params", str(params), "--labels", "x", "--out", str(tmp_path / "p")])
    assert run.exit_code == 2 and "run `polar label` first" in " ".join(run.output.split())
