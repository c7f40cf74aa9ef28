"""The one labeling loop, with a labeler that needs no model: resume, shards, the lock, and the choice of labeler."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from conftest import label_record

from polar.labeling.folder import LabelRecord, check_settings, merge_shards, read_records, worker_lock
from polar.labeling.menu import MenuLabeler
from polar.labeling.run import labeler_for, run_labeling
from polar.labeling.search import SearchLabeler
from polar.settings import LabelConfig, MenuConfig, SearchConfig
from polar.tasks.schema import Example

EXAMPLES = [Example(f"t/{i}", f"q{i}", "1", "t", str(1 + i % 2), "tests") for i in range(7)]


class Counting:
    """Labels each input with a fixed record; remembers what it was asked to label."""

    model, tasks, name, record_kind = "m", "tasks.parquet", "fake", LabelRecord

    def __init__(self, settings: dict | None = None) -> None:
        self.settings = settings or {"fake": 1}
        self.asked: list[str] = []
        self.finished = 0

    def prepare(self, out_dir: Path, restart_on_change: bool = False) -> None:
        check_settings(Path(out_dir), self.settings, restart_on_change)

    def label_batch(self, examples: Sequence[Example]) -> Iterator[tuple[LabelRecord, float]]:
        for e in examples:
            self.asked.append(e.id)
            yield LabelRecord.from_dict(label_record(int(e.id.split("/")[1]), base_correct=e.level == "1")), 0.5

    def finish(self, out_dir: Path, ids: Sequence[str]) -> Path:
        self.finished += 1
        return merge_shards(out_dir, ids)


def test_a_whole_run_labels_every_input_once_and_a_second_run_nothing(tmp_path):
    labeler = Counting()
    merged = run_labeling(labeler, EXAMPLES, tmp_path / "l")
    assert merged == tmp_path / "l" / "labels.jsonl" and labeler.finished == 1
    assert [r.id for r in read_records(tmp_path / "l")] == [e.id for e in EXAMPLES]
    assert labeler.asked == [e.id for e in EXAMPLES] and not list((tmp_path / "l").glob("shard-*"))
    again = Counting()
    assert run_labeling(again, EXAMPLES, tmp_path / "l").read_bytes() == merged.read_bytes()
    assert again.asked == []  # resumed: every input was labeled
    with pytest.raises(ValueError, match="other settings"):
        run_labeling(Counting({"fake": 2}), EXAMPLES, tmp_path / "l")
    assert run_labeling(Counting({"fake": 2}), EXAMPLES[:2], tmp_path / "l", restart_on_change=True).exists()
    assert [r.id for r in read_records(tmp_path / "l")] == ["t/0", "t/1"]


def test_shards_label_their_inputs_and_the_last_one_merges_the_same_bytes(tmp_path):
    whole = run_labeling(Counting(), EXAMPLES, tmp_path / "whole")
    out, labelers = tmp_path / "sharded", [Counting() for _ in range(3)]
    assert run_labeling(labelers[2], EXAMPLES, out, shard=(2, 3)) is None
    assert run_labeling(labelers[0], EXAMPLES, out, shard=(0, 3)) is None
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-0of3-0000.jsonl", "shard-2of3-0000.jsonl"]
    merged = run_labeling(labelers[1], EXAMPLES, out, shard=(1, 3))
    assert merged.read_bytes() == whole.read_bytes() and labelers[1].finished == 1
    assert [lab.asked for lab in labelers] == [[e.id for e in EXAMPLES[k::3]] for k in range(3)]
    with pytest.raises(ValueError, match="0 <= K < N"):
        run_labeling(Counting(), EXAMPLES, out, shard=(3, 3))


def test_without_merge_the_shards_stay_and_a_held_worker_is_refused(tmp_path):
    out, seen = tmp_path / "l", []
    assert run_labeling(Counting(), EXAMPLES[:3], out, worker="w", after_write=seen.append, merge=False) is None
    assert seen == [out / "shard-w-0000.jsonl"] * 3 and not (out / "labels.jsonl").exists()
    held = worker_lock(out, "w")
    try:
        with pytest.raises(ValueError, match="another `polar label` is writing worker 'w'"):
            run_labeling(Counting(), EXAMPLES, out, worker="w")
    finally:
        held.release()
    with pytest.raises(ValueError, match="tasks.parquet: duplicate example ids"):
        run_labeling(Counting(), [*EXAMPLES, EXAMPLES[0]], tmp_path / "dup")


def test_the_settings_choose_the_labeler():
    config = LabelConfig(search=SearchConfig(space="skip"))
    search = labeler_for(config, MenuConfig(), "m", "t.parquet")
    menu = labeler_for(config, MenuConfig(menu="auto:3", discovery="d"), "m", "t.parquet", device="cpu")
    assert isinstance(search, SearchLabeler) and search.name == "skip" and search.config == config
    assert isinstance(menu, MenuLabeler) and menu.name == "menu" and menu.dense.menu == "auto:3"
    assert menu.device == "cpu" and menu.backbone is None  # nothing is loaded before the first input
    with pytest.raises(RuntimeError, match="before prepare"):
        next(menu.label_batch(EXAMPLES))
