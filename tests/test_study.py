"""The select stage on menu matrices: every candidate frozen on validation before test is read, test read once,
the servable selectors written and choosing what the study chose; the registry's baseline champion and its gate."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TEST_PROMPT

from polar.hashing import sha256_file
from polar.selection.files import CHOICES, FROZEN, TEST, TIMINGS
from polar.selection.selector import Selector
from polar.selection.study import select
from polar.settings import MenuNetworkConfig, SelectConfig
from polar.stats import detectable_difference, markdown_table, score_outcomes
from polar.tasks.files import write_examples
from polar.tasks.prompts import PromptSpec
from polar.tasks.schema import Example

ROOT = Path(__file__).resolve().parents[1]

# The full depth, a program that skips layer 0 (so no layer is shared: no hidden-state feature needs a model),
# and a shorter one. Level 1: the skip is right where the full depth mostly is not; level 2: the full depth wins.
PROGRAMS = ["0-5", "1-5", "0-4"]
LAYERS = [6, 5, 5]
CONFIG = SelectConfig(m2=MenuNetworkConfig(m2_steps=20, m2_eval_every=10, m2_d_model=16, m2_ff=32))


def _correct(level: str, i: int) -> list[bool]:
    k = i % 10
    if level == "1":
        return [k < 3, k < 9, k < 2]
    return [k < 6, k < 1, k < 1]


FP32 = {"dtype": "float32", "device": "cpu", "threads": 2}


def _menu(folder, split: str, n: int, questions=None, model: str = "tiny-model", engine=FP32, recheck=None):
    """A menu folder as `polar label --menu` leaves it (the files the select stage reads), and its task file."""
    folder.mkdir(parents=True)
    levels = ["1" if i % 2 == 0 else "2" for i in range(n)]
    ids = [f"{split}/{i}" for i in range(n)]
    rows, inputs = [], []
    for i, (id_, level) in enumerate(zip(ids, levels, strict=True)):
        right = _correct(level, i // 2)
        for j, program in enumerate(PROGRAMS):
            answer = "7" if right[j] else str(100 + j)
            rows.append(
                dict(id=id_, level=level, program=program, correct=right[j], prediction=answer, layers=LAYERS[j])
            )
        inputs.append(
            dict(
                id=id_,
                level=level,
                question=(questions or {}).get(i, f"{split} question {i}: what is {i} + 7?"),
                answer="7",
                depth=6,
                base_correct=right[0],
                base_logprob=-0.1 if right[0] else -2.0,
                base_margin=0.5,
                base_entropy=1.0,
                sample_agreement=1.0 if right[0] else 0.25,
                sample_correct=float(right[0]),
            )
        )
    pd.DataFrame(rows).to_parquet(folder / "rewards.parquet", index=False)
    pd.DataFrame(inputs).to_parquet(folder / "inputs.parquet", index=False)
    settings = {
        "schema": 2,
        "kind": "menu",
        "model": model,
        "tasks": str(folder.parent / "tasks" / f"{split}.parquet"),
        "config": {"max_new_tokens": 8, "samples": 4, "temperature": 0.7},
        "prompt": PromptSpec.from_dict(TEST_PROMPT).to_dict(),
        "menu": {"id": "menu-3-test", "programs": PROGRAMS},
        "engine": engine,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    if recheck is not None:  # rows run again alone, and how many changed text and verdict
        rows, texts, verdicts = recheck
        (folder / "manifest.json").write_text(
            json.dumps({"recheck": {"rows": rows, "texts_differ": texts, "verdicts_differ": verdicts}})
        )
    examples = [Example(r["id"], r["question"], "7", "t", r["level"], "tests") for r in inputs]
    (folder.parent / "tasks").mkdir(exist_ok=True)
    write_examples(folder.parent / "tasks" / f"{split}.parquet", examples)
    return folder


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    sizes = (("train", 60, (4, 0, 0)), ("validation", 40, (3, 1, 0)), ("test", 30, (3, 1, 1)))
    train, val, test = (_menu(root / s, s, n, recheck=r) for s, n, r in sizes)
    return root, select([train], val, test, root / "out", CONFIG, cache_dir=root / "features")


def test_every_candidate_is_frozen_on_validation_then_scored_once_on_test(study):
    root, result = study
    out = root / "out"
    frozen, tested = (json.loads((out / name).read_text()) for name in (FROZEN, TEST))
    assert tested["frozen_sha256"] == sha256_file(out / FROZEN)  # test was scored under exactly these choices
    assert set(frozen["validation_scores"]) == set(result.validation) and frozen["candidates"] == len(result.validation)
    assert str(root / "test") not in (out / FROZEN).read_text()  # nothing of the test split in the frozen record
    # Level 1's skip fixes 6 of every 10 level-1 inputs and breaks none: per level wins on validation.
    accuracy = result.validation[result.winners["accuracy"]]
    assert accuracy.pass1 == pytest.approx((9 + 6) / 20) and accuracy.fixes == 12 and accuracy.breaks == 0
    assert result.validation["B2 best program per level"].pass1 == accuracy.pass1
    assert result.test["oracle (any menu program right; ceiling)"].pass1 >= accuracy.pass1
    choices = pd.read_parquet(out / CHOICES)
    assert len(choices) == 30 * (len(result.test) - 1)  # every candidate but the oracle, every test input
    assert "won on validation" in result.summary and "smallest gain this test detects" in result.summary
    # The noise floor beside the fix rates, pooled over the splits' rechecked rows (1 verdict of 10 flipped).
    assert tested["noise"] == {"rows": 10, "texts_differ": 2, "verdicts_differ": 1, "verdict_flip_rate": 0.1}
    assert "numerical noise 10.0% (1 of 10 rows run again alone changed their verdict, 95% CI" in result.summary
    assert "overhead_ms" not in tested and set(json.loads((out / TIMINGS).read_text())) == {"overhead_ms", "feature_ms"}


def test_the_select_stage_run_twice_writes_the_same_bytes(tmp_path):
    """Every output is a function of the matrices and the settings: wall-clock times live in timings.json only
    (which .dvcignore keeps out of the folder's hash), so a second run rewrites every other file byte for byte."""
    train, val, test = (_menu(tmp_path / s, s, n) for s, n in (("train", 40), ("validation", 20), ("test", 20)))
    out = tmp_path / "out"
    select([train], val, test, out, CONFIG, cache_dir=tmp_path / "features")
    out.rename(tmp_path / "first")
    select([train], val, test, out, CONFIG, cache_dir=tmp_path / "features")
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert {FROZEN, TEST, CHOICES, TIMINGS} <= {p.name for p in files}
    differ = [str(p) for p in files if sha256_file(out / p) != sha256_file(tmp_path / "first" / p)]
    assert differ == [TIMINGS]  # its seconds differ; nothing else may
    assert TIMINGS in (ROOT / ".dvcignore").read_text().split()


def test_splits_labeled_in_two_dtypes_are_refused(tmp_path):
    train = _menu(tmp_path / "train", "train", 40)
    val = _menu(tmp_path / "validation", "validation", 20, engine={"dtype": "bfloat16", "device": "cpu", "threads": 2})
    with pytest.raises(ValueError, match=r"train .* was labeled in float32 on cpu with 2 threads and validation .* in "
                       r"bfloat16 on cpu with 2 threads: labels of two dtypes"):  # fmt: skip
        select([train], val, val, tmp_path / "out", CONFIG)
    assert not (tmp_path / "out" / FROZEN).exists()


def test_servable_selectors_choose_what_the_study_chose(study):
    root, result = study
    out = root / "out"
    baseline = Selector.load(out / "selectors" / "baseline")
    assert baseline.spec.kind == "static" and baseline.spec.program == "0-5"
    assert baseline.spec.meta["prompt"] == PromptSpec.from_dict(TEST_PROMPT).to_dict()
    frozen = json.loads((out / FROZEN).read_text())
    inputs = pd.read_parquet(root / "test" / "inputs.parquet")
    choices = pd.read_parquet(out / CHOICES)
    served = {mode: role for mode, role in frozen["servable"].items() if role not in (None, "baseline")}
    assert served, frozen["winners"]  # here the efficiency pick, B1 (the skip everywhere), is a static program
    for mode, role in served.items():
        selector = Selector.load(out / "selectors" / role)
        picked = selector.choose(list(inputs["question"]), list(inputs["level"]))
        mine = choices[choices["method"] == frozen["winners"][mode]].set_index("id").loc[inputs["id"], "program"]
        assert [p.text for p in picked] == list(mine), mode


def test_the_test_matrix_is_read_only_after_the_choices_are_frozen(tmp_path):
    train, val = _menu(tmp_path / "train", "train", 40), _menu(tmp_path / "validation", "validation", 20)
    with pytest.raises(FileNotFoundError, match="rewards.parquet"):
        select([train], val, tmp_path / "missing", tmp_path / "out", CONFIG, cache_dir=tmp_path / "f")
    assert (tmp_path / "out" / FROZEN).exists() and not (tmp_path / "out" / TEST).exists()


def test_a_test_split_that_shares_a_question_with_train_is_refused(tmp_path):
    train = _menu(tmp_path / "train", "train", 40)
    val = _menu(tmp_path / "validation", "validation", 20)
    test = _menu(tmp_path / "test", "test", 20, questions={3: "train question 5: what is 5 + 7?"})
    with pytest.raises(ValueError, match="the train and test matrices share the question"):
        select([train], val, test, tmp_path / "out", CONFIG, cache_dir=tmp_path / "f")
    assert not (tmp_path / "out" / TEST).exists()


def test_a_file_that_is_not_parquet_is_named(tmp_path):
    train, val = _menu(tmp_path / "train", "train", 40), _menu(tmp_path / "validation", "validation", 20)
    (val / "rewards.parquet").write_text("id,program\n")
    with pytest.raises(ValueError, match=r"rewards.parquet is not a readable Parquet file \(expected one row per"):
        select([train], val, val, tmp_path / "out", CONFIG)


def test_score_rows_and_the_detectable_difference():
    base = np.array([True] * 30 + [False] * 70)
    right = base.copy()
    right[30:38] = True  # 8 fixes
    right[:2] = False  # 2 breaks
    s = score_outcomes("m", right, base, 0.9)
    assert (s.correct, s.fixes, s.breaks, s.diff) == (36, 8, 2, pytest.approx(0.06))
    assert s.diff_ci95[0] < 0 < s.diff_ci95[1] and s.p_vs_base > 0.05  # 8 against 2 is not significant
    assert "| m | 36.0% (36/100)" in markdown_table([s])
    # The design's power figures: +5 points at 80% power needs about 500 inputs at 15% discordance.
    assert detectable_difference(500, 0.15) == pytest.approx(0.05, abs=0.006)
    assert detectable_difference(340, 0.10) == pytest.approx(0.05, abs=0.006)
    assert detectable_difference(20, 0.05) is None  # one discordant pair can never be significant
    assert detectable_difference(100, 0.0) is None


@pytest.mark.slow  # a real `mlflow models serve` on loopback, the bundled tokenizer
def test_an_honest_negative_leaves_the_full_depth_champion_which_serves(tmp_path, monkeypatch, tiny_dir):
    """Select, serve the winners, register: no selector passes the gate on test, so the baseline (the full depth)
    is champion, `models:/...@champion` resolves, and `mlflow models serve` answers with the full-depth program."""
    import urllib.request

    import mlflow
    from servers import BIN, env_with_bin, free_port, running

    from polar.registry import publish_study
    from polar.selection.served import evaluate_selection

    monkeypatch.chdir(tmp_path)  # the default store lives in ./mlflow
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    splits = {
        s: _menu(tmp_path / s, s, n, model=str(tiny_dir)) for s, n in (("train", 40), ("validation", 20), ("test", 10))
    }
    select([splits["train"]], splits["validation"], splits["test"], tmp_path / "sel", CONFIG, cache_dir=tmp_path / "f")
    metrics = evaluate_selection(
        tmp_path / "sel",
        tmp_path / "sel" / "selectors",
        tmp_path / "tasks" / "test.parquet",
        tmp_path / "eval",
        device="cpu",
    )
    evaluation = json.loads(metrics.read_text())
    assert (
        evaluation["served"]["baseline"]["inputs"] == 10 and (tmp_path / "eval" / "versions" / "baseline.json").exists()
    )
    assert (tmp_path / "eval" / "report.md").read_text().count("| B0 base greedy |") == 2  # test and validation
    for v in evaluation["served"].values():  # a served choice costs what the study charged for it, passes included
        served, studied = evaluation["scores"][f"{v['method']} (served)"], evaluation["scores"][v["method"]]
        assert served["layers_ratio"] == studied["layers_ratio"]
    info = publish_study(tmp_path / "sel" / "selectors", tmp_path / "sel", tmp_path / "eval", out=tmp_path / "reg.json")
    # Random weights answer nothing right at any depth: no difference can pass the gate.
    assert info["champion"] == info["versions"]["baseline"]["version"] and info["champion_method"] == "B0 base greedy"
    for role, v in info["versions"].items():
        if role != "baseline":
            assert not v["promotion"]["promoted"] and v["promotion"]["reasons"], v
    assert "won on validation" in info["summary"] and "Champion: v" in info["summary"]
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias(info["name"], "champion")
    logged = client.get_run(champion.run_id).data.metrics
    assert {"val.B0 base greedy.pass1", "test.B0 base greedy _served_.pass1"} <= set(logged)
    assert champion.tags["polar.summary"] == evaluation["summary"]
    # Registering the same study again adds no version and keeps the champion.
    again = publish_study(tmp_path / "sel" / "selectors", tmp_path / "sel", tmp_path / "eval")
    assert again["versions"] == info["versions"]

    port = free_port()
    env = env_with_bin(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{info['name']}@champion", "--env-manager", "local"]
    with running(
        [*cmd, "-h", "127.0.0.1", "-p", str(port)], env, f"http://127.0.0.1:{port}/ping", "mlflow models serve"
    ):
        body = json.dumps({"dataframe_split": {"columns": ["question", "level"], "data": [["What is 2 + 3?", "1"]]}})
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body.encode(), headers={"Content-Type": "application/json"}
        )
        served = json.loads(urllib.request.urlopen(request, timeout=120).read())["predictions"]
    assert served[0]["program"] == "0-5" and served[0]["layers"] == served[0]["depth"] == 6
