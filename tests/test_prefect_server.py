"""Against a real `prefect server start` on loopback: labeling fanned out to process workers on the
`gpu` work pool, failed shards, the new-base-model trigger, and clear errors for missing servers and workers."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from servers import BIN, env_with_bin, free_port, running

from polar.ingest import ingest
from polar.labeling.folder import MenuRecord, read_labels
from polar.labeling.run import label
from polar.settings import IngestConfig, LabelConfig, MenuConfig, SearchConfig

pytestmark = pytest.mark.slow  # a server, workers, the bundled tokenizer

ROOT = Path(__file__).resolve().parents[1]
CONFIG = LabelConfig(shots=1, max_new_tokens=6, search=SearchConfig(simulations=6, batch=3))
FLAGS = ["--shots", "1", "--max-new-tokens", "6", "--simulations", "6", "--batch", "3", "--device", "cpu"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real Prefect server with its own home folder; yields (api_url, env for clients of it)."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = env_with_bin(PREFECT_HOME=str(home), PREFECT_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env["PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS"] = "2"  # schedule runs at once, not after a minute
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with running(cmd, {**env, "PREFECT_API_URL": ""}, f"{api}/health", "prefect server", home / "server.log"):
        yield api, env


@pytest.fixture(scope="module")
def workers(server, tmp_path_factory):
    """Two process workers on the `gpu` pool, one shard at a time each (as on two GPUs)."""
    api, env = server
    logs = tmp_path_factory.mktemp("workers")
    cmd = [str(BIN / "prefect"), "worker", "start", "--pool", "gpu", "--type", "process", "--limit", "1"]
    with (
        running([*cmd, "--name", "w0"], env, None, "worker w0", logs / "w0.log"),
        running([*cmd, "--name", "w1"], env, None, "worker w1", logs / "w1.log"),
    ):
        deadline = time.time() + 120
        while len(_online(api, "gpu")) < 2:
            assert time.time() < deadline, (logs / "w0.log").read_text()[-3000:]
            time.sleep(1)
        yield logs


def _online(api: str, pool: str) -> list[str]:
    try:  # a server on two busy cores can take more than httpx's 5 s to answer: the callers poll again
        response = httpx.post(f"{api}/work_pools/{pool}/workers/filter", json={}, timeout=30)
    except httpx.HTTPError:
        return []
    return [w["name"] for w in response.json()] if response.status_code == 200 else []


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    paths, _ = ingest(tmp_path_factory.mktemp("tasks"), IngestConfig(levels="1,4", train=3, validation=1, test=1))
    return paths["train"]


def _polar(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "polar"), *args], cwd=ROOT, env=env, capture_output=True, text=True)


def test_labeling_fans_out_to_the_pool_workers(server, workers, tiny_dir, tasks, tmp_path):
    _, env = server
    out = tmp_path / "pooled"
    args = ["label", "--model", str(tiny_dir), "--tasks", str(tasks), "--out", str(out), *FLAGS]
    proc = _polar([*args, "--pool", "gpu", "--shards", "3"], env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    straight = label(str(tiny_dir), tasks, tmp_path / "straight", CONFIG, device="cpu")
    assert (out / "labels.jsonl").read_bytes() == straight.read_bytes()  # the same bytes, however it was split
    assert not list(out.glob("shard-*.jsonl"))
    worked = [w for w in ("w0", "w1") if "label shard" in (workers / f"{w}.log").read_text(errors="replace")]
    assert worked, "no worker ran a shard"
    # Run again: every shard is labeled, nothing is submitted, the labels stay as they are.
    before = (out / "labels.jsonl").read_text()
    again = _polar([*args, "--pool", "gpu", "--shards", "3"], env)
    assert again.returncode == 0 and (out / "labels.jsonl").read_text() == before, again.stderr[-2000:]


@pytest.mark.usefixtures("workers")
def test_menus_fan_out_to_the_pool_workers_too(server, tiny_dir, tasks, tmp_path):
    _, env = server
    menu = tmp_path / "menu.txt"
    menu.write_text("0-3,5\n1-5\n")
    out = tmp_path / "pooled"
    args = ["label", "--model", str(tiny_dir), "--tasks", str(tasks), "--out", str(out), *FLAGS]
    proc = _polar([*args, "--menu", str(menu), "--samples", "1", "--pool", "gpu", "--shards", "2"], env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    alone = label(str(tiny_dir), tasks, tmp_path / "alone", CONFIG, MenuConfig(menu=str(menu), samples=1))
    pooled, straight = read_labels(out / "menu.jsonl", MenuRecord), read_labels(alone, MenuRecord)
    assert [r.id for r in pooled] == [r.id for r in straight] and pooled[0].menu == straight[0].menu
    for a, b in zip(pooled, straight, strict=True):  # the same rewards, however the inputs were grouped
        assert [(x.program, x.prediction, x.correct, x.tokens) for x in a.results] == [
            (x.program, x.prediction, x.correct, x.tokens) for x in b.results
        ]
        assert a.sample_agreement == b.sample_agreement and a.sample_correct == b.sample_correct
    assert (out / "rewards.parquet").exists() and not list(out.glob("shard-*.jsonl"))
    assert (out / "menu.txt").read_text().splitlines()[1:] == ["0-5", "0-3,5", "1-5"]


@pytest.mark.usefixtures("workers")
def test_failed_shards_name_their_flow_runs(server, tasks, tmp_path):
    _, env = server
    out = tmp_path / "broken"
    model = tmp_path / "broken-model"  # a model folder by its look (the dispatcher checks that), unloadable
    model.mkdir()
    (model / "config.json").write_text("{}")
    args = ["label", "--model", str(model), "--tasks", str(tasks), "--out", str(out), *FLAGS]
    proc = _polar([*args, "--pool", "gpu", "--shards", "2"], env)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "shard 0/2: flow run" in proc.stderr and "FAILED" in proc.stderr and "resumes" in proc.stderr


def test_labeling_gives_up_when_the_workers_are_gone(server, tasks, tmp_path):
    # A worker that dies leaves its runs waiting forever: the dispatcher says so instead of hanging.
    # It counts as online for three heartbeats (45 s) after its last one: long enough for the command below
    # to start on a busy machine and submit the shards, which then wait for a worker that never comes.
    _, env = server
    cmd = [str(BIN / "prefect"), "worker", "start", "--pool", "stall", "--type", "process", "--name", "gone"]
    with running(cmd, {**env, "PREFECT_WORKER_HEARTBEAT_SECONDS": "15"}, None, "worker", tmp_path / "w.log"):
        deadline = time.time() + 120
        while not _online(server[0], "stall"):
            assert time.time() < deadline, (tmp_path / "w.log").read_text()[-3000:]
            time.sleep(0.5)
    out = tmp_path / "labels"
    args = ["label", "--model", "smollm2-135m", "--tasks", str(tasks), "--out", str(out), *FLAGS]
    proc = _polar([*args, "--pool", "stall", "--shards", "2"], {**env, "POLAR_POOL_STALL_SECONDS": "2"})
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "no worker has polled the work pool 'stall'" in proc.stderr and "0/2, 1/2" in proc.stderr


def test_missing_servers_and_workers_are_clear_errors(server, tasks, tmp_path):
    _, env = server
    args = ["label", "--model", "smollm2-135m", "--tasks", str(tasks), "--out", str(tmp_path / "x"), *FLAGS]
    no_worker = _polar([*args, "--pool", "nobody"], env)
    assert no_worker.returncode == 2 and "no worker polls the work pool 'nobody'" in no_worker.stderr
    assert "prefect worker start --pool nobody" in no_worker.stderr
    dead = {**env, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    unreachable = _polar([*args, "--pool", "gpu"], dead)
    assert unreachable.returncode == 2 and "Prefect server at http://127.0.0.1:9/api/health is unreachable" in (
        unreachable.stderr
    )
    assert "prefect server start" in unreachable.stderr
    pipeline = _polar(["pipeline"], dead)
    assert pipeline.returncode == 2 and "is unreachable" in pipeline.stderr
    temporary = _polar([*args, "--pool", "gpu"], {**env, "PREFECT_API_URL": ""})
    assert temporary.returncode == 2 and "needs a Prefect server that workers also reach" in temporary.stderr
    # A misspelled model fails here, once, before the pool is asked or any shard is sent to a worker.
    typo = ["label", "--model", "smollm2-135", "--tasks", str(tasks), "--out", str(tmp_path / "typo"), *FLAGS]
    misspelled = _polar([*typo, "--pool", "nobody"], env)
    assert misspelled.returncode == 2 and "unknown model 'smollm2-135': bundled models are" in misspelled.stderr
    assert "no worker polls" not in misspelled.stderr and not (tmp_path / "typo").exists()


PRELUDE = """
import json, sys, time
from prefect import get_client

def runs_of(deployment_id, seconds=90):
    deadline = time.time() + seconds
    with get_client(sync_client=True) as client:
        while time.time() < deadline:
            runs = [r for r in client.read_flow_runs() if r.deployment_id == deployment_id]
            if runs:
                return runs
            time.sleep(1)
    return []
"""


def _on_server(script: str, repo: Path, env: dict) -> dict[str, object]:
    """Run ``script`` (after PRELUDE) against the server; returns what it printed as ``KEY json`` lines."""
    cmd = [sys.executable, "-c", PRELUDE + script, str(ROOT / "flows"), str(repo)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    out = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key.isupper():
            with contextlib.suppress(json.JSONDecodeError):  # a log line, not ours
                out[key] = json.loads(value)
    out["stderr"] = proc.stderr[-3000:]
    return out


def _repo(tmp_path: Path, models: list[str]) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base_models"] = {m: {"spec": m} for m in models}
    params["pipeline"] = {"menu": models, "network": []}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    return repo


def test_a_new_base_model_triggers_its_pipeline(server, tmp_path):
    repo = _repo(tmp_path, ["smollm2-135m", "gemma3-270m"])
    (repo / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"register-menu@smollm2-135m": {}}}))
    script = """
from flows.serve import new_model_deployment, watch_base_models
deployment_id = new_model_deployment(sys.argv[2]).apply()
print("ANNOUNCED", json.dumps([watch_base_models(sys.argv[2]), watch_base_models(sys.argv[2])]))
print("RUNS", json.dumps([r.parameters for r in runs_of(deployment_id)]))
"""
    out = _on_server(script, repo, server[1])
    assert out.get("ANNOUNCED") == [["gemma3-270m"], []], out["stderr"]  # announced once, not at every check
    assert out["RUNS"] == [{"models": ["gemma3-270m"], "cwd": str(repo)}], "the trigger started no run"


def test_scheduled_retraining_gets_its_runs_on_the_server(server, tmp_path):
    # The server's scheduler must insert the cron's runs (it failed silently with SQLAlchemy 2.1).
    script = """
from flows.serve import retraining_deployment
deployment_id = retraining_deployment(sys.argv[2]).apply()
print("SCHEDULED", json.dumps([r.state.type.value for r in runs_of(deployment_id)]))
"""
    out = _on_server(script, _repo(tmp_path, ["smollm2-135m"]), server[1])
    assert out.get("SCHEDULED"), "no scheduled run appeared:\n" + out["stderr"]
    assert all(state == "SCHEDULED" for state in out["SCHEDULED"])
