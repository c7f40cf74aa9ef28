"""Peak memory of a likelihood menu: `polar label --menu ... --scoring likelihood` on the first (or longest) N inputs of a
task file, in a child process per code tree, its peak resident set read from the operating system.

Each ``--code`` is a checkout of polar (``.`` for this one; another commit via ``git worktree add DIR COMMIT``);
the runs alternate between them ``--repeats`` times and label the same inputs into fresh folders, so the labels
can be compared byte for byte (``menu.jsonl``). Prints one JSON object; ``--out`` writes it too.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_memory.py --code /tmp/before --code . \\
        --tasks data/mc/mmlu-pro-math/validation.parquet --inputs 8 --model models/smollm2-135m \\
        --menu bench/menus/smollm2-135m-mmlu-pro-math/menu.txt --out bench/results/likelihood-memory-cpu.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

LAUNCH = "import sys; from polar.cli import app; sys.argv[0] = 'polar'; sys.exit(app())"


def run(code: Path, args: list[str], out: Path) -> dict:
    """One labeling run of the checkout ``code``: its peak resident set (MiB), seconds and the labels' digest."""
    env = os.environ | {"PYTHONPATH": str(code.resolve())}
    log = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as stderr:
        child = subprocess.Popen([sys.executable, "-c", LAUNCH, "label", *args, "--out", str(out)], env=env,
                                 cwd=code, stdout=subprocess.DEVNULL, stderr=stderr)  # fmt: skip
        # cwd: ``python -c`` puts the working directory first on the path, before PYTHONPATH
        _, status, usage = os.wait4(child.pid, 0)  # this child's own usage, not the largest child's so far
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    peak = {"peak_mib": round(usage.ru_maxrss / 1024), "seconds": round(seconds, 2)}  # ru_maxrss: KiB on Linux
    if child.returncode == -9:  # killed: on Linux the kernel's out-of-memory killer (the peak: where it stood)
        return peak | {"killed": True}
    if child.returncode:
        raise SystemExit(f"{code}: polar label failed ({child.returncode}):\n{log.read_text()[-3000:]}")
    return peak | {
        "labels_sha256": hashlib.sha256((out / "menu.jsonl").read_bytes()).hexdigest(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", action="append", required=True, help="a polar checkout (repeat: the pair)")
    parser.add_argument("--tasks", required=True, help="a task file (Parquet) of multiple-choice inputs")
    parser.add_argument("--inputs", type=int, default=8, help="its first N inputs")
    parser.add_argument("--level", help="only this level's inputs (a grid runs one level's inputs together)")
    parser.add_argument("--longest", action="store_true", help="its N longest questions instead (the worst case)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--menu", required=True)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path)
    ns = parser.parse_args()
    tasks = Path(ns.tasks).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "tasks.parquet"
        frame = pd.read_parquet(tasks)
        if ns.level:
            frame = frame[frame["level"] == ns.level].reset_index(drop=True)
        if ns.longest:
            frame = frame.iloc[frame["question"].str.len().sort_values(ascending=False, kind="stable").index]
        frame.head(ns.inputs).to_parquet(subset, index=False)
        shots = tasks.parent / "shots.parquet"
        model = str(Path(ns.model).resolve()) if Path(ns.model).exists() else ns.model  # runs start in --code
        args = ["--menu", str(Path(ns.menu).resolve()), "--scoring", "likelihood", "--model", model,
                "--tasks", str(subset), "--shots-from", str(shots), "--device", "cpu"]  # fmt: skip
        runs = []
        for r in range(ns.repeats):
            for code in ns.code:
                row = {"code": code, "repeat": r} | run(Path(code), args, Path(tmp) / f"out-{r}-{len(runs)}")
                runs.append(row)
                print(json.dumps(row), file=sys.stderr)
    result = {
        "command": "python " + " ".join(sys.argv),
        "what": f"polar label --menu --scoring likelihood on the {'longest' if ns.longest else 'first'} {ns.inputs} "
        f"inputs of {ns.tasks}" + (f", level {ns.level}" if ns.level else ""),
        "machine": {
            "cpus": os.cpu_count(),
            "threads": os.environ.get("OMP_NUM_THREADS"),
            "platform": platform.platform(),
        },  # fmt: skip
        "runs": runs,
    }
    print(json.dumps(result, indent=2))
    if ns.out:
        ns.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
