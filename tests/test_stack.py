"""The team stack on loopback: PostgreSQL, SeaweedFS, Prefect and MLflow servers started by `polar stack up`,
used by MLflow, DVC and `polar lineage` from two clones that share nothing but the stack's URLs."""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import pytest
from servers import BIN, env_with_bin, free_port, running
from test_registry import _metrics, _predictor

from polar.settings import IngestConfig, LabelConfig, SearchConfig
from polar.stack.config import CREDENTIAL_KEYS, Credentials, load_stack

POLAR = [str(BIN / "polar"), "stack"]


def _polar(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = env or env_with_bin(POLAR_STACK_MLFLOW_WORKERS="1")  # one server process: 2 cores, shared
    proc = subprocess.run([*POLAR, *args], env=env, capture_output=True, text=True, timeout=600)
    assert not check or proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def stack():
    # Not under pytest's private temporary folder: run as root, PostgreSQL runs as another account that must
    # reach its data folder.
    root = Path(tempfile.mkdtemp(prefix="polar-stack-"))
    root.chmod(0o711)
    ports = [f"--{s}-port={free_port()}" for s in ("postgres", "s3", "prefect", "mlflow")]
    try:
        _polar("up", "--dir", str(root), *ports)
        yield load_stack(root)
    finally:
        _polar("down", "--dir", str(root), check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def client_env(stack):
    """What a user exports after `eval "$(polar stack env)"`, read from the command's own output."""
    out = _polar("env", "--dir", str(stack.root)).stdout
    exported = dict(re.findall(r"^export (\w+)=(\S+)$", out, flags=re.M))
    assert set(exported) == {
        "PREFECT_API_URL",
        "MLFLOW_TRACKING_URI",
        "POLAR_STORE_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    }
    return exported


def _s3(stack):
    from polar.stack.client import s3_client

    creds = stack.credentials()
    return s3_client(stack.url("s3"), creds.s3_access_key, creds.s3_secret_key)


def _keys(stack, prefix: str) -> list[str]:
    listing = _s3(stack).list_objects_v2(Bucket=stack.bucket, Prefix=prefix)
    return [o["Key"] for o in listing.get("Contents", [])]


# ------------------------------------------------------------------------------ without servers
def test_credentials_are_made_once_private_and_the_environment_may_not_contradict_them(tmp_path):
    first = Credentials.load(tmp_path, create=True)
    path = tmp_path / "credentials.env"
    assert path.stat().st_mode & 0o777 == 0o600
    assert Credentials.load(tmp_path) == first  # stable across commands
    other = {CREDENTIAL_KEYS["postgres_password"]: "other"}
    with mock.patch.dict(os.environ, other), pytest.raises(ValueError, match="differs from the value the stack was"):
        Credentials.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="polar stack up"):
        Credentials.load(tmp_path / "elsewhere")


def test_a_stack_keeps_the_host_and_ports_it_was_made_with(tmp_path):
    made = load_stack(tmp_path, ports={"prefect": 14999}, create=True)
    assert load_stack(tmp_path).ports == made.ports and made.ports["prefect"] == 14999
    assert len(set(made.ports.values())) == len(made.ports)  # SeaweedFS's own ports too, all distinct
    with pytest.raises(ValueError, match="prefect 14999 -> 15000"):
        load_stack(tmp_path, ports={"prefect": 15000})
    with pytest.raises(ValueError, match="unknown service"):
        load_stack(tmp_path, ports={"redis": 6379})
    with pytest.raises(FileNotFoundError, match="no stack in"):
        load_stack(tmp_path / "none")


def test_a_store_that_is_not_there_fails_within_seconds():
    from polar.stack.client import check_store

    env = {"POLAR_STORE_URL": "s3://polar", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}
    with mock.patch.dict(os.environ, {**env, "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{free_port()}"}):
        start = time.monotonic()
        with pytest.raises(ConnectionError, match="unreachable.*polar stack up"):
            check_store()
        assert time.monotonic() - start < 30
    with mock.patch.dict(os.environ, {"POLAR_STORE_URL": "polar-bucket"}), pytest.raises(ValueError, match="s3://"):
        check_store()


# ------------------------------------------------------------------------------ on the stack
def test_up_status_and_env(stack, client_env):
    status = _polar("status", "--dir", str(stack.root))
    assert status.stdout.count(" up ") == 4, status.stdout
    creds = stack.credentials()
    assert client_env["AWS_ACCESS_KEY_ID"] == creds.s3_access_key
    assert client_env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{stack.ports['mlflow']}"
    assert _polar("up", "--dir", str(stack.root)).stderr.count("already up") == 4  # idempotent
    for service in ("prefect", "mlflow", "s3"):  # passwords travel in environments, not command lines
        pid = int((stack.root / f"{service}.pid").read_text())
        assert creds.postgres_password not in Path(f"/proc/{pid}/cmdline").read_text()
    assert (stack.pgdata / "PG_VERSION").exists() and (stack.root / "credentials.env").stat().st_mode & 0o077 == 0


def test_wrong_credentials_are_refused_by_every_server_within_seconds(stack, client_env):
    import psycopg

    from polar.stack.client import check_store

    start = time.monotonic()
    wrong = {**client_env, "AWS_SECRET_ACCESS_KEY": "wrong"}
    with mock.patch.dict(os.environ, wrong), pytest.raises(ConnectionError, match="rejected the credentials"):
        check_store()
    missing = {**client_env, "POLAR_STORE_URL": "s3://no-such-bucket"}
    with mock.patch.dict(os.environ, missing), pytest.raises(ConnectionError, match="no bucket 'no-such-bucket'"):
        check_store()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host="127.0.0.1", port=stack.ports["postgres"], user="polar", password="wrong", dbname="mlflow"
        ).close()
    assert time.monotonic() - start < 60


def test_register_and_promote_with_the_registry_in_postgres_and_artifacts_in_the_store(
    stack, client_env, tmp_path, monkeypatch
):
    import mlflow

    from polar.registry import promote, register
    from polar.stack.services import _connect

    monkeypatch.chdir(tmp_path)
    uri = client_env["MLFLOW_TRACKING_URI"]
    info = register(_predictor(tmp_path / "pred"), _metrics(tmp_path / "m.json", 0.4), tracking_uri=uri)
    assert promote(info["name"], tracking_uri=uri)["promoted"]
    assert str(mlflow.MlflowClient(uri).get_model_version_by_alias(info["name"], "champion").version) == info["version"]
    with _connect(stack, "mlflow") as conn:
        rows = conn.execute("SELECT name, version FROM model_versions").fetchall()
    assert (info["name"], int(info["version"])) in rows
    stored = _keys(stack, "mlflow/")
    assert any(k.endswith("predictor.safetensors") for k in stored), stored  # the logged model's weights
    assert f"mlflow/1/{info['run_id']}/artifacts/m.json" in stored  # the run's own files
    assert not (tmp_path / "mlflow").exists()  # nothing fell back to the local store


def _clone(src: Path, dst: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(src), str(dst)], check=True)
    return dst


def _dvc(repo: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "dvc"), *args], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_two_clones_share_data_and_lineage_through_the_stack_alone(stack, client_env, tmp_path):
    """Clone A pushes a DVC-tracked folder and registers a version that points at it; clone B, at another path
    with only the stack's URLs, resolves that version's lineage to the store and pulls the folder back."""
    from polar.stack.client import use_store_remote

    env = env_with_bin(
        **client_env,
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@t",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
    )
    a = tmp_path / "site-a" / "repo"
    (a / "data" / "labels").mkdir(parents=True)
    (a / "data" / "labels" / "labels.jsonl").write_text('{"id": "q1", "program": "0-29"}\n')
    subprocess.run(["git", "init", "-q"], cwd=a, check=True)
    _dvc(a, "init", "-q", env=env)
    _dvc(a, "add", "-q", "data/labels", env=env)
    md5 = json.loads(json.dumps(__import__("yaml").safe_load((a / "data" / "labels.dvc").read_text())))["outs"][0][
        "md5"
    ]
    (a / "dvc.lock").write_text(
        f"schema: '2.0'\nstages:\n  label:\n    outs:\n    - path: data/labels\n      md5: {md5}\n"
    )
    subprocess.run(["git", "add", "-A"], cwd=a, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "labels"], cwd=a, check=True, env=env)
    with mock.patch.dict(os.environ, client_env):
        assert use_store_remote(a) == f"{client_env['POLAR_STORE_URL']}/dvc"
    assert "stack" in (a / ".dvc" / "config.local").read_text()
    assert _dvc(a, "push", env=env).stdout.strip().endswith("pushed")
    assert any(k.endswith(md5.removesuffix(".dir")[2:] + ".dir") for k in _keys(stack, "dvc/files/md5/"))

    pred = _predictor(a / "pred")
    cfg = json.loads((pred / "config.json").read_text())
    cfg["meta"]["label_files"] = ["data/labels/labels.jsonl"]
    (pred / "config.json").write_text(json.dumps(cfg))
    from polar.registry import register

    info = register(
        pred, _metrics(a / "m.json", 0.4), tracking_uri=client_env["MLFLOW_TRACKING_URI"], lock_path=a / "dvc.lock"
    )

    b = _clone(a, tmp_path / "site-b" / "elsewhere" / "repo")
    assert not (b / ".dvc" / "config.local").exists() and not (b / "data" / "labels").exists()
    lineage = subprocess.run(
        [str(BIN / "polar"), "lineage", f"models:/{info['name']}/{info['version']}", "--json"],
        cwd=b,
        env=env,
        capture_output=True,
        text=True,
    )
    # Exit 1: this version's other inputs (predictor, task files) are not DVC-tracked here, so found nowhere.
    assert lineage.returncode == 1 and "not in the DVC cache or remote" in lineage.stderr, lineage.stderr
    labels = {i["role"]: i for i in json.loads(lineage.stdout)["inputs"]}["labels"]
    assert labels["md5"] == md5 and labels["found_in"] == ["remote stack"] and labels["matches"] is True
    with mock.patch.dict(os.environ, client_env):
        use_store_remote(b)
    _dvc(b, "pull", env=env)
    assert (b / "data" / "labels" / "labels.jsonl").read_text() == (a / "data" / "labels" / "labels.jsonl").read_text()


# ------------------------------------------------------------------------------ faults and load
REGISTER = [str(BIN / "polar"), "register", "--predictor", "pred", "--metrics", "m.json", "--out", "registry.json"]


def _sites(tmp_path: Path, n: int, pass1: float) -> list[Path]:
    """``n`` folders (clones on other machines) holding the same trained predictor and evaluation."""
    pred, metrics = _predictor(tmp_path / "pred"), _metrics(tmp_path / "m.json", pass1)
    sites = []
    for i in range(n):
        sites.append(tmp_path / f"site-{i}")
        shutil.copytree(pred, sites[-1] / "pred")
        shutil.copy(metrics, sites[-1] / "m.json")
    return sites


def _key(site: Path) -> str:
    from polar.registry import change_key

    return change_key(site / "pred", site / "m.json", {})


def _registered(client_env, key: str) -> tuple[list, list]:
    """The live registry versions made for the change ``key``, and its live MLflow runs."""
    import mlflow

    from polar.registry import CHANGE_TAG

    client = mlflow.MlflowClient(client_env["MLFLOW_TRACKING_URI"])
    versions = [v for v in client.search_model_versions("name = 'polar-tiny-model'") if v.tags.get(CHANGE_TAG) == key]
    experiment = client.get_experiment_by_name("polar").experiment_id
    runs = client.search_runs([experiment], filter_string=f"tags.`{CHANGE_TAG}` = '{key}'")
    return versions, runs


def test_four_clones_registering_one_change_at_once_make_one_version(stack, client_env, tmp_path):
    """Four pipelines in four clones reach the register stage with the same predictor and evaluation: one version,
    one run, and every clone's registry.json names it."""
    sites = _sites(tmp_path, 4, 0.41)
    env = env_with_bin(**client_env)
    procs = [
        subprocess.Popen(REGISTER, cwd=site, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for site in sites
    ]
    outs = [proc.communicate(timeout=600) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outs
    written = {(site / "registry.json").read_text() for site in sites}
    assert len(written) == 1, written
    info = json.loads(written.pop())
    key = _key(sites[0])
    versions, runs = _registered(client_env, key)
    assert [str(v.version) for v in versions] == [info["version"]]
    assert [r.info.run_id for r in runs] == [versions[0].run_id]  # the other processes' runs were deleted
    said = "".join(out for out, _ in outs)
    assert said.count(f"already registered as version {info['version']}") == 3, said
    from polar.stack.services import _connect

    with _connect(stack, "mlflow") as conn:  # versions made and deleted when registrations raced
        made = conn.execute(
            "SELECT v.version, v.current_stage FROM model_versions v JOIN model_version_tags t ON t.name = v.name "
            "AND t.version = v.version WHERE t.key = 'polar.change' AND t.value = %s",
            (key,),
        ).fetchall()
    assert sum(stage != "Deleted_Internal" for _, stage in made) == 1, made


def test_a_postgres_restart_during_a_flow_that_registers_leaves_one_whole_version(stack, client_env, tmp_path):
    """PostgreSQL (under both Prefect and MLflow) goes down for a few seconds while a flow on the stack is
    registering. Both clients retry: the flow completes, or fails with the reason and its rerun completes. Either
    way the registry holds one version of the change, with every tag, and the candidate alias on it."""
    import mlflow

    from polar.stack.services import SERVICES, _connect

    postgres = next(s for s in SERVICES if s.name == "postgres")
    (site,) = _sites(tmp_path, 1, 0.43)
    key = _key(site)
    env = env_with_bin(**client_env)
    proc = subprocess.Popen(
        [sys.executable, "-c", FLOW], cwd=site, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    query = "SELECT count(*) FROM tags WHERE key = 'polar.change' AND value = %s"
    while proc.poll() is None:  # down as soon as the register run exists: its model and version are still to come
        with _connect(stack, "mlflow") as conn:
            if conn.execute(query, (key,)).fetchone()[0]:
                break
        assert time.time() < deadline, "the flow never started its register run"
        time.sleep(0.2)
    postgres.stop(stack)
    time.sleep(3)
    postgres.start(stack)
    stdout, stderr = proc.communicate(timeout=600)
    if proc.returncode != 0:  # failed cleanly: the rerun completes what was done
        assert "Error" in stderr, stderr[-3000:]
        rerun = subprocess.run([sys.executable, "-c", FLOW], cwd=site, env=env, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
    info = json.loads((site / "registry.json").read_text())
    versions, runs = _registered(client_env, key)
    assert [str(v.version) for v in versions] == [info["version"]], stderr[-3000:]
    tags = versions[0].tags
    assert {"run_id", "git_commit", "prompt", "dvc.predictor.md5", "labels_sha256"} <= set(tags), tags
    assert [r.info.run_id for r in runs] == [tags["run_id"]]
    client = mlflow.MlflowClient(client_env["MLFLOW_TRACKING_URI"])
    assert str(client.get_model_version_by_alias("polar-tiny-model", "candidate").version) == info["version"]


FLOW = """
from prefect import flow, task
from polar.registry import publish

@task
def register():
    return publish("pred", "m.json", out="registry.json")

@flow(name="polar-postgres-restart")
def registering():
    return register()

print(registering())
"""


def test_runs_registry_and_objects_survive_a_restart(stack, client_env):
    """Stops and restarts the stack: the tests after this one run on the restarted stack."""
    import mlflow

    flow = "from prefect import flow\n@flow(name='polar-stack-check')\ndef f():\n    return 1\nf()\n"
    env = env_with_bin(**client_env)
    done = subprocess.run([sys.executable, "-c", flow], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    names = {m.name for m in mlflow.MlflowClient(client_env["MLFLOW_TRACKING_URI"]).search_registered_models()}
    objects = set(_keys(stack, ""))
    assert names and objects

    _polar("down", "--dir", str(stack.root))
    down = _polar("status", "--dir", str(stack.root), check=False)
    assert down.returncode == 1 and down.stdout.count(" down ") == 4, down.stdout
    _polar("up", "--dir", str(stack.root))

    after = {m.name for m in mlflow.MlflowClient(client_env["MLFLOW_TRACKING_URI"]).search_registered_models()}
    assert after == names and set(_keys(stack, "")) == objects
    runs = subprocess.run(
        [
            sys.executable,
            "-c",
            "from prefect import get_client\nwith get_client(sync_client=True) as c:\n"
            "    print(sorted({r.state.type.value for r in c.read_flow_runs()}))",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert runs.returncode == 0 and "COMPLETED" in runs.stdout, runs.stdout + runs.stderr


def test_a_shard_taken_over_stops_the_run_it_was_taken_from(client_env):
    """A run given up for lost that comes back (a partition) finds its shard claimed by the run submitted again."""
    from polar.stack.transfer import Store, Superseded

    with mock.patch.dict(os.environ, client_env):
        store = Store(client_env["POLAR_STORE_URL"] + "/labels")
        old = store.claim("job-t", "0of2")
        store.check("job-t", "0of2", old)
        new = store.claim("job-t", "0of2")
        with pytest.raises(Superseded, match="another run took it over"):
            store.check("job-t", "0of2", old)
        store.check("job-t", "0of2", new)
        store.drop_job("job-t")
        assert not store.list(store.key("jobs", "job-t"))


# ------------------------------------------------------------------------------ label workers elsewhere
ROOT = Path(__file__).resolve().parents[1]
CONFIG = LabelConfig(shots=1, max_new_tokens=6, search=SearchConfig(simulations=6, batch=3))
FLAGS = ["--shots", "1", "--max-new-tokens", "6", "--simulations", "6", "--batch", "3", "--device", "cpu"]


def _checkout(dst: Path) -> Path:
    """A copy of this working tree's code (what `git clone` gives, with uncommitted changes) at ``dst``."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "polar", "flows"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dst / rel)
    return dst


@pytest.fixture(scope="module")
def remote_workers(client_env, tmp_path_factory):
    """Four process workers, each in its own checkout at its own path with its own home and cache: they share
    nothing with the dispatcher or each other but the stack's URLs and key pair."""
    sites = tmp_path_factory.mktemp("sites")
    procs, logs, pids = [], {}, {}
    try:
        for name, where in WORKERS.items():
            where = sites / where
            repo = _checkout(where)
            env = env_with_bin(
                **client_env,
                PYTHONPATH=str(repo),  # this checkout's polar and flows, before the installed ones
                HOME=str(repo / "home"),
                POLAR_CACHE_DIR=str(repo / "cache"),
                PREFECT_HOME=str(repo / "prefect-home"),
                PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30",  # Prefect's least: a lost shard is found in minutes
            )
            cmd = [str(BIN / "prefect"), "worker", "start", "--pool", "stack", "--type", "process", "--limit", "1"]
            logs[name] = repo / f"{name}.log"
            procs.append(running([*cmd, "--name", name], env, None, f"worker {name}", logs[name], repo, group=True))
            pids[name] = procs[-1].__enter__().pid
        deadline = time.time() + 180
        while True:
            online = subprocess.run(
                [sys.executable, "-c", ONLINE], env=env_with_bin(**client_env), capture_output=True, text=True
            ).stdout.split()
            if set(WORKERS) <= set(online):
                break
            assert time.time() < deadline, logs["w0"].read_text()[-3000:]
            time.sleep(2)
        yield logs, pids
    finally:
        for pid in pids.values():  # all at once: each takes seconds to stop
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for proc in reversed(procs):
            proc.__exit__(None, None, None)


WORKERS = {"w0": "site-a/polar", "w1": "site-b/deep/polar", "w2": "site-c/polar", "w3": "site-d/x/y/polar"}
ONLINE = """
from prefect import get_client
with get_client(sync_client=True) as c:
    try:
        print(" ".join(w.name for w in c.read_workers_for_work_pool(work_pool_name="stack")))
    except Exception:
        pass
"""


@pytest.mark.slow  # the bundled tokenizer in the tiny model
def test_workers_in_other_checkouts_label_through_the_store_and_a_killed_one_loses_nothing(
    stack, client_env, remote_workers, tiny_dir, tmp_path
):
    """Four workers in their own checkouts label one task file through the store alone, four shards at once. One
    of them is killed
    mid-shard with the flow run it was executing, as a machine that dies: the dispatcher finds the run crashed
    (or lost: no heartbeat) and submits the shard again, the other worker resumes it from the records in the
    store, and the merged labels are byte for byte those of labeling in one process. Last in this file: it
    leaves one worker."""
    from polar.ingest import ingest
    from polar.labeling.folder import read_labels
    from polar.labeling.run import label
    from polar.tasks.files import read_examples

    logs, pids = remote_workers
    paths, _ = ingest(tmp_path / "tasks", IngestConfig(levels="1-5", train=8, validation=1, test=1))
    out = tmp_path / "dispatcher" / "pooled"
    args = ["label", "--model", str(tiny_dir), "--tasks", str(paths["train"]), "--out", str(out), *FLAGS]
    started = {name: log.read_text(errors="replace").count("labeling shard") for name, log in logs.items()}
    dispatcher = subprocess.Popen(
        [str(BIN / "polar"), *args, "--pool", "stack", "--shards", "4"],
        env=env_with_bin(**client_env, POLAR_POOL_LOST_SECONDS="75"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    n_inputs = len(read_examples(paths["train"]))
    try:
        victim, kept = None, []
        deadline = time.time() + 300
        while victim is None:  # a worker with a shard under way: records in the store, and more to label
            assert dispatcher.poll() is None and time.time() < deadline, "no shard got under way"
            started_now = {}
            for name, log in logs.items():
                text = log.read_text(errors="replace")
                if text.count("labeling shard") > started[name]:
                    started_now[name] = int(text.rsplit("labeling shard ", 1)[1].split("/")[0])
            for name in started_now:  # what they have stored cannot change while we look
                _freeze(pids[name], True)
            stored = _keys(stack, "labels/jobs/")
            for name, k in started_now.items():
                kept = [key for key in stored if f"/shard-{k}of4-" in key]
                if kept and 0 < _stored(stack, kept) < len(range(k, n_inputs, 4)):
                    assert any(key.endswith(f"/owner-{k}of4") for key in stored), stored  # its claim
                    victim = name
                    break
            for name in started_now:
                if name != victim:
                    _freeze(pids[name], False)
            time.sleep(0.3)
        _kill_tree(pids[victim])  # the worker and the flow run it started: nothing of that machine is left
        before = {r.id: r for key in kept for r in _records(stack, key)}
        stdout, stderr = dispatcher.communicate(timeout=900)
    finally:
        if dispatcher.poll() is None:
            dispatcher.kill()
    assert dispatcher.returncode == 0, stdout[-2000:] + stderr[-4000:]
    assert "submitted again (it resumes)" in stderr, stderr[-3000:]
    straight = label(str(tiny_dir), paths["train"], tmp_path / "straight", CONFIG, device="cpu")
    assert (out / "labels.jsonl").read_bytes() == straight.read_bytes()  # nothing lost, nothing twice
    merged = {r.id: r for r in read_labels(out / "labels.jsonl")}
    assert before and all(merged[i].to_json() == r.to_json() for i, r in before.items())  # kept, not redone
    assert not list(out.glob("shard-*.jsonl")) and not _keys(stack, "labels/jobs/")  # merged, the job dropped
    assert any(k.startswith("labels/blobs/sha256/") for k in _keys(stack, "labels/"))
    for log in logs.values():  # the workers never saw this machine's folders (the records name the model as
        assert str(tmp_path) not in log.read_text(errors="replace")  # given here: its path is in their logs)


def _freeze(pid: int, stop: bool) -> None:
    """Stop (or continue) a worker and every process it started."""
    import psutil

    worker = psutil.Process(pid)
    for proc in [worker, *worker.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.suspend() if stop else proc.resume()


def _kill_tree(pid: int) -> None:
    import psutil

    worker = psutil.Process(pid)
    for proc in [*worker.children(recursive=True), worker]:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def _stored(stack, keys: list[str]) -> int:
    """Records under ``keys``; 0 once they are gone (the job finished and was dropped)."""
    from botocore.exceptions import ClientError

    try:
        return sum(len(_records(stack, key)) for key in keys)
    except ClientError:
        return 0


def _records(stack, key: str):
    from polar.labeling.folder import LabelRecord

    body = _s3(stack).get_object(Bucket=stack.bucket, Key=key)["Body"].read().decode()
    return [LabelRecord.from_dict(json.loads(line)) for line in body.splitlines() if line.strip()]
