"""The MLflow registry: versions with lineage tags, candidate/champion aliases through gates, pyfunc serving."""

import json

import pandas as pd
import pytest
from conftest import TEST_PROMPT
from servers import BIN, env_with_bin, free_port, running
from tiny import tiny_model

from polar.predictor import PredictorConfig, ProgramPredictor, save
from polar.registry import configure, promote, register
from polar.settings import Gates
from polar.stats import mcnemar_p
from polar.tasks.prompts import PromptSpec


def _metrics(path, pass1, base=0.3, layers=0.9, n=500, swaps=0, paired=True):
    """An evaluation's metrics.json on ``n`` inputs; ``swaps`` inputs each way change hands beyond the net gain."""
    right, base_right = round(pass1 * n), round(base * n)
    a_only, b_only = max(right - base_right, 0) + swaps, max(base_right - right, 0) + swaps
    p = mcnemar_p([False] * a_only + [True] * b_only, [True] * a_only + [False] * b_only)
    predictor = {"pass@1": pass1, "correct": right, "layers_ratio": layers, **({"p_vs_base": p} if paired else {})}
    path.write_text(
        json.dumps(
            {
                "inputs": n,
                "methods": {
                    "predictor": predictor,
                    "base greedy": {"pass@1": base, "correct": base_right, "layers_ratio": 1.0},
                },
                **({"discordant": {"a_only": a_only, "b_only": b_only}} if paired else {}),
                "identity_share": 0.1,
                "pass_at_k": {"predictor": [pass1, pass1 + 0.1]},
                "config": {"max_new_tokens": 8},
                "prompt": PromptSpec.from_dict(TEST_PROMPT).id,
                "answer_kinds": ["number"],
                "tasks": "data/tasks/test.parquet",
            }
        )
    )
    return path


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default store lives in ./mlflow
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _predictor(path, base_model="tiny-model"):
    meta = {
        "base_model": base_model,
        "embedder": "backbone:1",
        "labels_sha256": "ab" * 32,
        "label_files": ["labels/labels.jsonl"],
        "prompt": TEST_PROMPT,
        "train": {"epochs": 1},
    }
    return save(ProgramPredictor(PredictorConfig(depth=6, embed_dim=64, d_model=16, ff=32, meta=meta)), path)


def test_versions_aliases_and_gates(store):
    import subprocess

    import mlflow

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    pred = _predictor(store / "pred")
    v1 = register(pred, _metrics(store / "m1.json", 0.40), lineage={"labels_dvc_md5": "123"})
    v2 = register(pred, _metrics(store / "m2.json", 0.35))
    assert (v1["name"], v1["version"], v2["version"]) == ("polar-tiny-model", "1", "2")
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("polar-tiny-model", "candidate").version) == "2"
    tags = client.get_model_version("polar-tiny-model", "1").tags
    assert tags["labels_dvc_md5"] == "123" and tags["embedder"] == "backbone:1"
    assert tags["prompt"] == PromptSpec.from_dict(TEST_PROMPT).id  # the prompt it was evaluated and is served with
    run = client.get_model_version("polar-tiny-model", "1").run_id
    assert mlflow.artifacts.load_dict(f"runs:/{run}/prompt.json") == TEST_PROMPT
    assert tags["git_commit"] == head + "-dirty"  # the predictor folder is not committed

    first = promote("polar-tiny-model", "1")
    assert first["promoted"] and str(client.get_model_version_by_alias("polar-tiny-model", "champion").version) == "1"
    second = promote("polar-tiny-model")  # the candidate, v2: 0.35 < 0.40 - 0.02
    assert not second["promoted"] and "below champion v1" in second["reasons"][0]
    assert str(client.get_model_version_by_alias("polar-tiny-model", "champion").version) == "1"
    assert promote("polar-tiny-model", gates=Gates(tolerance=0.1))["promoted"]

    v3 = register(pred, _metrics(store / "m3.json", 0.2, base=0.3, layers=1.1))
    third = promote("polar-tiny-model", v3["version"], Gates(tolerance=1.0))
    assert not third["promoted"] and len(third["reasons"]) == 2  # below base, over the layer budget
    assert client.get_model_version("polar-tiny-model", v3["version"]).tags["promotion"].startswith("pass@1")
    # Leaner at no loss passes (a 15-layer cut, the same 150 of 500 right). With 2 answers lost and 2 gained, the
    # share of inputs that change hands could be 2%, so the loss could pass the 1-point margin: refused.
    lean = register(pred, _metrics(store / "m4.json", 0.30, base=0.30, layers=0.85))
    assert promote("polar-tiny-model", lean["version"], Gates(tolerance=1.0))["promoted"]
    swapped = register(pred, _metrics(store / "m4b.json", 0.30, base=0.30, layers=0.85, swaps=2))
    refused = promote("polar-tiny-model", swapped["version"], Gates(tolerance=1.0))
    assert not refused["promoted"] and "difference down to -0.018" in refused["reasons"][0], refused
    # Six inputs, none right either way: nothing is known about the loss, nothing is promoted. Not even when the
    # version logged the interval of an earlier polar (a point at 0): the gate recomputes it from its evaluation.
    tiny = register(pred, _metrics(store / "m4c.json", 0.0, base=0.0, layers=0.85, n=6))
    run = client.get_model_version("polar-tiny-model", tiny["version"]).run_id
    client.log_metric(run, "diff_low", 0.0)
    refused = promote("polar-tiny-model", tiny["version"], Gates(tolerance=1.0))
    assert not refused["promoted"] and "difference down to -0.459" in refused["reasons"][0], refused
    lucky = register(pred, _metrics(store / "m5.json", 0.31, base=0.30, layers=1.0))  # 5 fixes, 0 breaks: p = 0.0625
    refused = promote("polar-tiny-model", lucky["version"], Gates(tolerance=1.0))
    assert not refused["promoted"] and "McNemar p 0.0625, needs < 0.05" in refused["reasons"][0]
    assert promote("polar-tiny-model", lucky["version"], Gates(tolerance=1.0, alpha=0.1))["promoted"]
    old = register(pred, _metrics(store / "m6.json", 0.5, paired=False))
    assert "without a paired test" in promote("polar-tiny-model", old["version"])["reasons"][0]
    with pytest.raises(ValueError, match="no version 9"):
        promote("polar-tiny-model", "9")


def test_metrics_of_another_prompt_are_refused(store):
    pred = _predictor(store / "pred")
    metrics = _metrics(store / "m.json", 0.4)
    data = json.loads(metrics.read_text())
    metrics.write_text(json.dumps({**data, "prompt": "plain-0shot-v1-000000000000"}))
    with pytest.raises(ValueError, match="evaluate this predictor again before registering it"):
        register(pred, metrics)


def test_unreachable_server_is_a_clear_error_at_once():
    # MLflow's own retries take about 4 minutes to give up; the health probe fails on the first refusal.
    with pytest.raises(ConnectionError, match="127.0.0.1:9/health is unreachable.*mlflow server.*MLFLOW_TRACKING_URI"):
        configure("http://127.0.0.1:9")


@pytest.mark.slow  # the bundled tokenizer
def test_pyfunc_model_answers_with_program_and_layers(store, smollm2):
    import mlflow

    model_dir = store / "tiny"
    tiny_model("llama", vocab_size=len(smollm2.tokenizer)).save_pretrained(model_dir)
    smollm2.tokenizer.save_pretrained(model_dir)
    pred = _predictor(store / "pred", base_model=str(model_dir))
    info = register(pred, _metrics(store / "m.json", 0.5))
    promote(info["name"])
    model = mlflow.pyfunc.load_model(f"models:/{info['name']}@champion")
    out = model.predict(pd.DataFrame({"question": ["What is 2 + 3?", "What is 4 * 5?"]}))
    assert list(out.columns) == ["text", "answer", "program", "layers", "depth"]
    assert len(out) == 2 and (out["depth"] == 6).all() and out["layers"].between(4, 7).all()


def test_lineage_walks_back_to_dvc_hashes(store):
    from polar.lineage import lineage

    (store / ".dvc" / "cache" / "files" / "md5" / "aa").mkdir(parents=True)
    (store / ".dvc" / "cache" / "files" / "md5" / "aa" / "11.dir").write_text("[]")
    (store / ".dvc" / "config").write_text("[core]\n    remote = local\n['remote \"local\"']\n    url = ../remote\n")
    (store / "remote" / "files" / "md5" / "bb").mkdir(parents=True)
    (store / "remote" / "files" / "md5" / "bb" / "22.dir").write_text("[]")
    (store / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  train:\n    outs:\n    - path: pred\n      md5: aa11.dir\n"
        "  label:\n    outs:\n    - path: data/labels/m\n      md5: bb22.dir\n"
    )
    pred = _predictor(store / "pred")
    cfg = json.loads((pred / "config.json").read_text())
    cfg["meta"]["label_files"] = ["data/labels/m/labels.jsonl"]
    (pred / "config.json").write_text(json.dumps(cfg))
    info = register(pred, _metrics(store / "m.json", 0.4), lock_path=store / "dvc.lock")
    walked = lineage(f"models:/{info['name']}/{info['version']}", repo=store)
    assert walked["run_id"] == info["run_id"] and walked["aliases"] == ["candidate"]
    by_role = {i["role"]: i for i in walked["inputs"]}
    assert by_role["predictor"]["md5"] == "aa11.dir" and by_role["predictor"]["found_in"] == ["cache"]
    assert by_role["labels"]["md5"] == "bb22.dir" and by_role["labels"]["found_in"] == ["remote local"]
    assert by_role["test_tasks"]["found_in"] == []  # untracked: found nowhere
    assert by_role["base_model"]["md5"] == "untracked" and by_role["base_model"]["matches"] is None
    assert by_role["predictor"]["matches"] is True
    with pytest.raises(ValueError, match="no such registered version"):
        lineage("models:/polar-tiny-model/7", repo=store)


@pytest.mark.slow  # the bundled tokenizer; a real `mlflow models serve` on loopback
def test_the_served_model_answers_exactly_as_the_evaluation_did(store, smollm2):
    """Label, train, evaluate, register; then `mlflow models serve` gives the evaluation's programs and answers."""
    import urllib.request

    from polar.evaluate import evaluate
    from polar.ingest import ingest
    from polar.labeling.run import label
    from polar.settings import EvalConfig, IngestConfig, LabelConfig, SearchConfig, TrainConfig
    from polar.training import train

    model_dir = store / "tiny"
    tiny_model("llama", vocab_size=len(smollm2.tokenizer)).save_pretrained(model_dir)
    smollm2.tokenizer.save_pretrained(model_dir)
    tasks, _ = ingest(store / "tasks", IngestConfig(levels="1,3", train=4, validation=1, test=3))
    config = LabelConfig(shots=2, max_new_tokens=5, search=SearchConfig(simulations=4, batch=4))
    labels = label(str(model_dir), tasks["train"], store / "labels", config, device="cpu")
    records = [json.loads(line) for line in labels.open()]
    for r in records:  # random weights rarely answer right: give every input a valid program
        r["valid"] = r["valid"] or ["0-2,4-5"]
    labels.write_text("".join(json.dumps(r) + "\n" for r in records))
    config = TrainConfig(embedder="backbone:1", epochs=2, d_model=32)
    pred = train([labels], store / "pred", config, device="cpu").out_dir
    metrics = evaluate(str(model_dir), pred, tasks["test"], store / "eval", EvalConfig(k=2, max_new_tokens=5))
    rows = [json.loads(line) for line in (store / "eval" / "results.jsonl").open()]
    info = register(pred, metrics)

    from polar.tasks.files import read_examples

    examples = read_examples(tasks["test"])
    port = free_port()
    # The server runs `uvicorn` by name: the environment's scripts must be on PATH, as in an activated venv.
    env = env_with_bin(MLFLOW_TRACKING_URI=f"sqlite:///{store / 'mlflow' / 'mlflow.db'}")
    uri = f"models:/{info['name']}/{info['version']}"
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local"]
    cmd += ["-h", "127.0.0.1", "-p", str(port)]
    with running(cmd, env, f"http://127.0.0.1:{port}/ping", "mlflow models serve"):
        data = [[e.question, e.level] for e in reversed(examples)]  # another order, one request
        body = json.dumps({"dataframe_split": {"columns": ["question", "level"], "data": data}}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        served = list(reversed(json.loads(urllib.request.urlopen(request, timeout=120).read())["predictions"]))
    assert len(served) == len(rows) == 6
    for row, answer in zip(rows, served, strict=True):
        assert answer["program"] == row["programs"][0] and answer["text"] == row["top1_text"], row["id"]
        assert answer.get("answer") == row["top1_answer"] and answer["depth"] == 6


def test_registering_one_change_again_gives_its_version(store):
    """The same predictor, evaluation and tags are one change (a retried stage, a second clone): one version."""
    import mlflow

    pred, metrics = _predictor(store / "pred"), _metrics(store / "m.json", 0.4)
    first, again = register(pred, metrics), register(pred, metrics)
    assert again["version"] == first["version"] and again["run_id"] == first["run_id"]
    assert again["reused"] and not first["reused"]
    other = register(pred, metrics, lineage={"note": "retrained"})  # other tags: another change
    assert other["version"] != first["version"] and not other["reused"]
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias(first["name"], "candidate").version) == other["version"]
    assert register(pred, metrics)["version"] == first["version"]  # and candidate moves back to what was registered
    assert str(client.get_model_version_by_alias(first["name"], "candidate").version) == first["version"]
