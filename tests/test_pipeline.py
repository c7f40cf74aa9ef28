"""End to end: the Prefect flow drives the DVC stages in a fresh git repository, on a tiny configuration.

Uses the bundled SmolLM2 with small budgets (its base answers are right often enough for labels to
exist). Then a stricter validation fails: the chain stops before training and the registry is left untouched.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _repo(tmp: Path, **overrides) -> Path:
    repo = tmp / "repo"
    repo.mkdir(parents=True)
    shutil.copytree(ROOT / "polar", repo / "polar", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base_models"] = {"smollm2-135m": {"spec": "smollm2-135m"}}
    params["pipeline"] = {"menu": ["smollm2-135m"], "network": []}
    params["ingest"].update(levels="1-2", train=6, validation=2, test=2)
    params["label"].update(simulations=3, max_new_tokens=6, shots=1)
    params["menu"].update(menu="auto:3", discovery_inputs=2, samples=2)
    params["select"].update(m2_steps=20, m2_eval_every=10)
    params["engine"].update(threads=1)  # its share of CI's 2 cores beside the other test worker
    params["train"].update(epochs=3)
    params["evaluate"].update(k=2)
    for section, values in overrides.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    bin_dir = Path(sys.executable).parent
    dvc = str(bin_dir / "dvc")
    remote = ["remote", "add", "-d", "local", str(tmp / "dvc-remote")]  # the pipeline pushes to it
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, *remote]):
        subprocess.run(cmd, cwd=repo, check=True)
    shutil.copy(ROOT / ".dvcignore", repo / ".dvcignore")  # timings are not part of the outputs' hashes
    return repo


RUNNER = """
import json, sys
from prefect.testing.utilities import prefect_test_harness
from flows.pipeline import pipeline
with prefect_test_harness(server_startup_timeout=180):
    print("OUTCOME", json.dumps(pipeline(cwd=sys.argv[2])))
"""


def _env(repo: Path, home: Path | None = None) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{repo}/mlflow/mlflow.db", "DVC_NO_ANALYTICS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if home is not None:
        env["PREFECT_HOME"] = str(home)  # runs never write into the user's home
    return env


def _start(repo: Path, home: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-c", RUNNER, str(ROOT / "flows"), str(repo)]
    return subprocess.Popen(
        cmd, cwd=repo, env=_env(repo, home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _outcome(proc: subprocess.Popen) -> dict:
    stdout, stderr = proc.communicate()
    line = [x for x in stdout.splitlines() if x.startswith("OUTCOME ")]
    assert line, stdout[-3000:] + stderr[-5000:]
    return json.loads(line[-1].removeprefix("OUTCOME "))


def _run(repo: Path, home: Path) -> dict:
    return _outcome(_start(repo, home))


def _status(repo: Path) -> str:
    return subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), "status"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout


def _stale(repo: Path) -> set[str]:
    """The stages `dvc status` reports as changed."""
    out = _status(repo)
    return {line.rstrip(":") for line in out.splitlines() if line and not line[0].isspace() and line.endswith(":")}


MLFLOW_RUNS = """
import json, mlflow
runs = mlflow.search_runs(experiment_names=["polar"], output_format="list")
print("RUNS", json.dumps([{"id": r.info.run_id, "tags": r.data.tags, "metrics": r.data.metrics} for r in runs]))
"""


def test_pipeline_end_to_end_cached_then_gated(tmp_path):
    repo = _repo(tmp_path)
    # Two runs at once (a schedule firing during a manual run): the second waits for the first, then finds
    # every stage up to date. Matrices are whole, and the registry holds one baseline version, not two.
    first, second = _start(repo, tmp_path / "prefect-1"), _start(repo, tmp_path / "prefect-2")
    assert _outcome(first) == _outcome(second) == {"smollm2-135m": "registered"}
    menus = repo / "data/menus/smollm2-135m"
    from polar.selection.matrix import Matrix, check_disjoint
    from polar.tasks.files import read_examples
    from polar.tasks.splits import normalise

    splits = {s: Matrix.load(menus / s) for s in ("train", "validation", "test")}
    assert {s: len(m.ids) for s, m in splits.items()} == {"train": 12, "validation": 4, "test": 4}
    check_disjoint(**splits)  # the main job's splits share no question (and the shots are apart)
    shots = {normalise(e.question) for e in read_examples(repo / "data/tasks/shots.parquet")}
    assert shots and not shots & {normalise(q) for m in splits.values() for q in m.inputs["question"]}
    menu = (menus / "menu.txt").read_text().split("\n", 1)[1].split()
    assert menu[0] == "0-29" and all(m.programs == tuple(menu) for m in splits.values())
    validation = json.loads((repo / "reports/smollm2-135m/menu/validation/validation.json").read_text())
    assert validation["success"]
    runs = subprocess.run([sys.executable, "-c", MLFLOW_RUNS], env=_env(repo), capture_output=True, text=True)
    runs = json.loads(runs.stdout.split("RUNS ", 1)[1])
    pipelines = [r for r in runs if r["tags"].get("polar.kind") == "pipeline"]
    registers = [r for r in runs if r["tags"].get("mlflow.parentRunId")]
    assert len(pipelines) == 2 and registers  # one MLflow run per pipeline run; the registrations nest under one
    assert {r["tags"]["mlflow.parentRunId"] for r in registers} <= {r["id"] for r in pipelines}
    for run in pipelines:  # every stage logged into its pipeline's run, cached or not
        assert {"smollm2-135m/validate-menu/success", "smollm2-135m/label-test/inputs"} <= set(run["metrics"])
        assert "smollm2-135m/select/val.B0 base greedy.pass_at_1" in run["metrics"]
    metrics = json.loads((repo / "reports/smollm2-135m/menu/evaluation/metrics.json").read_text())
    assert metrics["inputs"] == 4 and "B0 base greedy (served)" in metrics["scores"]
    assert metrics["served"]["baseline"]["agree_with_matrix"] == 4  # served answers are the matrix's
    registry = json.loads((repo / "reports/smollm2-135m/menu/registry.json").read_text())
    assert (
        registry["name"] == "polar-smollm2-135m" and registry["champion"] == registry["versions"]["baseline"]["version"]
    )
    assert "on validation" in registry["summary"] and registry["summary"].endswith("Champion: v1, B0 base greedy.")
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert {"menu@smollm2-135m", "label-test@smollm2-135m", "register-menu@smollm2-135m"} <= set(lock)
    # Nothing to act on: the menu chain is up to date, and the network chain, which runs no model, has no stages.
    assert _status(repo).strip() == "Data and pipelines are up to date.", _status(repo)
    lineage = subprocess.run(
        [str(Path(sys.executable).parent / "polar"), "lineage", "models:/polar-smollm2-135m@champion", "--json"],
        cwd=repo,
        capture_output=True,
        text=True,
        env=_env(repo),
    )
    info = json.loads(lineage.stdout)
    roles = {i["role"]: i for i in info["inputs"]}
    for role in ("labels", "predictor", "base_model"):
        assert roles[role]["found_in"] == ["cache", "remote local"], lineage.stdout
        assert roles[role]["matches"] is True, lineage.stdout

    # A second fresh clone with the same inputs and parameters writes the same dvc.lock: byte-identical
    # tasks, matrices, selection, served evaluation and registry inputs (timings live outside DVC's outputs).
    # Plain `dvc repro` of the menu chain (the flow is tested above). The converted model and the discovery are
    # carried over with their lock entries and the first clone's cache, so DVC finds those stages up to date (labels
    # equal across processes and workers are tested in test_labeling_* and test_stack); with the run cache off,
    # every other stage runs again.
    other = _repo(tmp_path / "b")
    carried = ("convert@smollm2-135m", "menu@smollm2-135m")
    for path in ("models/smollm2-135m", "data/discovery/smollm2-135m", "data/menus/smollm2-135m/menu.txt"):
        copy = shutil.copytree if (repo / path).is_dir() else shutil.copy
        (other / path).parent.mkdir(parents=True, exist_ok=True)
        copy(repo / path, other / path)
    (other / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {s: lock[s] for s in carried}}))
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "cache", "dir", str(repo / ".dvc" / "cache")], cwd=other, check=True)
    rerun = [dvc, "repro", "--no-run-cache", "register-menu@smollm2-135m"]
    rerun = subprocess.run(rerun, cwd=other, env=_env(other), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    for stage in carried:
        assert f"Stage '{stage}' didn't change, skipping" in rerun.stdout, rerun.stdout[-3000:]
    assert "Running stage 'ingest'" in rerun.stdout and "Running stage 'select@smollm2-135m'" in rerun.stdout
    # The same entries, every hash included (stage order aside: dvc.lock lists stages in the order they last ran).
    # Both runs compute on engine.threads threads, whatever else the machine runs: a grid's floats follow the
    # thread count, not the load (once, features 2e-4 apart came from runs on different thread counts).
    mine, theirs = (yaml.safe_load((r / "dvc.lock").read_text())["stages"] for r in (repo, other))
    assert mine == theirs

    # What DVC finds stale: a new base model's chain only; a search setting: the discovery (and what follows it).
    params = yaml.safe_load((repo / "params.yaml").read_text())
    added = {**params, "base_models": {**params["base_models"], "gemma3-270m": {"spec": "gemma3-270m"}}}
    added["pipeline"] = {"menu": ["smollm2-135m", "gemma3-270m"], "network": []}
    (repo / "params.yaml").write_text(yaml.safe_dump(added))
    stale = _stale(repo)
    assert stale and all(stage.endswith("@gemma3-270m") for stage in stale), stale
    assert {"menu@gemma3-270m", "register-menu@gemma3-270m"} <= stale
    (repo / "params.yaml").write_text(yaml.safe_dump({**params, "select": {**params["select"], "margin": 0.02}}))
    assert _stale(repo) == {"select@smollm2-135m"}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))

    # A stricter validation now fails: the chain stops there; no new selection, no new registry version.
    params["validate"]["max_kl"] = -1.0
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    frozen = repo / "reports/smollm2-135m/menu/selection/frozen.json"
    before = frozen.stat().st_mtime_ns
    assert _run(repo, tmp_path / "prefect") == {"smollm2-135m": "stopped at validate-menu@smollm2-135m"}
    assert frozen.stat().st_mtime_ns == before
    report = json.loads((repo / "reports/smollm2-135m/menu/validation/validation.json").read_text())
    assert not report["success"]
    versions = subprocess.run(
        [sys.executable, "-c", "import mlflow; print(len(mlflow.MlflowClient().search_model_versions()))"],
        env=_env(repo),
        capture_output=True,
        text=True,
    )
    assert versions.stdout.strip().splitlines()[-1] == str(len(registry["versions"])), versions.stderr[-2000:]


def test_a_multiple_choice_task_runs_the_menu_chain_by_likelihood(tmp_path):
    """The params switch for a multiple-choice benchmark: its own split files ingested, every split scored by
    likelihood, the answer rule fixed on validation, the winners served by likelihood as the matrix says."""
    from test_labeling_menu import ARC_ROWS

    source = tmp_path / "arc"
    source.mkdir()
    for split, part in (("train", ARC_ROWS[:24]), ("dev", ARC_ROWS[24:34]), ("test", ARC_ROWS[34:44])):
        (source / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    ingest = dict(task="arc-easy", splits="files", source=str(source), train=8, validation=6, test=6, shots=2)
    repo = _repo(tmp_path, ingest=ingest, menu={"scoring": "likelihood"})
    assert _run(repo, tmp_path / "prefect") == {"smollm2-135m": "registered"}
    from polar.selection.matrix import Matrix

    menus = repo / "data/menus/smollm2-135m"
    splits = {s: Matrix.load(menus / s) for s in ("train", "validation", "test")}
    assert {s: len(m.ids) for s, m in splits.items()} == {"train": 8, "validation": 6, "test": 6}
    assert all(m.rules == ("sum", "norm") and m.answer_logprob is not None for m in splits.values())
    frozen = json.loads((repo / "reports/smollm2-135m/menu/selection/frozen.json").read_text())
    assert frozen["scoring"] == "likelihood" and frozen["rule"]["rule"] in ("sum", "norm")
    metrics = json.loads((repo / "reports/smollm2-135m/menu/evaluation/metrics.json").read_text())
    assert metrics["served"]["baseline"]["agree_with_matrix"] == 6
    registry = json.loads((repo / "reports/smollm2-135m/menu/registry.json").read_text())
    assert registry["champion"] == registry["versions"]["baseline"]["version"]


def test_the_network_chain_is_selectable(tmp_path):
    """params.yaml's pipeline lists pick each model's chain; dvc.yaml builds the stages of the listed chains only."""
    from flows.pipeline import CHAINS, Chain, chain_of, check_models
    from polar.config import load

    dvc = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    for chain in CHAINS.values():
        assert set(chain) <= dvc
    assert load(Chain, ROOT / "params.yaml").of("smollm2-135m") == "menu"
    with pytest.raises(ValueError, match="listed under both menu and network"):
        Chain(menu=("a",), network=("a",))
    repo = _repo(tmp_path)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["pipeline"] = {"menu": [], "network": ["smollm2-135m"]}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert chain_of(repo, "smollm2-135m") == CHAINS["network"]
    stages = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), "stage", "list", "--name-only"], cwd=repo, capture_output=True,
        text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert "label@smollm2-135m" in stages and not any(s.startswith("select@") for s in stages)
    params["pipeline"] = {"menu": [], "network": []}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match="runs no chain: add it to pipeline.menu"):
        check_models(repo, None)


def test_unknown_base_model_is_refused_before_any_stage():
    from flows.pipeline import base_models, pipeline

    assert base_models(ROOT) == list(yaml.safe_load((ROOT / "params.yaml").read_text())["base_models"])
    with pytest.raises(ValueError, match="unknown base models \\['nope'\\]: params.yaml lists"):
        pipeline.fn(models=["nope"], cwd=str(ROOT))


def test_scheduled_retraining_deployment_follows_params():
    from flows.serve import DEPLOYMENT, retraining_deployment

    deployment = retraining_deployment(ROOT)
    cron = yaml.safe_load((ROOT / "params.yaml").read_text())["schedule"]["cron"]
    assert deployment.name == DEPLOYMENT and deployment.schedules[0].schedule.cron == cron
    assert deployment.parameters["cwd"] == str(ROOT)
