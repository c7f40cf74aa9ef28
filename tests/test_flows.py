"""The flows' own logic, without a server: output streaming, new base models, deployments' settings, the train
stage's logging."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.pipeline import _stream
from flows.serve import new_base_models, new_model_deployment
from flows.tracking import log_stage
from polar.layout import Outputs
from polar.training import TrainResult

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import sys, time
out = sys.stdout.buffer
out.write("bar 1/2\rbar 2/2\rdone\n".encode()); out.flush()
half = "█ok\n".encode()
out.write(half[:2]); out.flush(); time.sleep(0.2); out.write(half[2:]); out.flush()  # a character cut in two
out.write(b"last line without newline")
"""


def test_stream_logs_lines_and_keeps_split_characters_whole():
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    logged = []
    lines = _stream(proc, logged.append, every=0.0)
    assert lines == ["done", "█ok", "last line without newline"]
    assert proc.returncode == 0 and "�" not in "".join(logged)
    assert not any(x.startswith("bar") for x in logged)  # a bar that a finished line replaced is not logged


def test_new_base_models_are_those_without_a_registered_chain(tmp_path):
    params = {
        "base_models": {"a": {"spec": "a"}, "b": {"spec": "b"}, "c": {"spec": "c"}, "d": {"spec": "d"}},
        "pipeline": {"network": ["a", "b"], "menu": ["c"]},  # d runs no chain yet
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert new_base_models(tmp_path) == ["a", "b", "c"]  # no dvc.lock yet
    stages = {"label@a": {}, "register@a": {}, "label@b": {}, "register-menu@c": {}}  # b stopped before registering
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))
    assert new_base_models(tmp_path) == ["b"]


def test_the_trigger_runs_the_pipeline_for_the_model_the_event_names():
    deployment = new_model_deployment(ROOT)
    (trigger,) = deployment.triggers
    assert trigger.expect == {"polar.base-model.added"}
    assert trigger.parameters == {"models": ["{{ event.resource['polar.base-model'] }}"], "cwd": str(ROOT)}


NETWORK = TrainResult(Path("p"), "network", 3, "epoch", 10, "val_loss", 0.5, ("labels.jsonl",), {"inputs": 9})
MENU = TrainResult(Path("p"), "menu", 300, "step", 600, "val_right", 7.0, ("rewards.parquet",), {"inputs": 9})


@pytest.mark.parametrize(
    ("result", "history", "logged"),
    [
        (
            NETWORK,
            [{"epoch": 1, "train_loss": 0.9, "val_loss": 0.5}],
            {"best_val_loss": 0.5, "best_epoch": 3, "epochs": 10},
        ),
        (MENU, [{"step": 300, "loss": 0.1, "val_right": 7}], {"best_val_right": 7.0, "best_step": 300, "steps": 600}),
        (None, [], {}),  # a predictor that records no result (trained before results were): its files only
    ],
    ids=["network", "menu", "no-result"],
)
def test_the_train_stage_is_logged_from_its_result_whichever_method_trained(
    tmp_path, monkeypatch, result, history, logged
):
    import mlflow

    metrics, artifacts = {}, []
    monkeypatch.setattr(mlflow, "log_metrics", metrics.update)
    monkeypatch.setattr(
        mlflow, "log_artifact", lambda path, artifact_path: artifacts.append((Path(path).name, artifact_path))
    )
    folder = Outputs(tmp_path, "m").predictor
    folder.mkdir(parents=True)
    meta = {"result": result.to_dict()} if result else {}
    (folder / "config.json").write_text(json.dumps({"depth": 6, "meta": meta}))
    (folder / "history.json").write_text(json.dumps(history))
    log_stage(tmp_path, "m", "train")
    assert metrics == {f"m/train/{k}": v for k, v in logged.items()}
    assert artifacts == [("config.json", "m/train"), ("history.json", "m/train")]
