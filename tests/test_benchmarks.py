"""Real benchmarks load through `datasets` into Examples; bad records are reported, never fatal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import shared_data

from polar.tasks.answers import is_equivalent
from polar.tasks.benchmarks import BENCHMARKS, load_benchmark, records_from_rows
from polar.tasks.schema import ANSWER_KINDS, BadRecord, Example

FILES = {
    "gsm8k": "gsm8k/test.jsonl",
    "mawps": "mawps/zubingou/test.jsonl",
    "asdiv": "asdiv/zubingou/test.jsonl",
    "math": "math/math_test_5000/test.jsonl",
    "math500": "math/math500/test.jsonl",
    "mmlu-pro-math": "mmlu-pro/test_math_1351.jsonl",
    "arc": "arc/genmc_official/arc_challenge/test.jsonl",
    "arc-easy": "arc/genmc_official/arc_easy/test.jsonl",
    "arc-challenge": "arc/genmc_official/arc_challenge/dev.jsonl",
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A private `datasets` cache, so tests neither read nor grow the user's."""
    return tmp_path_factory.mktemp("hf_datasets_cache")


def _file(relpath: str) -> Path:
    path = shared_data() / relpath
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


def _raw(relpath: str) -> list[dict]:
    with _file(relpath).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.mark.parametrize("name", ["arc-easy", "mmlu-pro-math"])
def test_multiple_choice_questions_keep_their_choices(name, cache):
    examples, _ = load_benchmark(name, _file(FILES[name]), limit=50, cache_dir=cache)
    for e in examples:
        assert e.answer_kind == "choice" and len(e.choices) >= 2 and e.answer in "ABCDEFGHIJ"[: len(e.choices)]
        assert e.question == e.stem + "".join(f"\n{'ABCDEFGHIJ'[i]}. {c}" for i, c in enumerate(e.choices))
        assert e.stem and "\nA. " not in e.stem
        assert Example.from_dict(e.to_dict()) == e  # a task file's row reads back the same


def test_every_benchmark_has_a_file_here():
    assert set(FILES) == set(BENCHMARKS)
    assert all(spec.answer_kind in ANSWER_KINDS for spec in BENCHMARKS.values())


@pytest.mark.parametrize(
    ("name", "relpath"),
    [*FILES.items(), ("arc", "arc/lzyfischer_icml_kd/arc_challenge_test.jsonl"), ("gsm8k", "gsm8k/train.jsonl")],
)
def test_loads_twenty(name, relpath, cache):
    path = _file(relpath)
    examples, bad = load_benchmark(name, path, limit=20, cache_dir=cache)
    assert len(examples) == 20
    assert len({e.id for e in examples}) == 20
    for example in examples:
        assert isinstance(example, Example)
        assert example.question.strip() and example.answer.strip()
        assert example.task == name
        assert example.answer_kind == BENCHMARKS[name].answer_kind
        index = int(example.id.rsplit("/", 1)[1])
        assert example.id == f"{name}/{Path(path).stem}/{index}"  # a single file: ids name the file
        assert example.source == f"{path}#{index}"
    assert all(isinstance(b, BadRecord) and b.reason for b in bad)


def test_full_gsm8k(cache):
    examples, bad = load_benchmark("gsm8k", _file("gsm8k/test.jsonl"), cache_dir=cache)
    assert (len(examples), len(bad)) == (1319, 0)
    assert examples[0].answer == "18" and examples[0].level == "all"  # GSM8K has no levels
    assert all("," not in e.answer for e in examples)
    # the cross-check copy has the same questions and answers
    other, _ = load_benchmark("gsm8k", _file("gsm8k/zubingou_crosscheck/test.jsonl"), cache_dir=cache)
    assert [(e.question, e.answer) for e in other] == [(e.question, e.answer) for e in examples]


def test_split_names_ids(cache):
    examples, _ = load_benchmark("gsm8k", _file("gsm8k/train.jsonl"), split="train", limit=3, cache_dir=cache)
    assert [e.id for e in examples] == ["gsm8k/train/0", "gsm8k/train/1", "gsm8k/train/2"]
    assert {e.level for e in examples} == {"all"}


def test_asdiv_non_numeric_answers_are_bad_records(cache):
    path = _file("asdiv/zubingou/test.jsonl")
    examples, bad = load_benchmark("asdiv", path, cache_dir=cache)
    assert len(examples) + len(bad) == 2215
    assert len(bad) == 122  # times ("3:30 p.m."), ratios ("5:6"), names, ordinals ("6th")
    assert all("non-numeric answer" in b.reason and b.source == str(path) for b in bad)
    first = examples[0]
    assert (
        first.question == "Seven red apples and two green apples are in the basket. How many apples are in the basket?"
    )
    assert first.answer == "9"
    assert {"2.5", "-1/3"} <= {e.answer for e in examples}  # "5/2" as a decimal, "-(1/3)" exactly


def test_mawps_answers(cache):
    examples, bad = load_benchmark("mawps", _file("mawps/zubingou/test.jsonl"), cache_dir=cache)
    assert (len(examples), len(bad)) == (2065, 0)
    assert examples[0].answer == "43"  # 43.0 without the ".0"
    assert not any(e.answer.endswith(".0") for e in examples)
    assert "1.84" in {e.answer for e in examples}


def test_math_levels_and_answers(cache):
    examples, bad = load_benchmark("math", _file("math/math_test_5000/test.jsonl"), limit=200, cache_dir=cache)
    assert not bad
    assert examples[0].answer == "2" and examples[0].level == "3"  # "Level 3"
    assert {e.level for e in examples} <= {"1", "2", "3", "4", "5"}
    assert all(e.answer_kind == "math" for e in examples)
    m500, bad = load_benchmark("math500", _file("math/math500/test.jsonl"), cache_dir=cache)
    assert (len(m500), len(bad)) == (500, 0)
    assert m500[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)" and m500[0].level == "2"
    assert {e.level for e in m500} == {"1", "2", "3", "4", "5"}


def test_mmlu_pro_options_and_level(cache):
    examples, bad = load_benchmark("mmlu-pro-math", _file("mmlu-pro/test_math_1351.jsonl"), cache_dir=cache)
    assert (len(examples), len(bad)) == (1351, 0)
    first = examples[0]
    assert first.answer == "H" and first.level == "ori_mmlu-abstract_algebra"
    assert "\nA. True, False\n" in first.question and first.question.endswith("I. False, Not Given")
    letters = {e.answer for e in examples}
    assert letters <= set("ABCDEFGHIJ") and "J" in letters


def test_arc_numeric_labels_become_letters(cache):
    relpath = "arc/genmc_official/arc_easy/test.jsonl"
    raw = _raw(relpath)
    examples, bad = load_benchmark("arc", _file(relpath), cache_dir=cache)
    assert (len(examples), len(bad)) == (len(raw), 0)
    numeric = [i for i, row in enumerate(raw) if row["answerKey"].isdigit()]
    assert len(numeric) > 50
    for i in numeric:
        example = examples[i]
        assert example.answer == "ABCD"[int(raw[i]["answerKey"]) - 1]
        assert "\nA. " in example.question and "\n1. " not in example.question


def test_arc_layouts_agree(cache):
    official, _ = load_benchmark("arc", _file("arc/genmc_official/arc_challenge/test.jsonl"), limit=5, cache_dir=cache)
    hub_like, _ = load_benchmark(
        "arc", _file("arc/lzyfischer_icml_kd/arc_challenge_test.jsonl"), limit=5, cache_dir=cache
    )
    assert official[0].question == hub_like[0].question  # same record, two layouts
    assert official[0].answer == hub_like[0].answer == "C"
    assert official[0].question.endswith("D. Planetary gravity will become stronger.")


def test_bad_rows_are_reported_and_skipped():
    rows = [
        {"question": "1+1?", "answer": "1+1=2\n#### 2"},
        {"question": "no answer"},
        {"question": "garbage", "answer": "hmm\n#### lots"},
        "not a record",
        {"question": "", "answer": "#### 3"},
        {"question": "2+2?", "answer": "#### 4"},
    ]
    examples, bad = records_from_rows("gsm8k", rows, source="mem", split="test")
    assert [e.id for e in examples] == ["gsm8k/test/0", "gsm8k/test/5"]
    assert [b.index for b in bad] == [1, 2, 3, 4]
    assert "missing field 'answer'" in bad[0].reason
    assert "lots" in bad[1].reason
    assert "not an object" in bad[2].reason
    assert "empty field 'question'" in bad[3].reason
    assert str(bad[0]) == "mem record 1: missing field 'answer'"


@pytest.mark.parametrize(
    ("name", "row", "reason"),
    [
        ("mawps", {"input": "q", "target": None}, "missing target"),
        ("mawps", {"input": "q", "target": "many"}, "non-numeric"),
        ("mawps", {"input": "q", "target": float("nan")}, "non-finite"),
        ("asdiv", {"body": "b", "question": "q", "answer": "Mrs. Hilt"}, "non-numeric"),
        ("math", {"problem": "p", "solution": "no box here"}, "boxed"),
        ("math500", {"problem": "p"}, "missing field 'solution'"),
        ("mmlu-pro-math", {"question": "q", "options": ["x", "y"], "answer": "C"}, "only 2 options"),
        ("mmlu-pro-math", {"question": "q", "options": ["x", "y"], "answer": "Z"}, "bad choice label"),
        ("mmlu-pro-math", {"question": "q", "answer": "A"}, "options"),
        (
            "arc",
            {"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "5"},
            "not one of",
        ),
        ("arc", {"question": {"stem": "q", "choices": []}, "answerKey": "A"}, "fewer than two"),
        ("arc", {"question": "q", "choices": {"text": ["a"], "label": ["A", "B"]}, "answerKey": "A"}, "labels"),
    ],
)
def test_bad_records_per_benchmark(name, row, reason):
    good = {
        "mawps": {"input": "q", "target": 2.0},
        "asdiv": {"body": "b", "question": "q", "answer": "2 (cats)"},
        "math": {"problem": "p", "solution": "\\boxed{2}"},
        "math500": {"problem": "p", "solution": "s", "answer": "2"},
        "mmlu-pro-math": {"question": "q", "options": ["1", "2"], "answer": "B"},
        "arc": {"question": "q", "choices": {"text": ["1", "2"], "label": ["1", "2"]}, "answerKey": "2"},
    }[name]
    examples, bad = records_from_rows(name, [row, good], source="mem")
    assert len(examples) == 1 and len(bad) == 1
    assert reason in bad[0].reason
    assert is_equivalent(examples[0].answer, {"choice": "B"}.get(examples[0].answer_kind, "2"), examples[0].answer_kind)


def test_mmlu_pro_hub_copy_keeps_math_only():
    rows = [
        {"question": "q1", "options": ["a", "b"], "answer": "A", "category": "law"},
        {"question": "q2", "options": ["a", "b"], "answer": "B", "category": "math", "src": "s"},
    ]
    examples, bad = records_from_rows("mmlu-pro-math", rows, source="hub")
    assert [e.id for e in examples] == ["mmlu-pro-math/test/1"] and not bad


def test_limit_counts_good_examples():
    rows = [{"question": "q"}] * 3 + [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(5)]
    examples, bad = records_from_rows("gsm8k", rows, source="mem", limit=2)
    assert [e.answer for e in examples] == ["0", "1"] and len(bad) == 3


def test_malformed_jsonl_line_does_not_stop_the_load(tmp_path, cache):
    path = tmp_path / "gsm8k.jsonl"
    lines = [
        json.dumps({"question": "a?", "answer": "#### 1"}),
        "{not json",
        json.dumps({"question": "b?", "answer": "#### 2"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    examples, bad = load_benchmark("gsm8k", path, cache_dir=cache)
    assert [e.id for e in examples] == ["gsm8k/gsm8k/0", "gsm8k/gsm8k/2"]
    assert [(b.index, b.reason.split(":")[0]) for b in bad] == [(1, "invalid JSON")]


def test_other_local_formats(tmp_path, cache):
    rows = [{"question": "a?", "answer": "#### 1,000"}, {"question": "b?", "answer": "#### 2"}]
    as_json = tmp_path / "rows.json"
    as_json.write_text(json.dumps(rows))
    as_csv = tmp_path / "rows.csv"
    as_csv.write_text('question,answer\n"a?","#### 1,000"\n"b?","#### 2"\n')
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for source in (as_json, as_csv, folder):
        examples, bad = load_benchmark("gsm8k", source, cache_dir=cache)
        assert [e.answer for e in examples] == ["1000", "2"] and not bad, source


def test_unknown_name():
    with pytest.raises(ValueError, match="known: .*gsm8k"):
        load_benchmark("gsm9k", "whatever.jsonl")


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_benchmark("gsm8k", missing)
    with pytest.raises(FileNotFoundError):
        load_benchmark("gsm8k", "data/gsm8k/test.jsonl")


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "rows.txt"
    path.write_text("hello")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_benchmark("gsm8k", path)


def test_unreachable_hub_id(cache):
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:  # online retries would take ~20 s before failing here
        pytest.skip("needs HF_HUB_OFFLINE=1 (set by conftest) to fail fast")
    with pytest.raises(ConnectionError, match="pass a local"):
        load_benchmark("gsm8k", "openai/gsm8k", config="main", cache_dir=cache)


def test_a_question_answer_file_of_ones_own_is_a_task(tmp_path, cache):
    """No disguise as MAWPS: name the fields; levels come from a field, or are "all"."""
    from polar.tasks.benchmarks import Fields

    rows = [
        {"q": "Ann has 3 pens and buys 2. How many?", "a": 5, "grade": "2"},
        {"q": "Tom has 9 cards and loses 4. How many?", "a": "5", "grade": "3"},
        {"q": "No answer here", "a": "many", "grade": "3"},
    ]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples, bad = load_benchmark("word", path, cache_dir=cache, fields=Fields("q", "a", "grade"))
    assert [(e.id, e.answer, e.level, e.task) for e in examples] == [
        ("word/mine/0", "5", "2", "word"),
        ("word/mine/1", "5", "3", "word"),
    ]
    assert [(b.index, b.reason) for b in bad] == [(2, "non-numeric a 'many'")]
    plain, _ = load_benchmark("word", path, cache_dir=cache, fields=Fields("q", "a"))
    assert {e.level for e in plain} == {"all"}
    with pytest.raises(ValueError, match="--question-field Q --answer-field A"):
        load_benchmark("word", path, cache_dir=cache)


def test_ingest_splits_any_file_by_question_with_a_pool_of_its_own(tmp_path):
    from polar.ingest import ingest
    from polar.settings import IngestConfig
    from polar.tasks.files import read_examples
    from polar.tasks.splits import normalise, split_of

    rows = [{"question": f"What is {i} plus {i % 7}?", "answer": i + i % 7} for i in range(400)]
    rows.append({"question": "what is 3 PLUS 3?", "answer": 6})  # the same question as row 3, written otherwise
    path = tmp_path / "plus.csv"
    path.write_text("question,answer\n" + "".join(f'"{r["question"]}",{r["answer"]}\n' for r in rows))
    paths, bad = ingest(
        tmp_path / "tasks", IngestConfig(task="plus", test=30, source=str(path), question_field="question")
    )
    assert [b.reason for b in bad] == ["same question as plus/plus/3"]
    splits = {name: read_examples(p) for name, p in paths.items()}
    assert len(splits["test"]) == 30 and len(splits["train"]) > 200 and splits["shots"]
    seen = {}
    for name, examples in splits.items():
        for e in examples:
            assert split_of(e.question) == name and seen.setdefault(normalise(e.question), name) == name
    manifest = json.loads((tmp_path / "tasks" / "manifest.json").read_text())
    assert manifest["splits"]["test"]["examples"] == 30 and manifest["rule"].startswith("sha256")
