"""The label folder: records with one home for their fields, written and read back whole; old or torn files get
clear errors; manifests and the export of a finished shard's reward matrix."""

import json

import pandas as pd
import pytest
from conftest import label_record, write_labels

from polar.labeling.folder import (
    INPUTS,
    MENU,
    REWARDS,
    SCHEMA,
    LabelRecord,
    MenuRecord,
    MenuResult,
    ShardWriter,
    check_settings,
    merge_shards,
    parse_shard,
    read_labels,
    read_records,
    read_settings,
    record_header,
    write_manifest,
)
from polar.labeling.reward_matrix import export_part, join_parts, write_matrix
from polar.tasks.files import write_examples
from polar.tasks.schema import Example


def test_record_round_trips_through_json(tmp_path):
    data = label_record(3, valid=["0-5"], evaluated=[{"program": "0-5", "reward": 1.0, "length": 6, "prediction": "1"}])
    record = LabelRecord.from_dict(data)
    assert record.valid == ("0-5",) and record.evaluated[0].reward == 1.0
    assert json.loads(record.to_json()) == data
    path = write_labels(tmp_path / "labels.jsonl", [data])
    assert read_labels(path)[0].id == "t/3" and read_labels(tmp_path)[0] == read_labels(path)[0]


def test_old_schema_and_broken_records_name_the_line(tmp_path):
    path = tmp_path / "labels.jsonl"
    old = {k: v for k, v in label_record().items() if k != "schema"}  # as polar wrote them before the schema
    path.write_text(json.dumps(label_record()) + "\n" + json.dumps(old) + "\n")
    with pytest.raises(ValueError, match=rf"labels.jsonl:2: a label record of schema 1, .* reads schema {SCHEMA}"):
        read_labels(path)
    path.write_text(json.dumps({k: v for k, v in label_record().items() if k != "valid"}) + "\n")
    with pytest.raises(ValueError, match="labels.jsonl:1: not a whole label record .missing valid"):
        read_labels(path)
    with pytest.raises(FileNotFoundError, match="polar label"):
        read_labels(tmp_path / "nowhere")


def test_shards_merge_in_input_order_and_a_torn_line_is_dropped(tmp_path):
    a, b = (LabelRecord.from_dict(label_record(i)) for i in (0, 1))
    writer = ShardWriter(tmp_path, "0")
    writer.write(b, 1.0)
    writer.write(a, 2.0)
    writer.close()
    with writer.path.open("a") as f:
        f.write('{"id": "t/9", "torn')  # a kill mid-write
    assert [r.id for r in read_records(tmp_path)] == ["t/1", "t/0"]
    ShardWriter(tmp_path, "0").close()  # a new run of the worker repairs its shards
    assert writer.path.read_text().endswith("\n")
    merged = merge_shards(tmp_path, ["t/0", "t/1"])
    assert [r.id for r in read_labels(merged)] == ["t/0", "t/1"] and not list(tmp_path.glob("shard-*"))


def _menu_record(i: int, level: str = "1", correct: bool = True) -> MenuRecord:
    results = tuple(MenuResult(p, correct and p == "0-5", "1", 6, -0.5, 2) for p in ("0-5", "1-5"))
    return MenuRecord(
        **record_header(Example(f"t/{i}", f"q{i}", "1", "t", level, "tests"), "m", 6, "p"),
        menu="menu-2-abc",
        results=results,
        base_logprob=-0.25,
        base_margin=0.5,
        base_entropy=0.7,
        sample_agreement=1.0,
        sample_correct=0.5,
    )


def test_menu_records_round_trip_and_broken_results_name_the_line(tmp_path):
    record = _menu_record(1)
    assert MenuRecord.from_dict(json.loads(record.to_json())) == record and record.base_correct
    data = json.loads(record.to_json())
    data["results"][1] = {"program": "1-5"}
    path = tmp_path / "menu.jsonl"
    path.write_text(json.dumps(data) + "\n")
    with pytest.raises(ValueError, match=r"menu.jsonl:1: broken 'results' entry"):
        read_labels(tmp_path, MenuRecord)
    path.write_text(json.dumps({k: v for k, v in data.items() if k != "menu"}) + "\n")
    with pytest.raises(ValueError, match="menu.jsonl:1: not a whole menu record .missing menu"):
        read_labels(path, MenuRecord)


def test_a_manifest_counts_the_inputs_and_the_base_models_right_answers(tmp_path):
    records = [LabelRecord.from_dict(label_record(i, base_correct=i < 2)) for i in range(3)]
    path = write_manifest(tmp_path, {"model": "m", "tasks": "t"}, [r.base_correct for r in records], {"prompt": "p"})
    assert (
        path.read_text()
        == json.dumps({"model": "m", "tasks": "t", "inputs": 3, "prompt": "p", "base_correct": 2}, indent=2) + "\n"
    )


def test_a_finished_shard_exports_alone_as_a_reward_matrix(tmp_path):
    examples = [Example(f"t/{i}", f"q{i}", "1", "t", "1", "tests") for i in range(5)]
    write_examples(tmp_path / "train.parquet", examples)
    out = tmp_path / "menu"
    check_settings(out, {"kind": "menu"})
    writer = ShardWriter(out, "0of2")
    for i in (0, 2, 4):  # shard 0 of 2, done; shard 1 has not begun
        writer.write(_menu_record(i, correct=i != 2), 1.0)
    writer.close()
    with pytest.raises(ValueError, match="shard 1/2 of .* lacks 2 of 2 inputs"):
        export_part(out, tmp_path / "train.parquet", (1, 2), tmp_path / "part1")
    manifest = json.loads(export_part(out, tmp_path / "train.parquet", (0, 2), tmp_path / "part").read_text())
    assert manifest == {
        "tasks": str(tmp_path / "train.parquet"),
        "shard": "0/2",
        "inputs": 3,
        "menu": "menu-2-abc",
        "prompt": "p",
        "recheck": {"rows": 0, "texts_differ": 0, "verdicts_differ": 0},
        "base_correct": 2,
    }
    rewards = pd.read_parquet(tmp_path / "part" / REWARDS)
    assert list(rewards["id"]) == ["t/0", "t/0", "t/2", "t/2", "t/4", "t/4"]
    assert list(pd.read_parquet(tmp_path / "part" / INPUTS)["base_correct"]) == [True, False, True]
    assert read_settings(tmp_path / "part") == {"kind": "menu"} and not (tmp_path / "part" / MENU).exists()


def test_parts_join_into_the_matrix_labeling_the_split_whole_writes(tmp_path):
    examples = [Example(f"t/{i}", f"q{i}", "1", "t", "1", "tests") for i in range(5)]
    tasks = tmp_path / "train.parquet"
    write_examples(tasks, examples)
    records = [_menu_record(i, correct=i % 2 == 0) for i in range(5)]
    whole = tmp_path / "whole"
    check_settings(whole, {"kind": "menu", "model": "m"})
    write_matrix(whole, {"model": "m", "tasks": str(tasks)}, records)  # what a whole run's merge writes
    out = tmp_path / "menu"
    check_settings(out, {"kind": "menu", "model": "m"})
    writer = ShardWriter(out, "0")
    for r in reversed(records):  # labeled in any order
        writer.write(r, 1.0)
    writer.close()
    parts = [export_part(out, tasks, (k, 2), tmp_path / f"part{k}").parent for k in (1, 0)]
    manifest = join_parts(parts, tasks, tmp_path / "joined")
    for name in (REWARDS, INPUTS):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "joined" / name), pd.read_parquet(whole / name))
    assert manifest.read_text() == (whole / "manifest.json").read_text()
    with pytest.raises(ValueError, match=r"the parts hold 3 of the 5 inputs of .* \(2 missing, first t/1\)"):
        join_parts(parts[1:], tasks, tmp_path / "half")
    with pytest.raises(ValueError, match="parts share 3 inputs"):
        join_parts([parts[1], parts[1]], tasks, tmp_path / "twice")


def test_a_shard_is_written_k_of_n():
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "1", "a/2", "1/-2", "0/0"):
        with pytest.raises(ValueError, match=r"write K/N with 0 <= K < N"):
            parse_shard(bad)
