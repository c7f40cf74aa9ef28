"""dvc.yaml's stages depend on all the code they run, and dvc.lock records that code as it is today.

The code a stage runs is computed from the imports of its ``polar`` command (:func:`polar.layout.code_deps`),
so a module added to a stage's import graph, e.g. answer grading for labeling, makes this test name it until
dvc.yaml lists it; ``dvc status`` then re-runs the stage when it changes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from polar.layout import NOT_OUTPUT_CODE, code_deps, missing_code_deps, stage_commands, write_code_deps

ROOT = Path(__file__).resolve().parents[1]
CODE = ("polar/", "flows/")  # deps under these are our source code; every other dep is data or weights
FIX_LOCK = "run the main job, `polar pipeline`, and commit dvc.lock"


def _stages(dvc_yaml: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """dvc.yaml's stages as (name, body): a ``foreach`` stage's body is its ``do:``."""
    for name, stage in (dvc_yaml.get("stages") or {}).items():
        yield name, stage.get("do", stage)


STAGES = list(_stages(yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))))


@pytest.mark.parametrize(("name", "stage"), STAGES, ids=[name for name, _ in STAGES])
def test_each_stage_depends_on_the_code_its_command_runs(name, stage):
    if not stage_commands(stage.get("cmd", "")):
        pytest.skip(f"{name}: its cmd runs no `polar <command>`, so its code is not traced from polar/cli")
    missing = missing_code_deps(stage)
    assert not missing, (
        f"dvc.yaml stage {name!r} runs `{' '.join(stage_commands(stage['cmd']))}`, whose imports reach code its "
        f"deps do not list: {', '.join(missing)}; add them to the stage's deps in dvc.yaml "
        "(a folder covers the files under it), or regenerate every stage's code deps: `python -m polar.layout`"
    )


def test_a_stage_missing_one_imported_file_is_named():
    needed = code_deps("validate")
    assert "polar/validation.py" in needed and "polar/labeling/folder.py" in needed  # its code and what it imports
    stage = {"cmd": "polar validate --params params.yaml", "deps": ["data/labels/x", *needed]}
    assert missing_code_deps(stage) == []
    stage["deps"] = [d for d in stage["deps"] if d != "polar/labeling/folder.py"]
    assert missing_code_deps(stage) == ["polar/labeling/folder.py"]
    # A folder covers what is under it, given with or without a trailing slash or DVC's options.
    assert missing_code_deps({"cmd": stage["cmd"], "deps": ["polar/"]}) == []
    tasks = [d for d in needed if d.startswith("polar/tasks/")]
    assert tasks, "validate reaches polar/tasks through its settings"
    listed = [d for d in needed if not d.startswith("polar/tasks/")] + [{"polar/tasks": {"hash": "md5"}}]
    assert missing_code_deps({"cmd": stage["cmd"], "deps": listed}) == []
    assert missing_code_deps({"cmd": stage["cmd"], "deps": listed[1:]}) == [needed[0]]


def test_a_cmd_that_is_not_polar_or_names_no_command_is_refused():
    assert stage_commands("python train.py") == []
    assert stage_commands(["polar ingest --out x", "echo done"]) == ["ingest"]
    with pytest.raises(ValueError, match="runs no `polar <command>`"):
        missing_code_deps({"cmd": "python train.py", "deps": []})
    with pytest.raises(ValueError, match="polar no-such: no such command .*found: .*label"):
        code_deps("no-such")


def _write(root: Path, files: dict[str, str]) -> None:
    for relpath, text in files.items():
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_imports_are_followed_lazily_relatively_and_through_packages(tmp_path):
    _write(
        tmp_path,
        {
            "polar/__init__.py": "",
            "polar/cli/__init__.py": "from polar.cli import cmds\n",  # left out: it only assembles commands
            "polar/cli/options.py": "app = object()\n",
            "polar/cli/cmds.py": (
                "from polar.cli.options import app\n\n"
                "@app.command(name='go')\n"
                "def go_cmd():\n"
                "    from polar.work import run\n\n"
                "@app.command()\n"
                "def other_thing():\n"
                "    import polar.unused\n"  # another command's code: not go's
            ),
            "polar/unused.py": "",
            "polar/work.py": (
                "from typing import TYPE_CHECKING\n"
                "from polar import grading\n"  # a submodule through its package
                "if TYPE_CHECKING:\n"
                "    from polar import typing_only\n"
                "else:\n"
                "    from polar import at_runtime\n"
                "def run():\n"
                "    from .pkg import sub\n"  # lazy and relative
                "    from flows.api import where\n"  # excluded: where work runs
                "    import numpy\n"  # not ours
            ),
            "polar/grading.py": "",
            "polar/typing_only.py": "",
            "polar/at_runtime.py": "",
            "polar/pkg/__init__.py": "",
            "polar/pkg/sub.py": "from . import helper\nfrom ..grading import GRADE\n",
            "polar/pkg/helper.py": "",
            "flows/__init__.py": "",
            "flows/api.py": "import polar.unused\n",
        },
    )
    assert "flows/api.py" in NOT_OUTPUT_CODE
    assert code_deps("go", tmp_path) == [
        "polar/__init__.py",
        "polar/at_runtime.py",
        "polar/cli/cmds.py",
        "polar/cli/options.py",
        "polar/grading.py",
        "polar/pkg/__init__.py",
        "polar/pkg/helper.py",
        "polar/pkg/sub.py",
        "polar/work.py",
    ]
    assert code_deps("other-thing", tmp_path) == [
        "polar/__init__.py",
        "polar/cli/cmds.py",
        "polar/cli/options.py",
        "polar/unused.py",
    ]
    (tmp_path / "polar/pkg/helper.py").write_text("from polar.moved_away import thing\n", encoding="utf-8")
    with pytest.raises(ValueError, match="polar/pkg/helper.py imports polar.moved_away, which is no module"):
        code_deps("go", tmp_path)


def test_a_package_that_serves_names_on_demand_brings_all_its_submodules(tmp_path):
    lazy_init = (
        "import importlib\n"
        "def __getattr__(name):\n"
        "    return getattr(importlib.import_module(f'{__name__}.{HOMES[name]}'), name)\n"
    )
    _write(
        tmp_path,
        {
            "polar/__init__.py": "",
            "polar/cli/options.py": "app = object()\n",
            "polar/cli/cmds.py": (
                "from polar.cli.options import app\n\n"
                "@app.command()\n"
                "def direct():\n"
                "    from polar.lazy.one import f\n\n"  # names its module: that one alone
                "@app.command()\n"
                "def served():\n"
                "    from polar.lazy import g\n"  # served by __getattr__ from some submodule
            ),
            "polar/lazy/__init__.py": lazy_init,
            "polar/lazy/one.py": "",
            "polar/lazy/two.py": "",
        },
    )
    common = ["polar/__init__.py", "polar/cli/cmds.py", "polar/cli/options.py", "polar/lazy/__init__.py"]
    assert code_deps("direct", tmp_path) == [*common, "polar/lazy/one.py"]
    assert code_deps("served", tmp_path) == [*common, "polar/lazy/one.py", "polar/lazy/two.py"]


# --- dvc.lock against the files ----------------------------------------------------------------------------


def _code(path: str) -> bool:
    return path.startswith(CODE)


def stale_code_hashes(
    status: Mapping[str, Any], lock: Mapping[str, Any], dvc_yaml: Mapping[str, Any]
) -> dict[str, dict[str, str]]:
    """The code deps under polar/ or flows/ that dvc.lock does not record as they are today, per locked stage.

    Args:
        status: the output of ``dvc status --json``: stage -> entries, ``{"changed deps": {path: state}}`` among them.
        lock: dvc.lock, parsed.
        dvc_yaml: dvc.yaml, parsed (a locked ``label@m`` is its stage ``label``).

    Returns:
        ``{stage: {path: why}}`` for the stages of dvc.lock. ``why`` is "changed since dvc.lock", "not in
        dvc.lock" (a dep added to dvc.yaml since, which DVC reports as modified too), "missing from the
        checkout" or "no longer a dep in dvc.yaml". Data, weights and outputs, which a fresh clone does not
        have, are left out.
    """
    locked = lock.get("stages") or {}
    declared = {name: stage for name, stage in _stages(dvc_yaml)}
    stale: dict[str, dict[str, str]] = {}
    for stage, entry in locked.items():
        recorded = {dep["path"].rstrip("/") for dep in entry.get("deps") or [] if _code(dep["path"])}
        body = declared.get(stage.partition("@")[0])
        if body is not None:
            listed = {str(next(iter(d)) if isinstance(d, Mapping) else d).rstrip("/") for d in body.get("deps") or []}
            for path in sorted(recorded - listed):
                stale.setdefault(stage, {})[path] = "no longer a dep in dvc.yaml"
        for change in status.get(stage, []):
            changed = change.get("changed deps", {}) if isinstance(change, Mapping) else {}
            for path, state in changed.items():
                if not _code(path):
                    continue
                if state == "deleted":
                    why = "missing from the checkout"
                elif path.rstrip("/") not in recorded:
                    why = "not in dvc.lock"
                else:
                    why = "changed since dvc.lock"
                stale.setdefault(stage, {})[path] = why
    return stale


def test_stale_code_hashes_reads_dvc_status():
    lock = {
        "stages": {
            "label@m": {
                "deps": [{"path": "polar/label.py"}, {"path": "polar/labels.py"}, {"path": "data/tasks/train.parquet"}]
            }
        }
    }
    dvc_yaml = {"stages": {"label": {"foreach": {"m": {}}, "do": {"deps": ["polar/label.py", "polar/tasks"]}}}}
    status = {
        "label@m": [
            {
                "changed deps": {
                    "polar/label.py": "modified",
                    "polar/tasks": "modified",
                    "data/tasks/train.parquet": "deleted",
                }
            },
            {"changed outs": {"data/labels/m": "not in cache"}},
            "changed command",
        ],
        "new-stage": [{"changed deps": {"polar/new.py": "modified"}}],  # not locked yet: nothing to compare
    }
    assert stale_code_hashes(status, lock, dvc_yaml) == {
        "label@m": {
            "polar/label.py": "changed since dvc.lock",
            "polar/labels.py": "no longer a dep in dvc.yaml",
            "polar/tasks": "not in dvc.lock",
        }
    }
    dvc_yaml["stages"]["label"]["do"]["deps"].append("polar/labels.py")
    quiet = {"label@m": [{"changed deps": {"data/tasks/train.parquet": "modified"}}]}
    assert stale_code_hashes(quiet, lock, dvc_yaml) == {}


def test_dvc_lock_records_todays_code():
    lock_file = ROOT / "dvc.lock"
    if not lock_file.is_file():
        pytest.skip("no dvc.lock: the pipeline has not run yet")
    # DVC computes the hashes itself (its md5 of a folder is not a plain md5 of its files); about a second here.
    run = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, f"`dvc status --json` failed in {ROOT}: {run.stderr.strip()}"
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert lines, f"`dvc status --json` printed no JSON object: {run.stdout!r}"
    lock = yaml.safe_load(lock_file.read_text(encoding="utf-8"))
    stale = stale_code_hashes(
        json.loads(lines[-1]), lock, yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    )
    listing = "; ".join(
        f"{stage}: "
        + ", ".join(
            f"{why}: {' '.join(sorted(p for p, w in paths.items() if w == why))}" for why in sorted(set(paths.values()))
        )
        for stage, paths in sorted(stale.items())
    )
    assert not stale, (
        f"dvc.lock does not record today's code for {len(stale)} stage(s): {listing}. "
        f"Do not edit dvc.lock by hand: {FIX_LOCK} (a dep missing from the checkout is fixed in dvc.yaml)."
    )


def test_code_deps_are_regenerated_in_place(tmp_path):
    """`python -m polar.layout` rewrites a stage's code deps as its command's closure, keeping its data deps."""
    text = (ROOT / "dvc.yaml").read_text(encoding="utf-8")
    start = text.index("  validate-menu:")
    stage = text[start : text.index("\n\n", start)]
    kept = [line for line in stage.splitlines() if "polar/validation.py" not in line and "polar/tasks" not in line]
    dvc_yaml = tmp_path / "dvc.yaml"
    dvc_yaml.write_text("stages:\n" + "\n".join(kept) + "\n")
    body = yaml.safe_load(dvc_yaml.read_text())["stages"]["validate-menu"]["do"]
    assert "polar/validation.py" in missing_code_deps(body)
    assert write_code_deps(dvc_yaml, ROOT) == ["validate-menu"]
    body = yaml.safe_load(dvc_yaml.read_text())["stages"]["validate-menu"]["do"]
    assert missing_code_deps(body) == [] and "data/menus/${item}/train" in body["deps"]
    assert "polar/tasks" in body["deps"]  # a package whose every file is reached is listed as its folder
    assert write_code_deps(dvc_yaml, ROOT) == []  # a second run changes nothing
