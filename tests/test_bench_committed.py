"""bench/menus/committed.py: a study skips a split only when its committed matrix is what labeling it would make."""

import importlib.util
from pathlib import Path

from test_labeling_folder import _menu_record

from polar.labeling.folder import check_settings
from polar.labeling.reward_matrix import write_matrix
from polar.tasks.files import write_examples
from polar.tasks.prompts import PromptSpec
from polar.tasks.schema import Example

_spec = importlib.util.spec_from_file_location(
    "committed", Path(__file__).resolve().parents[1] / "bench" / "menus" / "committed.py"
)
committed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(committed)


def _study(tmp_path: Path, n: int = 4) -> tuple[Path, Path, Path]:
    tasks = tmp_path / "tasks" / "train.parquet"
    tasks.parent.mkdir()
    write_examples(tasks, [Example(f"t/{i}", f"q{i}", "1", "t", "1", "tests") for i in range(n)])
    shots = tasks.parent / "shots.parquet"
    write_examples(shots, [Example(f"s/{i}", f"s{i}", "2", "t", "1", "tests") for i in range(2)])
    prompt = PromptSpec.from_pool(shots, "plain", 1).to_dict()  # the prompt labeling builds from the shots
    menu = tmp_path / "menu.txt"
    menu.write_text("# two programs\n1-5\n")
    folder = tmp_path / "train"
    check_settings(folder, {"kind": "menu", "model": "models/m", "prompt": prompt})
    write_matrix(folder, {"model": "models/m", "tasks": str(tasks)}, [_menu_record(i) for i in range(n)])
    return folder, tasks, menu


def test_a_matrix_made_with_the_same_model_menu_shots_and_inputs_is_committed(tmp_path):
    folder, tasks, menu = _study(tmp_path)
    assert committed.mismatch(folder, tasks, menu, "models/m", None) == ""


def test_anything_else_says_what_differs(tmp_path):
    folder, tasks, menu = _study(tmp_path)
    assert "labeled on models/m, not models/other" in committed.mismatch(folder, tasks, menu, "models/other", None)
    other = tmp_path / "other.txt"
    other.write_text("2-5\n")
    assert "another menu" in committed.mismatch(folder, tasks, other, "models/m", None)
    too_deep = tmp_path / "deep.txt"
    too_deep.write_text("0-29\n")  # a menu for another model: its programs do not fit this one
    assert "not labeled with" in committed.mismatch(folder, tasks, too_deep, "models/m", None)
    assert "holds 4 inputs, not the 2 of" in committed.mismatch(folder, tasks, menu, "models/m", (0, 2))
    write_examples(tasks.parent / "shots.parquet", [Example("s/0", "other shots", "2", "t", "1", "tests")])
    assert "is not the one" in committed.mismatch(folder, tasks, menu, "models/m", None)
    assert committed.mismatch(tmp_path / "nowhere", tasks, menu, "models/m", None).endswith("no matrix")


def test_a_shard_is_committed_for_its_own_inputs_only(tmp_path):
    folder, tasks, menu = _study(tmp_path, n=4)
    write_matrix(folder, {"tasks": str(tasks), "shard": "0/2"}, [_menu_record(i) for i in (0, 2)])
    assert committed.mismatch(folder, tasks, menu, "models/m", (0, 2)) == ""
    assert "holds other inputs than the 2 of" in committed.mismatch(folder, tasks, menu, "models/m", (1, 2))
    assert "holds 2 inputs, not the 4 of" in committed.mismatch(folder, tasks, menu, "models/m", None)
