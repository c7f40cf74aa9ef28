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
    repo.mkdir()
    shutil.copytree(ROOT / "polar", repo / "polar", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base_models"] = {"smollm2-135m": {"spec": "smollm2-135m"}}
    params["ingest"].update(levels="1-2", train_per_level=6, test_per_level=3)
    params["label"].update(simulations=3, max_new_tokens=6, shots=1)
    params["train"].update(epochs=3)
    params["evaluate"].update(k=2)
    for section, values in overrides.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    bin_dir = Path(sys.executable).parent
    for cmd in (["git", "init", "-q"], [str(bin_dir / "dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=repo, check=True)
    return repo


RUNNER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from prefect.testing.utilities import prefect_test_harness
from pipeline import pipeline
with prefect_test_harness(server_startup_timeout=180):
    print("OUTCOME", json.dumps(pipeline(cwd=sys.argv[2])))
"""


def _env(repo: Path, home: Path | None = None) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{repo}/mlflow/mlflow.db", "DVC_NO_ANALYTICS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if home is not None:
        env["PREFECT_HOME"] = str(home)  # runs never write into the user's home
    return env


def _run(repo: Path, home: Path) -> dict:
    cmd = [sys.executable, "-c", RUNNER, str(ROOT / "flows"), str(repo)]
    proc = subprocess.run(cmd, cwd=repo, env=_env(repo, home), capture_output=True, text=True)
    line = [x for x in proc.stdout.splitlines() if x.startswith("OUTCOME ")]
    assert line, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(line[-1].removeprefix("OUTCOME "))


def test_pipeline_end_to_end_cached_then_gated(tmp_path):
    repo = _repo(tmp_path)
    assert _run(repo, tmp_path / "prefect") == {"smollm2-135m": "registered"}
    metrics = json.loads((repo / "reports/smollm2-135m/evaluation/metrics.json").read_text())
    assert metrics["inputs"] == 6 and "predictor" in metrics["methods"]
    registry = json.loads((repo / "reports/smollm2-135m/registry.json").read_text())
    assert registry["name"] == "polar-smollm2-135m" and registry["version"] == "1"
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert {"label@smollm2-135m", "train@smollm2-135m", "register@smollm2-135m"} <= set(lock)
    status = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), "status"], cwd=repo, capture_output=True, text=True, check=True
    )
    assert "up to date" in status.stdout.lower() or status.stdout.strip() == "", status.stdout
    lineage = subprocess.run(
        [str(Path(sys.executable).parent / "polar"), "lineage", "models:/polar-smollm2-135m@candidate", "--json"],
        cwd=repo,
        capture_output=True,
        text=True,
        env=_env(repo),
    )
    info = json.loads(lineage.stdout)
    roles = {i["role"]: i for i in info["inputs"]}
    assert roles["labels"]["found_in"] == ["cache"] and roles["predictor"]["found_in"] == ["cache"], lineage.stdout

    # A stricter validation now fails: the chain stops there; no retraining, no new registry version.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["validate"]["min_valid_share"] = 1.01
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    weights = repo / "models/predictors/smollm2-135m/predictor.safetensors"
    before = weights.stat().st_mtime_ns
    assert _run(repo, tmp_path / "prefect") == {"smollm2-135m": "stopped at validate@smollm2-135m"}
    assert weights.stat().st_mtime_ns == before
    report = json.loads((repo / "reports/smollm2-135m/validation/validation.json").read_text())
    assert not report["success"] and (repo / report["data_docs"]).exists()
    versions = subprocess.run(
        [sys.executable, "-c", "import mlflow; print(len(mlflow.MlflowClient().search_model_versions()))"],
        env=_env(repo),
        capture_output=True,
        text=True,
    )
    assert versions.stdout.strip().splitlines()[-1] == "1", versions.stderr[-2000:]


def test_unknown_base_model_is_refused_before_any_stage():
    sys.path.insert(0, str(ROOT / "flows"))
    from pipeline import base_models, pipeline

    assert base_models(ROOT) == list(yaml.safe_load((ROOT / "params.yaml").read_text())["base_models"])
    with pytest.raises(ValueError, match="unknown base models \\['nope'\\]: params.yaml lists"):
        pipeline.fn(models=["nope"], cwd=str(ROOT))


def test_scheduled_retraining_deployment_follows_params():
    sys.path.insert(0, str(ROOT / "flows"))
    from serve import DEPLOYMENT, retraining_deployment

    deployment = retraining_deployment(ROOT)
    cron = yaml.safe_load((ROOT / "params.yaml").read_text())["schedule"]["cron"]
    assert deployment.name == DEPLOYMENT and deployment.schedules[0].schedule.cron == cron
    assert deployment.parameters["cwd"] == str(ROOT)
