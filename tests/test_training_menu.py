"""The menu fitter (polar/training/menu.py): `polar train --method menu` fits M2 with its own settings, refuses the
network's, and returns what it kept."""

import json
from pathlib import Path

import pytest
from conftest import TEST_PROMPT
from test_menu_network import PROGRAMS, _split
from tiny import word_embedder
from typer.testing import CliRunner

from polar.cli import app
from polar.predictor import load, predict
from polar.programs import Program
from polar.settings import TRAIN_SETTINGS, TrainConfig
from polar.training import TrainResult
from polar.training.split import held_out_questions, split_matrix

ROOT = Path(__file__).resolve().parents[1]


def _menu_folder(folder, n: int = 40):
    """A menu run as `polar label --menu` leaves it: the skip answers the sums, the repeat the colours."""
    from polar.labeling.folder import MenuRecord, MenuResult
    from polar.labeling.reward_matrix import export

    folder.mkdir()
    records = []
    for i in range(n):
        add = i % 2 == 0
        question = f"What is {i} + {i + 7}?" if add else f"Name the colour of flag number {i}."
        right = [False, add, not add, False]  # the full depth never: every held-out input gains by switching
        results = tuple(
            MenuResult(p, r, None, len(Program.parse(p)), -1.0, 3) for p, r in zip(PROGRAMS, right, strict=True)
        )
        records.append(
            MenuRecord(f"t/{i}", "t", "1", question, "x", "text", "tiny", 6, "plain", "menu-x", results, -1, 0, 0, 0, 0)
        )
    merged = folder / "menu.jsonl"
    merged.write_text("".join(r.to_json() + "\n" for r in records))
    export(merged, records)
    settings = {"kind": "menu", "model": "tiny", "config": {"max_new_tokens": 6}, "prompt": TEST_PROMPT}
    (folder / "settings.json").write_text(json.dumps(settings))
    return folder


@pytest.mark.slow  # MiniLM
def test_polar_train_method_menu(tmp_path):
    from typer.testing import CliRunner

    from polar.cli import app
    from polar.embedder import load_embedder

    folder = _menu_folder(tmp_path / "menu")
    # 200 steps and a decision every 20 (what --steps 200 gave before M2's own settings were declared)
    args = ["train", "--method", "menu", "--m2-steps", "200", "--m2-eval-every", "20", "--m2-lr", "0.002"]
    args += ["--labels", str(folder)]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert "menu of 4 programs; best step" in " ".join(result.output.split())
    model = load(tmp_path / "p")
    assert model.config.menu == PROGRAMS and model.config.meta["method"] == "menu"
    assert model.config.meta["data"] == {"inputs": 40, "train_inputs": 32, "val_inputs": 8}
    questions = ["What is 101 + 108?", "Name the colour of flag number 99."]
    top = [ranked[0].text for ranked in predict(model, load_embedder("minilm"), questions, k=2)]
    assert top == [PROGRAMS[1], PROGRAMS[2]]
    bad = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "nothing"), "--out", str(tmp_path / "q")])
    assert bad.exit_code != 0 and "label it first" in bad.output


def test_method_menu_trains_m2_with_exactly_its_settings_and_returns_its_result(tmp_path, monkeypatch):
    monkeypatch.setattr("polar.training.menu.load_embedder", lambda *_, **__: word_embedder())
    folder = _menu_folder(tmp_path / "menu")
    args = ["train", "--method", "menu", "--labels", str(folder), "--out", str(tmp_path / "p")]
    shape = ["--m2-steps", "40", "--m2-eval-every", "10", "--m2-d-model", "16", "--m2-ff", "32", "--m2-lr", "0.003"]
    run = CliRunner().invoke(app, [*args, *shape, "--val-fraction", "0.25"])
    assert run.exit_code == 0, run.output
    result = TrainResult.read(tmp_path / "p")
    history = json.loads((tmp_path / "p" / "history.json").read_text())
    assert [h["step"] for h in history] == [10, 20, 30, 40]  # history.json as it always was: M2's decisions
    assert (result.method, result.unit, result.trained, result.metric) == ("menu", "step", 40, "val_right")
    first_best = next(h for h in history if h["val_right"] == max(h["val_right"] for h in history))
    assert (result.best, result.value) == (first_best["step"], first_best["val_right"])  # ties: the earlier step
    assert result.data == {"inputs": 40, "train_inputs": 30, "val_inputs": 10, "menu_programs": 4}
    assert result.label_files == (str(folder / "rewards.parquet"),)
    printed = " ".join(run.output.split())
    assert f"menu of 4 programs; best step {result.best}: {result.value:g}/10 held-out inputs right" in printed
    model = load(tmp_path / "p")
    assert (model.config.d_model, model.config.ff) == (16, 32)  # M2's shape, not the network's 256
    meta = model.config.meta
    assert meta["train"]["m2_lr"] == 0.003 and "epochs" not in meta["train"] and "d_model" not in meta["train"]
    assert meta["result"] == result.to_dict() | {"out_dir": str(tmp_path / "p")}
    assert meta["best"] == {"step": result.best, "val_right": first_best["val_right"]}


# Every network setting of TrainConfig, given a value other than its default.
NETWORK_VALUES = {
    "embedder": "backbone:1",
    "epochs": "3",
    "lr": "0.01",
    "weight_decay": "0.1",
    "batch": "16",
    "seed": "3",
    "d_model": "64",
    "encoder_layers": "4",
    "dropout": "0.0",
    "full_weight": "0.5",
    "max_targets": "2",
    "space": "skip",
    "levels": "1-3",
    "identity_rule": "marginal",
    "decoder": "threshold",
}


def test_every_network_setting_has_a_value_to_refuse():
    assert set(NETWORK_VALUES) == {row[0] for row in TRAIN_SETTINGS} - {None}


@pytest.mark.parametrize("name", sorted(NETWORK_VALUES))
def test_method_menu_refuses_every_network_setting(tmp_path, name):
    flag = "--" + name.replace("_", "-")
    args = ["train", "--method", "menu", "--labels", str(tmp_path), "--out", str(tmp_path / "p")]
    run = CliRunner().invoke(app, [*args, flag, NETWORK_VALUES[name]])
    said = " ".join(run.output.split())
    assert run.exit_code == 2 and f"--method menu does not read {flag} (params.yaml train.{name})" in said, said
    instead = next(row[1] for row in TRAIN_SETTINGS if row[0] == name)
    if instead is None:
        assert "--method menu has no setting for" in said
    else:
        assert f"--{instead.replace('_', '-')} (params.yaml train.{instead}): give that instead" in said


def test_method_menu_refuses_network_settings_from_params_and_keeps_the_defaults(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  method: menu\n  epochs: 3\n  d_model: 64\n")
    run = CliRunner().invoke(app, ["train", "--params", str(params), "--labels", str(tmp_path), "--out", "p"])
    said = " ".join(run.output.split())
    assert run.exit_code == 2 and "--epochs (params.yaml train.epochs), given 3" in said and "--m2-steps" in said
    assert "--d-model (params.yaml train.d_model), given 64" in said and "--m2-d-model" in said
    # The project's params.yaml gives the network settings their defaults: --method menu goes ahead with it.
    args = ["train", "--params", str(ROOT / "params.yaml"), "--method", "menu", "--labels", str(tmp_path / "none")]
    run = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "p")])
    assert run.exit_code == 2 and "label it first" in run.output
    with pytest.raises(ValueError, match="does not read --d-model"):
        TrainConfig(method="menu", d_model=64)  # the library refuses them too


def test_the_matrix_is_split_by_the_one_question_rule_and_both_sides_must_hold_questions():
    matrix = _split(0, 40)[0]
    train, validation = split_matrix(matrix, 0.25, seed=3)
    held = held_out_questions(matrix.inputs["question"], 0.25, seed=3)
    assert set(validation.inputs["question"]) == held and len(held) == 10 and len(train.ids) == 30
    assert not set(train.inputs["question"]) & held
    with pytest.raises(
        ValueError, match="2 questions cannot be split 80%/20%: label more inputs, or change --val-fraction"
    ):
        split_matrix(_split(0, 2)[0], 0.2, seed=0)  # round(0.4) holds none out
