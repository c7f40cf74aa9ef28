"""lm-evaluation-harness integration: the `polar` model, the offline tasks, the hf cross-check, sweeps, the registry."""

import json
from pathlib import Path

import pytest
import torch
from conftest import TEST_PROMPT, shared_data
from lm_eval.api.instance import Instance
from tiny import tiny_model
from typer.testing import CliRunner

from polar.harness import TASK_NAMES, TASKS_DIR, register, task_manager
from polar.harness.choice import parse_program, read_program_file
from polar.harness.crosscheck import LOGPROB_TOLERANCE, compare_samples
from polar.harness.data import DATA_ENV, DataFileError, arc_challenge, arc_easy, data_dir, gsm8k, mmlu_pro_math
from polar.harness.sweep import SweepRow
from polar.harness.tracking import sweep_metrics
from polar.programs import Program, ProgramError

ARCHS = ("llama", "qwen2")  # two architectures of the executor's list


@pytest.fixture(scope="module", autouse=True)
def _offline_data(monkeypatch_module):
    monkeypatch_module.setenv(DATA_ENV, str(shared_data()))
    register()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _tokenizer():
    """A byte-level BPE trained on a few benchmark lines (no download): short prompts for the tiny models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    data = shared_data()
    texts = []
    for name in ("arc/genmc_official/arc_easy/train.jsonl", "gsm8k/train.jsonl", "mmlu-pro/test_math_1351.jsonl"):
        texts += (data / name).read_text().splitlines()[:300]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    special = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0, 1, 2 are the tiny configs' pad, bos and eos
    trainer = trainers.BpeTrainer(
        vocab_size=1500,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """arch -> a tiny random model folder with the trained tokenizer, long enough for 5-shot GSM8K."""
    tokenizer = _tokenizer()
    out = {}
    for arch in ARCHS:
        model = tiny_model(arch, vocab_size=len(tokenizer))
        model.config.max_position_embeddings = 4096  # the harness's max_length; the rotary tables follow it
        path = tmp_path_factory.mktemp(f"tiny-{arch}")
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        out[arch] = path
    return out


def _evaluate(model: str, model_args: dict, tasks, limit: int = 2, **kw) -> dict:
    import lm_eval

    return lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=list(tasks),
        task_manager=task_manager(include_defaults=False),
        limit=limit,
        gen_kwargs={"max_gen_toks": 12},
        bootstrap_iters=0,
        log_samples=True,
        **kw,
    )


def _assert_agree(ours: dict, ref: dict, tasks, scored: int, generated: int) -> None:
    agreement = compare_samples(ours, ref, tasks)
    assert agreement.equal, agreement.mismatches
    assert (agreement.scored, agreement.generated) == (scored, generated)


def _choices(arc: str, docs: int) -> int:
    """Answer choices of the first ``docs`` ARC test questions (one log-likelihood request each)."""
    return sum(
        len(r["choices"]["text"])
        for r in (arc_easy() if arc == "easy" else arc_challenge())["test"].select(range(docs))
    )


# ---------------------------------------------------------------------------------------------------- tasks
def test_shipped_tasks_read_the_local_files_in_the_hub_schema(tmp_path, monkeypatch):
    arc = arc_easy()
    assert {split: len(arc[split]) for split in arc} == {"train": 2251, "validation": 570, "test": 2376}
    row = arc["test"][0]
    assert row["answerKey"] in row["choices"]["label"] and len(row["choices"]["text"]) == len(row["choices"]["label"])
    assert gsm8k()["test"][0]["answer"].splitlines()[-1] == "#### 18"
    math = mmlu_pro_math()
    assert len(math["test"]) == 1351 and len(math["validation"]) == 0  # the public file has no validation split
    # Users point the tasks at their own copies: data_dir metadata first, then the environment variable.
    own = tmp_path / "gsm8k"
    own.mkdir()
    (own / "train.jsonl").write_text(json.dumps({"question": "q", "answer": "#### 1"}) + "\n")
    (own / "test.jsonl").write_text(json.dumps({"question": "2 + 2?", "answer": "#### 4"}) + "\n")
    assert gsm8k(data_dir=str(tmp_path))["test"][0]["question"] == "2 + 2?"
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataFileError, match="POLAR_SHARED_DATA"):
        data_dir()
    with pytest.raises(DataFileError, match="train file .*arc_easy.* not found"):
        arc_easy(data_dir=str(tmp_path))


def test_task_configs_keep_the_harness_prompts_and_metrics():
    from lm_eval.tasks._yaml_loader import load_yaml

    harness = Path(__import__("lm_eval").__file__).parent / "tasks"
    pairs = {
        "polar_arc_easy": harness / "arc" / "arc_easy.yaml",
        "polar_gsm8k": harness / "gsm8k" / "gsm8k.yaml",
        "polar_mmlu_pro_math": harness / "mmlu_pro" / "mmlu_pro_math.yaml",
    }
    doc = mmlu_pro_math()["test"][0]
    keys = ("output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "metric_list", "filter_list")

    def same(a, b) -> bool:  # functions (the harness's own, loaded twice) compare by what they make of a document
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        return a(doc) == b(doc) if callable(a) and callable(b) else a == b

    for name, theirs_path in pairs.items():
        ours = load_yaml(TASKS_DIR / f"{name}.yaml")
        theirs = load_yaml(theirs_path)
        for key in (*keys, "generation_kwargs", "description", "fewshot_config"):
            assert same(ours.get(key), theirs.get(key)), (name, key)
        assert ours["task"] == name and "dataset_path" not in ours  # never the hub, never the harness's name
    assert sorted(p.stem for p in TASKS_DIR.glob("*.yaml")) == sorted(TASK_NAMES)


# ------------------------------------------------------------------------------------------------- programs
def test_program_args_accept_comma_free_spellings(tmp_path):
    expected = Program.parse("0-4,8-29")
    for spelling in ("0-4+8-29", "0-4;8-29", "0-4 8-29", "0-4|8-29", "[0-4,8-29]", "0-4,8-29"):
        assert parse_program(spelling, 30) == expected, spelling
    assert parse_program("keep(0-3) skip(4-7) keep(8-11)", 12) == Program.parse("0-3,8-11")
    assert parse_program(5, 30) == Program((5,)) and parse_program("full", 4) == Program.identity(4)
    with pytest.raises(ProgramError, match="program='0-4\\+30': layer 30 is out of range"):
        parse_program("0-4+30", 30)
    path = tmp_path / "p.txt"
    path.write_text("# skip 5-7\n0-4,8-29\n")
    assert read_program_file(path, 30) == expected
    path.write_text("0-29\n0-4,8-29\n")
    with pytest.raises(ProgramError, match="a menu"):
        read_program_file(path, 30)


def test_grouped_scoring_equals_each_row_scored_alone(folders):
    """One prefill per (context, program), every continuation from its cache: the executor's one-forward scores,
    for skip and loop programs mixed in one batch and for batches that split groups apart."""
    from polar.backbone import load
    from polar.harness.runner import group_rows, score

    executor = load(str(folders["qwen2"]), device="cpu", dtype="float32").executor
    g = torch.Generator().manual_seed(0)
    contexts = [torch.randint(3, 300, (n,), generator=g).tolist() for n in (9, 17, 4)]
    programs = [Program.parse(t) for t in ("0-5", "0-1,4-5", "0-3,2-3,4-5")]
    rows = []
    for c, context in enumerate(contexts):
        for k in range(3):
            continuation = torch.randint(3, 300, (1 + (c + 2 * k) % 5,), generator=g).tolist()
            rows.append((context, continuation, programs[(c + k) % 3]))
    rows += [(contexts[0], [7, 8, 9], programs[1]), (contexts[0], [7], programs[1])]  # one context, two rows
    assert len(group_rows(rows)) == len({(tuple(c), p) for c, _, p in rows}) < len(rows)
    alone = [executor.score([c], [k], [p])[0] for c, k, p in rows]
    for batch_size in (1, 4, 64):
        for (logprob, greedy), ref in zip(score(executor, rows, batch_size), alone, strict=True):
            assert abs(logprob - ref.logprob) <= LOGPROB_TOLERANCE and greedy == ref.greedy


def test_generation_stops_at_the_first_stop_string(folders):
    """Rows end at a stop string found in their text (and leave the batch); the text before it is the uncut text's."""
    from polar.backbone import load
    from polar.harness.runner import generate

    backbone = load(str(folders["llama"]), device="cpu", dtype="float32")
    executor, decode = backbone.executor, backbone.tokenizer.decode
    prompts = [backbone.tokenizer.encode(t) for t in ("Question: why?\nAnswer:", "Question: 2 + 2 = ?\nAnswer:")]
    loop = Program.parse("0-3,2-5")
    uncut = [decode(g.tokens, skip_special_tokens=True) for g in executor.generate(prompts, [loop], 24)]
    stop = uncut[0][6:9]  # a string the first row produces after a few tokens
    rows = generate(executor, prompts, [loop, loop], 24, [stop], lambda t: decode(t, skip_special_tokens=True))
    texts = [decode(r, skip_special_tokens=True) for r in rows]
    assert stop in texts[0] and len(rows[0]) < 24 and texts[0].split(stop)[0] == uncut[0].split(stop)[0]
    assert texts[1].split(stop)[0] == uncut[1].split(stop)[0]


# ------------------------------------------------------------------------------------- the hf cross-check
@pytest.mark.parametrize("arch", ARCHS)
def test_full_depth_equals_the_hf_model_on_every_shipped_task(folders, arch):
    """The polar model with the full-depth program and lm-eval's own hf model on the same folder: log-likelihoods
    within 1e-4 and the same greedy generations, on a slice of every shipped task."""
    args = {"dtype": "float32", "device": "cpu"}
    ours = _evaluate("polar", {"model": str(folders[arch]), "batch_size": 4, **args}, TASK_NAMES)
    ref = _evaluate("hf", {"pretrained": str(folders[arch]), **args}, TASK_NAMES, batch_size=1)
    _assert_agree(ours, ref, TASK_NAMES, scored=sum(_choices(t, 2) for t in ("easy", "challenge")), generated=2 + 2)
    info = ours["config"]["polar"]
    assert {t: (v["documents"], v["layers_ratio"]) for t, v in info["tasks"].items()} == dict.fromkeys(
        TASK_NAMES, (2, 1.0)
    )


def test_rolling_loglikelihood_equals_the_hf_model(folders):
    from lm_eval.models.huggingface import HFLM
    from lm_eval.utils import get_rolling_token_windows

    from polar.harness.model import PolarLM

    path = str(folders["llama"])
    text = (shared_data() / "gsm8k" / "test.jsonl").read_text().splitlines()[:2]
    requests = [Instance("loglikelihood_rolling", {}, (t,), i, ("r", i, 1)) for i, t in enumerate(text)]
    ours = PolarLM(model=path, dtype="float32", device="cpu", batch_size=3, max_length=48)
    ref = HFLM(pretrained=path, dtype="float32", device="cpu", batch_size=1, max_length=48)
    windows = [len(list(get_rolling_token_windows(ours.tok_encode(t), ours.prefix_token_id, 48, 1))) for t in text]
    assert min(windows) >= 3
    got, want = ours.loglikelihood_rolling(requests, True), ref.loglikelihood_rolling(requests, True)
    for a, b, n in zip(got, want, windows, strict=True):
        # Each window's sum is hundreds of nats for a random model, where float32 rounds at ~3e-5: 1e-4 per window.
        assert abs(a - b) <= LOGPROB_TOLERANCE * n, (a, b, n)


# ---------------------------------------------------------------------------------------- command line
@pytest.fixture
def shipped_only(monkeypatch):
    """lm-eval's command line indexes its ~230 task folders at every run (10-16 s on 2 cores): here only ours."""
    from lm_eval.tasks import manager

    init = manager.TaskManager.__init__
    monkeypatch.setattr(
        manager.TaskManager, "__init__", lambda self, *a, **kw: init(self, *a, **{**kw, "include_defaults": False})
    )


@pytest.mark.usefixtures("shipped_only")
def test_polar_lm_eval_runs_the_harness_command_line(folders, tmp_path):
    from polar.cli import app

    model_args = f"model={folders['llama']},program=0-2+4-5,dtype=float32"
    args = ["lm-eval", "--model", "polar", "--model_args", model_args, "--tasks", "polar_arc_easy", "--limit", "3"]
    result = CliRunner().invoke(app, [*args, "--output_path", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "|polar_arc_easy|" in result.output and "|acc     |" in result.output  # the harness's own table
    assert "layers / D 0.833" in result.output
    records = [json.loads(line) for line in (tmp_path / "out" / "polar_programs.jsonl").read_text().splitlines()]
    assert [(r["doc_id"], r["program"], r["layers"]) for r in records] == [(i, "0-2,4-5", 5) for i in range(3)]
    bad = CliRunner().invoke(app, ["lm-eval", "--model", "polar", "--model_args", "model=x,program=0-2", "--tasks", "polar_arc_easy"])  # fmt: skip
    assert bad.exit_code == 2 and "unknown model 'x'" in bad.output


@pytest.mark.usefixtures("shipped_only")
def test_a_sweep_writes_one_table_and_a_plot(folders, tmp_path):
    from polar.cli import app

    menu = tmp_path / "menu.txt"
    menu.write_text("# two edits\n0-2,4-5\nkeep(0-1) repeat(2-3) keep(4-5)\n")
    args = ["lm-eval", "--programs", str(menu), "--programs", "0-1,4-5", "--sweep-out", str(tmp_path / "sweep")]
    lm_args = ["--model", "polar", "--model_args", f"model={folders['llama']}", "--tasks", "polar_arc_easy"]
    result = CliRunner().invoke(app, [*args, *lm_args, "--limit", "3"])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    programs = [(r["program"], round(r["layers_ratio"], 3)) for r in data["rows"]]
    assert programs == [("0-5", 1.0), ("0-2,4-5", 0.833), ("0-3,2-5", 1.333), ("0-1,4-5", 0.667)]
    assert all(set(r["metrics"]) == {"acc", "acc_norm"} for r in data["rows"])
    table = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "| `0-1,4-5` | 4.00 | 0.667 |" in table and " ± " in table
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 1000
    rows = [SweepRow(**{**r, "metrics": {k: tuple(v) for k, v in r["metrics"].items()}}) for r in data["rows"]]
    logged = sweep_metrics(rows, "polar_arc_easy")  # what --log-to gives the registered version's run
    assert logged["harness.polar_arc_easy.layers_ratio/program:0-1_4-5"] == pytest.approx(4 / 6)
    assert logged["harness.polar_arc_easy.acc/program:0-5"] == data["rows"][0]["metrics"]["acc"][0]


# ------------------------------------------------------------------------------------------ the registry
def _register(folder: Path, where: Path) -> dict:
    """Register an (untrained) predictor for ``folder`` as polar does, with a minimal evaluation."""
    from polar.predictor import PredictorConfig, ProgramPredictor, save
    from polar.registry import register
    from polar.tasks.prompts import PromptSpec

    meta = {
        "base_model": str(folder),
        "embedder": "backbone:1",
        "labels_sha256": "ab" * 32,
        "label_files": ["labels/labels.jsonl"],
        "prompt": TEST_PROMPT,
        "train": {"epochs": 1},
    }
    torch.manual_seed(3)
    predictor = save(
        ProgramPredictor(PredictorConfig(depth=6, embed_dim=64, d_model=16, ff=32, meta=meta)), where / "p"
    )
    method = {"pass@1": 0.4, "correct": 40, "layers_ratio": 0.9}
    metrics = {
        "inputs": 100,
        "methods": {"predictor": method, "base greedy": {"pass@1": 0.3, "correct": 30, "layers_ratio": 1.0}},
        "identity_share": 0.1,
        "pass_at_k": {"predictor": [0.4]},
        "config": {"max_new_tokens": 8},
        "prompt": PromptSpec.from_dict(TEST_PROMPT).id,
        "answer_kinds": ["number"],
        "tasks": "data/tasks/test.parquet",
    }
    (where / "metrics.json").write_text(json.dumps(metrics))
    return register(predictor, where / "metrics.json")


@pytest.mark.usefixtures("shipped_only")
def test_a_registered_predictor_evaluates_through_the_harness_and_logs_to_its_run(folders, tmp_path, monkeypatch):
    import mlflow

    from polar.cli import app
    from polar.harness.model import PolarLM
    from polar.harness.tracking import resolve_version

    monkeypatch.chdir(tmp_path)  # the default MLflow store lives in ./mlflow
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"models:/{_register(folders['llama'], tmp_path)['name']}@candidate"
    model_args = f"predictor={uri},dtype=float32,batch_size=8"  # the base model comes from the version
    lm_args = ["--model", "polar", "--model_args", model_args, "--tasks", "polar_arc_easy", "--limit", "4"]
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["lm-eval", "--log-to", uri, *lm_args, "--log_samples", "--output_path", str(out)])
    assert result.exit_code == 0, result.output
    assert f"predictor {uri}" in result.output and "logged the harness results to run" in result.output
    records = {
        r["doc_id"]: r["program"] for r in map(json.loads, (out / "polar_programs.jsonl").read_text().splitlines())
    }
    assert len(records) == 4 and len(set(records.values())) > 1  # this seeded, untrained predictor picks several
    # Every choice of a question ran under the program chosen for its context: scoring the question again under
    # that one program gives the same log-likelihoods.
    lm = PolarLM(predictor=uri, dtype="float32", device="cpu")
    choose = lm.choose_program
    for line in next(out.rglob("samples_polar_arc_easy_*.jsonl")).read_text().splitlines():
        sample = json.loads(line)
        pairs = [(a["arg_0"], a["arg_1"]) for a in sample["arguments"].values()]
        program = choose(pairs[0][0])
        assert records[sample["doc_id"]] == program.text
        lm.use_program(program)
        requests = [Instance("loglikelihood", {}, pair, i, ("x", 0, 1)) for i, pair in enumerate(pairs)]
        again = [logprob for logprob, _ in lm.loglikelihood(requests, disable_tqdm=True)]
        assert again == pytest.approx([float(r[0][0]) for r in sample["resps"]], abs=LOGPROB_TOLERANCE)
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    version = resolve_version(uri)
    logged = mlflow.MlflowClient().get_run(version.tags.get("run_id") or version.run_id).data.metrics
    assert logged["harness.polar_arc_easy.acc"] == results["results"]["polar_arc_easy"]["acc,none"]
    assert (
        logged["harness.polar_arc_easy.layers_ratio"]
        == results["config"]["polar"]["tasks"]["polar_arc_easy"]["layers_ratio"]
    )


def test_a_study_selector_folder_chooses_as_it_is_served(folders, tmp_path):
    """A `polar select` selector (the baseline champion's kind: one static program) runs every context under its
    program, and names its base model."""
    from polar.backbone import load
    from polar.harness.choice import base_model_of, load_choice, predictor_folder
    from polar.selection.selector import Selector, SelectorSpec

    meta = {"base_model": str(folders["llama"]), "prompt": TEST_PROMPT}
    folder = Selector.save(
        tmp_path / "baseline", SelectorSpec("static", "B1 best static program", 6, "0-2,4-5", meta=meta)
    )
    assert predictor_folder(str(folder)) == folder and base_model_of(folder) == str(folders["llama"])
    choose = load_choice(folder, load(str(folders["llama"]), device="cpu"))
    assert choose("Question: which is warmer?") == choose("another context") == Program.parse("0-2,4-5")
    with pytest.raises(FileNotFoundError, match="not a selector folder"):
        predictor_folder(str(tmp_path))


# ------------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_smollm2_full_depth_equals_the_hf_model_on_a_slice_of_every_shipped_task(smollm2):
    from polar.backbone import ensure_converted

    folder = str(ensure_converted("smollm2-135m"))
    args = {"dtype": "float32", "device": "cpu"}
    ours = _evaluate("polar", {"model": "smollm2-135m", "batch_size": 8, **args}, TASK_NAMES, limit=1)
    ref = _evaluate("hf", {"pretrained": folder, **args}, TASK_NAMES, limit=1, batch_size=1)
    _assert_agree(ours, ref, TASK_NAMES, scored=sum(_choices(t, 1) for t in ("easy", "challenge")), generated=1 + 1)
    assert smollm2.depth == ours["config"]["polar"]["depth"] == 30
