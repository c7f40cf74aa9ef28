"""Labels that reproduce by hash: the dtype and the CPU threads are settings, recorded in every label folder and
never mixed; the same settings give the same bytes on a loaded machine; the noise floor is measured, and reads 0 in
float32 on a CPU.

The labeling runs go through the `polar label` command in a process of their own, as the DVC stages run it, so
that the threads it pins are its own. The bundled SmolLM2, a few inputs and a short budget keep each run short.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from polar.hashing import sha256_file
from polar.ingest import ingest
from polar.labeling.folder import SETTINGS, check_same_numerics, read_noise
from polar.labeling.menu import rechecked
from polar.settings import EngineConfig, IngestConfig

pytestmark = pytest.mark.slow  # the bundled model

POLAR = str(Path(sys.executable).with_name("polar"))
MENU = ["0-29", "0-13,12-29", "0-24,29"]


@pytest.fixture(scope="module")
def work(tmp_path_factory, smollm2):  # noqa: ARG001 (the bundled model, converted before the commands load it)
    root = tmp_path_factory.mktemp("numerics")
    paths, _ = ingest(root / "tasks", IngestConfig(levels="1,3", train=1, validation=1, test=2))
    (root / "menu.txt").write_text("\n".join(MENU[1:]) + "\n")
    return root, paths["test"]


def _label(work, out: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    root, tasks = work
    cmd = [POLAR, "label", "--model", "smollm2-135m", "--tasks", str(tasks), "--menu", str(root / "menu.txt")]
    cmd += ["--shots", "1", "--max-new-tokens", "8", "--samples", "1", "--recheck", "0.5", "--out", str(out), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "250"})
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def _files(folder: Path) -> dict[str, str]:
    """Every file of a menu folder by name and digest, but the timings (seconds: in .dvcignore)."""
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != "timings.jsonl"}


def test_the_same_threads_give_the_same_bytes_on_a_loaded_machine(work, tmp_path):
    """A run beside a process that keeps a core busy for its whole length writes every file of an idle run's
    folder byte for byte: the floats follow the pinned thread count, not the load (no tolerance anywhere)."""
    _label(work, tmp_path / "idle", "--threads", "2")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # the core is busy before the model loads, and stays busy until the run ends
        _label(work, tmp_path / "loaded", "--threads", "2")
        assert busy.poll() is None
    finally:
        busy.kill()
    idle, loaded = _files(tmp_path / "idle"), _files(tmp_path / "loaded")
    assert {"menu.jsonl", "rewards.parquet", "inputs.parquet", "settings.json", "manifest.json"} <= set(idle)
    assert idle == loaded
    settings = json.loads((tmp_path / "idle" / SETTINGS).read_text())
    assert settings["engine"] == {"dtype": "float32", "device": "cpu", "threads": 2}
    # The noise floor in float32 on a CPU: every row run again alone gives the grid's text and verdict.
    noise = read_noise([tmp_path / "idle"])
    assert noise["rows"] > 0 and noise["texts_differ"] == noise["verdicts_differ"] == 0


def test_a_bfloat16_shard_cannot_join_a_float32_folder(work, tmp_path):
    out = tmp_path / "m"
    first = _label(work, out, "--shard", "0/2", "--threads", "1")
    assert "shard 0/2 done" in first.stdout
    refused = _label(work, out, "--shard", "1/2", "--threads", "1", "--dtype", "bfloat16", check=False)
    assert refused.returncode == 2
    assert (
        f"{out} holds labels computed in float32 on cpu with 1 thread; this run computes in bfloat16 on cpu with 1 "
        "thread: labels of two dtypes, devices or thread counts never mix" in " ".join(refused.stderr.split())
    )
    assert len(list(out.glob("shard-*.jsonl"))) == 1  # what the first shard labeled is kept
    # The other thread count is refused alike; the folder's own settings finish the job.
    assert _label(work, out, "--shard", "1/2", "--threads", "2", check=False).returncode == 2
    _label(work, out, "--shard", "1/2", "--threads", "1")
    assert (out / "rewards.parquet").exists()
    # bfloat16 labels end to end, in their own folder, recorded as such; a study refuses to mix the two.
    _label(work, tmp_path / "bf16", "--threads", "1", "--dtype", "bfloat16")
    engine = json.loads((tmp_path / "bf16" / SETTINGS).read_text())["engine"]
    assert engine == {"dtype": "bfloat16", "device": "cpu", "threads": 1}
    assert read_noise([tmp_path / "bf16"])["rows"] > 0
    with pytest.raises(ValueError, match="f32 was labeled in float32 on cpu with 1 thread and bf16 in bfloat16"):
        check_same_numerics({"f32": out, "bf16": tmp_path / "bf16"})


def test_the_recheck_sample_is_fixed_by_input_and_program():
    rows = [(f"t/{i}", p) for i in range(2000) for p in ("0-29", "0-13,12-29")]
    picked = {r for r in rows if rechecked(*r, 0.02)}
    assert 0.01 < len(picked) / len(rows) < 0.03
    assert picked < {r for r in rows if rechecked(*r, 0.05)}  # a larger share keeps the smaller one's rows
    assert not any(rechecked(*r, 0.0) for r in rows) and all(rechecked(*r, 1.0) for r in rows)
    with pytest.raises(ValueError, match="engine dtype must be one of auto, float32, bfloat16, float16"):
        EngineConfig(dtype="fp8")
    with pytest.raises(ValueError, match="engine threads must be at least 1"):
        EngineConfig(threads=0)
