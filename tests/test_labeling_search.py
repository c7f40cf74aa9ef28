"""The search labeler through the label stage: records, resume after a real kill, rewards that equal running each
program alone, shards and their lock."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from polar.ingest import ingest
from polar.labeling.folder import TIMINGS, LabelRecord, label_prompt, read_records, worker_lock
from polar.labeling.run import label
from polar.labeling.search import label_one
from polar.settings import IngestConfig, LabelConfig, SearchConfig
from polar.tasks.prompts import PromptSpec, stop_token_ids

pytestmark = pytest.mark.slow  # needs the bundled tokenizer

CONFIG = LabelConfig(shots=1, max_new_tokens=6, search=SearchConfig(simulations=6, batch=3))


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    paths, _ = ingest(tmp_path_factory.mktemp("tasks"), IngestConfig(levels="1,4", train=5, validation=1, test=1))
    return paths["train"]


def _ids(tasks):
    from polar.tasks.files import read_examples

    return [e.id for e in read_examples(tasks)]


def test_records_hold_what_the_diagnosis_needs(tiny_dir, tasks, tmp_path):
    merged = label(str(tiny_dir), tasks, tmp_path / "labels", CONFIG, device="cpu")
    records = [json.loads(line) for line in merged.open()]
    assert [r["id"] for r in records] == _ids(tasks)
    r = records[0]
    for key in (
        "task",
        "level",
        "model",
        "prompt",
        "base_prediction",
        "base_correct",
        "evaluated",
        "valid",
        "shortest",
        "compact",
        "compact_error",
        "evaluations",
    ):
        assert key in r
    assert "seconds" not in r  # wall-clock time would make every run's labels different bytes
    spec = label_prompt(tmp_path / "labels")
    assert r["prompt"] == spec.id and spec.id.startswith("plain-1shot-v1-") and r["depth"] == 6
    assert spec.shots_for("1")[0][0] not in {json.loads(x)["question"] for x in merged.open()}
    assert len((tmp_path / "labels" / TIMINGS).read_text().splitlines()) == 10
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == sorted(
        ["labels.jsonl", "manifest.json", "settings.json", TIMINGS]  # the shards go once merged
    )
    assert r["evaluations"] == len(r["evaluated"]) == 7  # base + 6 simulations
    assert r["evaluated"][0]["program"] == "0-5"
    manifest = json.loads((tmp_path / "labels" / "manifest.json").read_text())
    assert manifest["inputs"] == 10


def test_a_killed_run_resumes_with_nothing_lost_or_duplicated(tiny_dir, tasks, tmp_path):
    out = tmp_path / "labels"
    cmd = [
        str(Path(sys.executable).parent / "polar"),
        "label",
        "--model",
        str(tiny_dir),
        "--tasks",
        str(tasks),
        "--out",
        str(out),
        "--simulations",
        "6",
        "--batch",
        "3",
        "--shots",
        "1",
        "--max-new-tokens",
        "6",
        "--device",
        "cpu",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it once some, but not all, inputs are labeled
        shards = list(out.glob("shard-*.jsonl"))
        if shards and sum(s.read_text().count("\n") for s in shards) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = list(read_records(out))
    assert 3 <= len(first) < 10, "the run should have been killed half-way"
    assert not (out / "labels.jsonl").exists()

    merged = label(str(tiny_dir), tasks, out, CONFIG, device="cpu")
    records = [json.loads(line) for line in merged.open()]
    assert len(records) == len({r["id"] for r in records}) == 10
    assert sum(1 for _ in read_records(out)) == 10
    kept = {r["id"]: r for r in records}
    assert all(LabelRecord.from_dict(kept[r.id]) == r for r in first)  # what was done is kept as it was

    straight = label(str(tiny_dir), tasks, tmp_path / "straight", CONFIG, device="cpu")
    assert straight.read_bytes() == merged.read_bytes()  # interrupted or not, the same bytes


def test_a_torn_last_line_is_repaired(tiny_dir, tasks, tmp_path):
    out = tmp_path / "labels"
    label(str(tiny_dir), tasks, out, CONFIG, limit=2, device="cpu")
    shard = out / "shard-0-0000.jsonl"
    shard.write_text('{"id": "' + _ids(tasks)[2] + '", "tas')  # a later run killed mid-write
    merged = label(str(tiny_dir), tasks, out, CONFIG, limit=3, device="cpu")
    assert [json.loads(line)["id"] for line in merged.open()] == _ids(tasks)[:3]


def test_other_settings_are_refused_on_resume(tiny_dir, tasks, tmp_path):
    label(str(tiny_dir), tasks, tmp_path / "labels", CONFIG, limit=1, device="cpu")
    other = LabelConfig(shots=1, max_new_tokens=6, search=SearchConfig(simulations=7, batch=3))
    with pytest.raises(ValueError, match="other settings \\(config differ\\)"):
        label(str(tiny_dir), tasks, tmp_path / "labels", other, limit=1, device="cpu")
    merged = label(str(tiny_dir), tasks, tmp_path / "labels", other, limit=1, device="cpu", restart_on_change=True)
    record = json.loads(merged.read_text())
    assert record["evaluations"] == 8  # base + 7 simulations: labeled again with the new settings
    assert json.loads((tmp_path / "labels" / "settings.json").read_text())["config"]["search"]["simulations"] == 7


def test_rewards_equal_running_each_program_alone(smollm2):
    """The search evaluates programs in batches with shared prefixes; a label is what a program does alone."""
    from polar.tasks.schema import Example

    example = Example("x/1", "What is 6 + 7?", "13", "arith", "1", "test")
    spec = PromptSpec("plain", 1, "test", {"*": [("What is 2 + 2?", "4")]})
    stops = stop_token_ids(smollm2.tokenizer)
    record, _ = label_one(smollm2, example, spec, LabelConfig(search=SearchConfig(simulations=12, batch=12)), stops)
    ids = spec.encode(example.question, example.level, smollm2.tokenizer)
    for ev in record.evaluated:
        alone = smollm2.executor.generate([ids], [ev.program], 50, stop_token_ids=stops)[0]
        from polar.tasks.answers import extract_answer

        assert extract_answer(alone.text, "number") == ev.prediction, ev.program


def test_diagnosis_report_from_three_search_spaces(tiny_dir, tasks, tmp_path):
    from polar.diagnose import diagnose

    for space in ("skip", "loop", "joint"):
        cfg = LabelConfig(shots=1, max_new_tokens=6, search=SearchConfig(space=space, simulations=6, batch=3))
        label(str(tiny_dir), tasks, tmp_path / "labels" / space, cfg, limit=4, device="cpu")
    report = diagnose(tmp_path / "labels", tmp_path / "report", command="polar diagnose ...")
    text = report.read_text()
    assert "| level | inputs | base | skip oracle | loop oracle | joint oracle |" in text
    assert "| all | 4 |" in text and "polar diagnose ..." in text
    for png in ("oracle_accuracy.png", "segment_lengths.png", "layer_heatmap.png"):
        assert (tmp_path / "report" / png).stat().st_size > 1000
    with pytest.raises(FileNotFoundError, match="joint"):
        diagnose(tmp_path / "nothing", tmp_path / "r2")


def test_labels_a_real_benchmark_file(tiny_dir, tmp_path):
    from conftest import shared_data

    paths, bad = ingest(
        tmp_path / "gsm8k", IngestConfig(task="gsm8k", source=str(shared_data() / "gsm8k/test.jsonl"), limit=300)
    )
    assert not bad
    merged = label(str(tiny_dir), paths["train"], tmp_path / "labels", CONFIG, limit=2, device="cpu")
    records = [json.loads(line) for line in merged.open()]
    assert [r["task"] for r in records] == ["gsm8k", "gsm8k"] and records[0]["answer_kind"] == "number"
    shot = label_prompt(tmp_path / "labels").shots_for("all")[0]  # from the pool, never from the file labeled
    from polar.tasks.files import read_examples

    pool = {e.question for e in read_examples(paths["shots"])}
    assert shot[0] in pool and shot[0] not in {e.question for e in read_examples(paths["train"])}


def test_sharded_workers_merge_to_the_same_labels(tiny_dir, tasks, tmp_path):
    whole = label(str(tiny_dir), tasks, tmp_path / "whole", CONFIG, device="cpu")
    out = tmp_path / "sharded"
    assert label(str(tiny_dir), tasks, out, CONFIG, device="cpu", shard=(1, 3)) is None
    assert label(str(tiny_dir), tasks, out, CONFIG, device="cpu", shard=(0, 3)) is None
    merged = label(str(tiny_dir), tasks, out, CONFIG, device="cpu", shard=(2, 3))
    assert merged.read_bytes() == whole.read_bytes()
    assert not list(out.glob("shard-*.jsonl"))  # merged, then removed
    with pytest.raises(ValueError, match="0 <= K < N"):
        label(str(tiny_dir), tasks, out, CONFIG, device="cpu", shard=(3, 3))


def test_two_writers_of_one_worker_are_refused(tiny_dir, tasks, tmp_path):
    out = tmp_path / "labels"
    held = worker_lock(out, "0")  # as if another `polar label` were writing worker 0's shards
    try:
        with pytest.raises(ValueError, match="another `polar label` is writing worker '0'"):
            label(str(tiny_dir), tasks, out, CONFIG, limit=1, device="cpu")
        assert label(str(tiny_dir), tasks, out, CONFIG, limit=1, device="cpu", worker="1").exists()
    finally:
        held.release()
