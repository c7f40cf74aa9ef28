import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from polar.cli import app

runner = CliRunner()


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("generate", "program", "convert", "models", "demo"):
        assert command in result.output


def test_entry_point_is_installed():
    polar = Path(sys.executable).parent / "polar"
    assert polar.exists(), "the `polar` entry point is missing from the environment: run bash .ci/setup"
    out = subprocess.run(
        [str(polar), "program", "0-3,2-3,4-9", "--depth", "10", "--json"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["compact"] == "keep(0-1) repeat(2-3) keep(4-7) keep(8-9)"


def test_program_converts_text_to_compact_and_back():
    result = runner.invoke(app, ["program", "0-7,6-7,8-29", "--depth", "30", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["length"] == 32 and info["repeated"] == [6, 7] and info["skipped"] == []
    back = runner.invoke(app, ["program", info["compact"], "--json"])
    assert json.loads(back.output)["program"] == info["program"]


def test_program_without_compact_form_says_why():
    result = runner.invoke(app, ["program", "0-5,1-2,6-9", "--depth", "10", "--json"])
    assert result.exit_code == 0
    info = json.loads(result.output)
    assert info["compact"] is None and "no compact form" in info["compact_error"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["program", "0-3,x"], "cannot parse item 2 'x'"),
        (["program", "0-40", "--depth", "30"], "layer 30 is out of range"),
        (["program", "0-3,2,2", "--depth", "30"], "layer 2 runs 3 times"),
        (["program", "keep(0-3) loop(4)"], "cannot parse segment 'loop(4)'"),
        (["generate", "--model", "no-such-model", "hi"], "unknown model 'no-such-model'"),
        (["generate", "--model", "missing/dir/m.gguf", "hi"], "GGUF file not found"),
        (["label", "--pool", "gpu", "--shard", "0/2"], "--shard and --pool do not mix"),
        (["label", "--shard", "4/4"], "shard '4/4': write K/N with 0 <= K < N, e.g. 0/4 to 3/4"),
        (["label", "--shard", "1-4"], "shard '1-4': write K/N"),
    ],
)
def test_bad_input_gets_a_clear_error(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


@pytest.mark.slow
def test_generate_json_with_and_without_cache(smollm2):  # noqa: ARG001 - converts the bundled model first
    args = ["generate", "--model", "smollm2-135m", "--program", "0-9,8-9,10-29", "--max-new-tokens", "8", "--json"]
    cached = runner.invoke(app, [*args, "What is 2 + 2?"])
    recomputed = runner.invoke(app, [*args, "--no-cache", "What is 2 + 2?"])
    assert cached.exit_code == 0, cached.output
    a, b = (json.loads(r.stdout) for r in (cached, recomputed))
    assert a["program"] == "0-9,8-29" and a["layers_per_token"] == 32 and a["prompt_style"] == "chat"
    assert a["tokens"] == b["tokens"] and a["text"] == b["text"] and not b["cache"]


@pytest.mark.slow
def test_generate_rejects_a_program_too_deep_for_the_model(smollm2):  # noqa: ARG001
    result = runner.invoke(app, ["generate", "--program", "0-30", "hi"])
    assert result.exit_code == 2
    assert "layer 30 is out of range" in result.output and "30 layers" in result.output


def test_pipeline_refuses_unknown_base_models_before_starting(monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    result = runner.invoke(app, ["pipeline", "--model", "nope"])
    assert result.exit_code == 2
    assert "unknown base models ['nope']: params.yaml lists" in " ".join(result.output.split())


def test_pipeline_outside_a_project_says_where_to_run_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["pipeline"])
    assert result.exit_code == 2
    assert "has no dvc.yaml or params.yaml: run `polar pipeline` from the root of a polar checkout" in " ".join(
        result.output.split()
    )
