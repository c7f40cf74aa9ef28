"""The label record: one home for its fields, written and read back whole; old or torn files get clear errors."""

import json

import pytest
from conftest import label_record, write_labels

from polar.labels import SCHEMA, LabelRecord, ShardWriter, merge_shards, read_labels, read_records


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
