"""The flows' own logic, without a server: output streaming, new base models, deployments' settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from flows.pipeline import _stream
from flows.serve import new_base_models, new_model_deployment

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
    params = {"base_models": {"a": {"spec": "a"}, "b": {"spec": "b"}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert new_base_models(tmp_path) == ["a", "b"]  # no dvc.lock yet
    stages = {"label@a": {}, "register@a": {}, "label@b": {}}  # b's chain stopped before registering
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))
    assert new_base_models(tmp_path) == ["b"]


def test_the_trigger_runs_the_pipeline_for_the_model_the_event_names():
    deployment = new_model_deployment(ROOT)
    (trigger,) = deployment.triggers
    assert trigger.expect == {"polar.base-model.added"}
    assert trigger.parameters == {"models": ["{{ event.resource['polar.base-model'] }}"], "cwd": str(ROOT)}
