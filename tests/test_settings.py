"""Each setting is declared once: params.yaml, the commands' options and dvc.yaml agree with polar/settings.py."""

from pathlib import Path

import pytest
import typer
import yaml

from flows.pipeline import Chain
from flows.serve import Schedule
from polar.cli import app
from polar.config import fields_of, load
from polar.layout import Outputs
from polar.settings import METHODS, STAGE_SETTINGS, TRAIN_SETTINGS, TRAIN_SHARED, LabelConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
READ_BY_FLOWS = {"base_models", Schedule.SECTION, Chain.SECTION}
COMMANDS = typer.main.get_command(app).commands  # name -> click command


def test_every_key_of_params_yaml_is_a_setting():
    for section, values in PARAMS.items():
        if section == "base_models":
            assert all(set(v) == {"spec"} for v in values.values())
            continue
        cls = {Schedule.SECTION: Schedule, Chain.SECTION: Chain}.get(section) or STAGE_SETTINGS.get(section)
        assert cls is not None, f"params.yaml section {section!r} is read by no stage"
        assert set(values) <= {f.name for f in fields_of(cls)}, section
        load(cls, ROOT / "params.yaml")  # and every value fits its field


def test_unknown_keys_and_bad_values_are_refused(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ValueError, match="train: no setting named epoch; the settings are .*epochs"):
        load(TrainConfig, params)
    params.write_text("train:\n  epochs: many\n")
    with pytest.raises(ValueError, match="epochs must be int, got 'many'"):
        load(TrainConfig, params)


def test_command_line_wins_over_params_and_params_over_defaults(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("label:\n  simulations: 7\n  shots: 1\n")
    config = load(LabelConfig, params, {"shots": 2})
    assert (config.search.simulations, config.shots, config.prompt) == (7, 2, "plain")
    assert load(TrainConfig, None, {"levels": "1-3"}).levels == ("1", "2", "3")


def test_each_training_setting_belongs_to_both_methods_or_to_one():
    """TRAIN_SETTINGS names every setting of TrainConfig once: shared, the network's or M2's."""
    columns = {method: [row[i] for row in TRAIN_SETTINGS if row[i]] for i, method in enumerate(METHODS)}
    declared = [*TRAIN_SHARED, *columns["network"], *columns["menu"]]
    assert sorted(declared) == sorted(f.name for f in fields_of(TrainConfig)), "each setting exactly once"
    assert all(name.startswith("m2_") for name in columns["menu"])
    assert not any(name.startswith("m2_") for name in [*TRAIN_SHARED, *columns["network"]])
    assert all(row[0] or row[1] for row in TRAIN_SETTINGS) and all(row[2] for row in TRAIN_SETTINGS)
    network, menu = TrainConfig().method_settings(), TrainConfig(method="menu").method_settings()
    assert set(network) == {*TRAIN_SHARED, *columns["network"]} and set(menu) == {*TRAIN_SHARED, *columns["menu"]}
    assert menu["m2_steps"] == 2000 and network["epochs"] == 10  # the values, read through the nested class


def test_every_setting_has_an_option_and_help():
    seen = set()
    for name, command in COMMANDS.items():
        settings = getattr(command.callback, "settings", {})
        options = {o for p in command.params for o in getattr(p, "opts", ())}
        for cls in settings.values():
            seen.add(cls)
            for f in fields_of(cls):
                assert f"--{f.name.replace('_', '-')}" in options, (
                    f"polar {name}: no option for {cls.__name__}.{f.name}"
                )
                assert f.help, f"{cls.__name__}.{f.name} has no help"
    assert seen == set(STAGE_SETTINGS.values())


def _stages():
    """dvc.yaml's stages as (name, stage, is per model)."""
    for name, stage in DVC.items():
        yield name, stage.get("do", stage), "foreach" in stage


def test_dvc_stages_read_params_yaml_and_depend_on_their_sections():
    for name, stage, _ in _stages():
        words = stage["cmd"].split()
        command = COMMANDS[words[1]]
        settings = getattr(command.callback, "settings", {})
        if not settings:
            continue
        assert "--params params.yaml" in stage["cmd"], name
        assert "${" not in stage["cmd"].replace("${key}", "").replace("${item}", ""), (
            f"{name}: settings belong in params.yaml, not the cmd"
        )
        sections = {cls.SECTION for cls in settings.values()} - {"label_pool"}  # where labeling runs: no dependency
        assert set(stage["params"]) == sections, name


def test_dvc_outputs_follow_the_layout():
    layout = Outputs(Path("."), "${key}").stage_outputs()
    for name, stage, per_model in _stages():
        if not per_model:
            continue
        declared = [
            next(iter(o)) if isinstance(o, dict) else o for k in ("outs", "metrics", "plots") for o in stage.get(k, [])
        ]
        declared = [d.replace("${item}", "${key}") for d in declared]  # the chains' stages loop over a list
        assert sorted(declared) == sorted(str(p) for p in layout[name]), name
