"""The menu labeler: every program on every input, equal to running each program alone; resumable; auto menus."""

import json
from dataclasses import replace

import pandas as pd
import pytest
from conftest import write_labels

from polar.backbone import ModelSpecError, model_depth
from polar.ingest import ingest
from polar.labeling.folder import MENU_FILE, MenuRecord, read_labels
from polar.labeling.menu import menu_id, resolve_menu
from polar.labeling.run import label
from polar.programs import Program
from polar.settings import IngestConfig, LabelConfig, MenuConfig
from polar.tasks.answers import grade
from polar.tasks.files import read_examples
from polar.tasks.prompts import stop_token_ids

pytestmark = pytest.mark.slow  # the bundled tokenizer

CONFIG = LabelConfig(shots=1, max_new_tokens=6)
MENU = ["0-5", "0-3,5", "0-2,2-5", "1-5"]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    paths, _ = ingest(tmp_path_factory.mktemp("tasks"), IngestConfig(levels="1,3", train=3, validation=1, test=1))
    return paths["train"]


def _menu(tmp_path, programs=MENU):
    path = tmp_path / "menu.txt"
    path.write_text("# a menu\n" + "\n".join(programs[1:]) + "\n")  # the identity comes first by itself
    return MenuConfig(menu=str(path), samples=2)


def test_every_reward_equals_running_the_program_alone(tiny_dir, tasks, tmp_path):
    from polar.backbone import load

    backbone = load(str(tiny_dir), device="cpu")
    merged = label(str(tiny_dir), tasks, tmp_path / "m", CONFIG, _menu(tmp_path), backbone=backbone)
    records = read_labels(merged, MenuRecord)
    examples = read_examples(tasks)
    assert [r.id for r in records] == [e.id for e in examples]
    spec, stops = CONFIG.prompt_spec(tasks), stop_token_ids(backbone.tokenizer)
    for record, example in zip(records, examples, strict=True):
        assert [x.program for x in record.results] == MENU
        ids = spec.encode(example.question, example.level, backbone.tokenizer)
        for x in record.results:
            alone = backbone.executor.generate([ids], [Program.parse(x.program)], 6, stop_token_ids=stops)[0]
            assert (x.prediction, x.correct) == grade(alone.text, example.answer, example.answer_kind)
            assert x.tokens == len(alone.tokens) and x.layers == len(Program.parse(x.program))
            score = backbone.executor.score([ids], [alone.tokens], [x.program])[0]
            assert x.logprob == pytest.approx(score.logprob, abs=1e-3)
            # The reference answer's likelihood, teacher-forced after the same prompt, as scored alone.
            _, (answer,) = spec.encode_scored(example, backbone.tokenizer)
            reference = backbone.executor.score([ids], [answer], [x.program])[0]
            assert (x.answer_logprob, x.answer_tokens) == (pytest.approx(reference.logprob, abs=1e-3), len(answer))
            assert x.choice_logprobs is None and x.correct_norm is None
        assert 0 <= record.sample_agreement <= 1 and 0 <= record.sample_correct <= 1
        assert record.base_margin >= 0 and record.base_entropy >= 0
    rewards = pd.read_parquet(tmp_path / "m" / "rewards.parquet")
    assert len(rewards) == len(examples) * len(MENU) and set(rewards["program"]) == set(MENU)
    assert rewards["answer_logprob"].notna().all() and (rewards["answer_tokens"] > 0).all()
    assert len(pd.read_parquet(tmp_path / "m" / "inputs.parquet")) == len(examples)
    # The run leaves its menu as a file that reads back as the same menu (what a later split is labeled with).
    again = resolve_menu(str(tmp_path / "m" / MENU_FILE), 6, 2)
    assert [p.text for p in again] == MENU and menu_id(again) == records[0].menu


def test_resume_and_changed_menus(tiny_dir, tasks, tmp_path):
    first = label(str(tiny_dir), tasks, tmp_path / "m", CONFIG, _menu(tmp_path), limit=2, device="cpu")
    assert len(read_labels(first, MenuRecord)) == 2
    again = label(str(tiny_dir), tasks, tmp_path / "m", CONFIG, _menu(tmp_path), device="cpu")
    records = read_labels(again, MenuRecord)
    assert len(records) == len(read_examples(tasks)) and records[:2] == read_labels(first, MenuRecord)[:2]
    with pytest.raises(ValueError, match="other settings .*menu"):
        label(str(tiny_dir), tasks, tmp_path / "m", CONFIG, _menu(tmp_path, MENU[:2]), device="cpu")
    # A menu is its programs, however it was given: the run goes on from the menu file it left.
    left = MenuConfig(menu=str(tmp_path / "m" / MENU_FILE), samples=2)
    assert read_labels(label(str(tiny_dir), tasks, tmp_path / "m", CONFIG, left, device="cpu"), MenuRecord) == records
    assert model_depth(str(tiny_dir)) == 6  # from the config alone (the pool's dispatcher loads no weights)
    with pytest.raises(ModelSpecError, match="model path not found"):
        model_depth(str(tmp_path / "no-model"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="could not read the model config of"):
        model_depth(str(tmp_path / "broken"))
    assert model_depth("smollm2-135m") == 30  # a bundled model's depth, without converting it


def test_menu_files_and_auto_menus(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("0-5\n0-9\n")
    with pytest.raises(ValueError, match="bad.txt:2: layer 6 is out of range"):
        resolve_menu(str(bad), 6, 2)
    with pytest.raises(ValueError, match="needs --discovery"):
        resolve_menu("auto:2", 6, 2)
    records = [
        {"valid": ["0-5", "0-3,5", "1-5"]},
        {"valid": ["0-3,5", "1-5"]},
        {"valid": ["0-3,5", "0-2,2-5"]},
    ]
    write_labels(tmp_path / "d" / "labels.jsonl", records)
    menu = resolve_menu("auto:2", 6, 2, discovery=str(tmp_path / "d"))
    assert [p.text for p in menu] == ["0-5", "0-3,5", "1-5"]  # identity, then most often valid (ties: shorter)


def test_the_bundled_model_gives_each_program_alone(smollm2, tasks):
    """On SmolLM2 with its real few-shot prompts: the grid's rows are the programs run alone, token for token."""
    from polar.decoding import Sampling
    from polar.grid import Samples, generate_grid

    spec = LabelConfig(shots=3).prompt_spec(tasks)
    examples = [e for e in read_examples(tasks) if e.level == "1"][:2]
    prompts = [spec.encode(e.question, e.level, smollm2.tokenizer) for e in examples]
    programs = [Program.parse(p) for p in ("0-29", "0-27", "0-14,13-29", "2-29")]
    stops = stop_token_ids(smollm2.tokenizer)
    sampling = Sampling(temperature=1.0)
    grid = generate_grid(smollm2.executor, prompts, programs, 12, stops, Samples(3, sampling, [5, 6]))
    for ids, seed, row in zip(prompts, [5, 6], grid, strict=True):
        alone = smollm2.executor.generate([ids], programs, 12, stop_token_ids=stops)
        assert [c.tokens for c in row[: len(programs)]] == [g.tokens for g in alone]
        drawn = smollm2.executor.generate(
            [ids], programs[:1] * 3, 12, replace(sampling, seed=seed), stop_token_ids=stops
        )
        assert [c.tokens for c in row[len(programs) :]] == [g.tokens for g in drawn]


def test_the_menu_stage_searches_a_slice_then_writes_one_menu_file(tiny_dir, tasks, tmp_path):
    """`polar menu`: MCTS on the first inputs (a resumable label folder), then the full depth and the programs valid
    on the most of them; a given menu file is checked against the model, line by line."""
    from polar.labeling.discovery import make_menu
    from polar.settings import SearchConfig

    config = replace(CONFIG, search=SearchConfig(simulations=3, batch=4))
    dense = MenuConfig(menu="auto:3", discovery_inputs=2)
    path, name = make_menu(str(tiny_dir), tasks, tmp_path / "discovery", tmp_path / "menu.txt", config, dense, "cpu")
    assert len(read_labels(tmp_path / "discovery")) == 2  # only the slice was searched
    programs = resolve_menu(str(path), 6, 2)
    assert programs[0] == Program.identity(6) and name == menu_id(programs) and len(programs) <= 4
    again, same = make_menu(str(tiny_dir), tasks, tmp_path / "discovery", tmp_path / "menu.txt", config, dense, "cpu")
    assert (again, same) == (path, name)  # a second run resumes the discovery and writes the same menu
    given = tmp_path / "given.txt"
    given.write_text("# two programs\n0-2,4-5\n0-5,5\n")
    _, name = make_menu(
        str(tiny_dir), tasks, tmp_path / "unused", tmp_path / "m2.txt", config, replace(dense, menu=str(given))
    )
    assert not (tmp_path / "unused").exists() and name.startswith("menu-3-")  # the full depth, then the two
    given.write_text("0-2,4-5\n0-9\n")
    with pytest.raises(ValueError, match=r"given.txt:2"):
        make_menu(str(tiny_dir), tasks, tmp_path / "d", tmp_path / "m3.txt", config, replace(dense, menu=str(given)))


ARC_ROWS = [
    {"question": {"stem": f"Which thing number {i} is a {kind}?", "choices": [
        {"label": "A", "text": "a rock"}, {"label": "B", "text": "the small green plant"},
        {"label": "C", "text": f"water {i}"}, {"label": "D", "text": "air"}]}, "answerKey": "ABCD"[i % 4]}
    for i, kind in enumerate(["plant", "gas", "liquid", "solid", "mineral", "tree", "cloud", "leaf"] * 6)
]  # fmt: skip


@pytest.fixture(scope="module")
def choice_tasks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("arc")
    for split, rows in (("train", ARC_ROWS[:30]), ("dev", ARC_ROWS[30:38]), ("test", ARC_ROWS[38:])):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = IngestConfig(task="arc-easy", splits="files", source=str(folder), shots=2)
    paths, _ = ingest(tmp_path_factory.mktemp("tasks"), config)
    return paths["train"]


def test_likelihood_scoring_answers_with_the_likeliest_choice(tiny_dir, choice_tasks, tasks, tmp_path):
    """Each program's choice is the likeliest of the choices scored alone after the cloze prompt; both rules."""
    from polar.backbone import load

    backbone = load(str(tiny_dir), device="cpu")
    dense = replace(_menu(tmp_path), scoring="likelihood")
    merged = label(str(tiny_dir), choice_tasks, tmp_path / "m", CONFIG, dense, backbone=backbone, limit=6)
    records = read_labels(merged, MenuRecord)
    spec = CONFIG.prompt_spec(choice_tasks, "cloze")
    assert spec.format == "cloze" and records[0].prompt == spec.id
    for record, example in zip(records, read_examples(choice_tasks), strict=False):
        ids, tails = spec.encode_scored(example, backbone.tokenizer)
        assert backbone.tokenizer.decode(ids).endswith(f"Question: {example.stem}\nAnswer:")  # no options shown
        texts = spec.answers_of(example)
        assert texts == [f" {c}" for c in example.choices]
        for x in record.results:
            alone = [backbone.executor.score([ids], [t], [x.program])[0].logprob for t in tails]
            assert x.choice_logprobs == pytest.approx(alone, abs=1e-3)
            best = max(range(len(alone)), key=lambda k: x.choice_logprobs[k])
            best_norm = max(range(len(alone)), key=lambda k: x.choice_logprobs[k] / len(texts[k]))
            assert (x.prediction, x.correct) == ("ABCD"[best], best == example.answer_index)
            assert (x.prediction_norm, x.correct_norm) == ("ABCD"[best_norm], best_norm == example.answer_index)
            assert x.answer_logprob == x.choice_logprobs[example.answer_index] and x.tokens == len(tails[best])
        assert 0 <= record.base_margin <= 1 and 0 <= record.sample_correct <= 1
    rewards = pd.read_parquet(tmp_path / "m" / "rewards.parquet")
    assert {"correct_norm", "prediction_norm", "choice_logprobs"} <= set(rewards.columns)
    # A task without choices cannot be scored by likelihood: the error names the tasks that can.
    with pytest.raises(ValueError, match="likelihood scoring is for multiple-choice tasks"):
        label(str(tiny_dir), tasks, tmp_path / "n", CONFIG, dense, backbone=backbone)


def test_multiple_choice_splits_keep_their_files_and_stay_disjoint(tmp_path):
    folder = tmp_path / "arc"
    folder.mkdir()
    rows = ARC_ROWS[:20]
    for split, part in (("train", rows[:12] + rows[14:15]), ("dev", rows[12:14]), ("test", rows[14:20])):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    paths, bad = ingest(tmp_path / "t", IngestConfig(task="arc-easy", splits="files", source=str(folder), shots=2))
    test, train = read_examples(paths["test"]), read_examples(paths["train"])
    assert len(test) == 6 and len(read_examples(paths["validation"])) == 2 and len(read_examples(paths["shots"])) == 2
    assert len(train) == 10 and [str(b).split(": ", 1)[1] for b in bad] == ["same question as arc-easy/test/0"]
    assert all(e.choices and e.question.endswith(f"D. {e.choices[3]}") for e in test)
    with pytest.raises(FileNotFoundError, match="has no validation file"):
        (folder / "dev.jsonl").unlink()
        ingest(tmp_path / "u", IngestConfig(task="arc-easy", splits="files", source=str(folder)))
    sized, _ = ingest(tmp_path / "s", IngestConfig(task="arc-easy", splits="sizes", source=str(folder / "train.jsonl"),
                                                   test=4, validation=3, shots=1))  # fmt: skip
    counts = {k: len(read_examples(v)) for k, v in sized.items()}
    assert counts == {"test": 4, "validation": 3, "shots": 1, "train": 5}  # 13 questions in all
