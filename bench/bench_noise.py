"""The numerical noise floor and the price of a dtype, per bundled model: float32 against bfloat16 on this CPU.

For each model, ``--inputs`` test inputs of the main job (params.yaml's ``ingest`` section, spread over its levels)
are labeled with the first ``--programs`` programs of the model's committed menu, as ``polar label --menu`` labels
them (the label section's prompt and budget), in each dtype:

- **noise**: with ``menu.recheck`` at ``--recheck``, that share of the (input, program) rows runs again alone; the rows
  whose text or verdict differ from their grid's are the numerical noise floor a study reports;
- **time**: the menu grid alone (no recheck), float32 and bfloat16 alternated ``--repeats`` times; the median ratio
  of their wall times (the machine is shared: only side-by-side ratios are compared);
- **forward**: one full-depth forward over a batch of ``--batch`` x 128 tokens, float32 weights, bfloat16 weights, and
  float32 weights under CPU autocast to bfloat16 (oneDNN's bf16 kernels where the CPU has them); median of 5.

Every run computes on ``--threads`` threads. Writes ``bench/results/noise-cpu.json`` (or ``--out``).

    .venv/bin/python bench/bench_noise.py                       # both bundled models, 20 inputs x 16 programs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from polar.backbone import load, pin_threads
from polar.config import load as load_settings
from polar.ingest import ingest
from polar.labeling.folder import read_noise
from polar.labeling.menu import resolve_menu, write_menu
from polar.labeling.run import label
from polar.settings import IngestConfig, LabelConfig, MenuConfig
from polar.tasks.files import read_examples, write_examples

REPO = Path(__file__).resolve().parents[1]
MODELS = {"smollm2-135m": "bench/menus/smollm2-135m/menu.txt", "gemma3-270m": "bench/menus/gemma3-270m/menu.txt"}
DTYPES = ("float32", "bfloat16")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--inputs", type=int, default=20)
    parser.add_argument("--programs", type=int, default=16)
    parser.add_argument("--recheck", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "bench/results/noise-cpu.json"))
    return parser.parse_args()


def _tasks(tmp: Path, n: int) -> Path:
    """``n`` test inputs of the main job, spread evenly over its levels, as a task file."""
    paths, _ = ingest(tmp / "tasks", load_settings(IngestConfig, REPO / "params.yaml"))
    examples = read_examples(paths["test"])
    picked = examples[:: max(1, len(examples) // n)][:n]
    write_examples(tmp / "tasks" / "bench.parquet", picked)
    return tmp / "tasks" / "bench.parquet"  # beside shots.parquet: the label stage's few-shot pool


def _menu(model: str, depth: int, programs: int, tmp: Path) -> Path:
    menu = resolve_menu(str(REPO / MODELS[model]), depth, 2)[:programs]
    return write_menu(tmp / f"{model}-menu.txt", menu, f"the first {programs} of {MODELS[model]}")


def _label(backbone, tasks: Path, menu: Path, recheck: float, out: Path) -> float:
    config = load_settings(LabelConfig, REPO / "params.yaml")
    dense = MenuConfig(menu=str(menu), samples=0, recheck=recheck)
    start = time.perf_counter()
    label(backbone.spec, tasks, out, config, dense, backbone=backbone)
    return time.perf_counter() - start


def _forward(backbone, batch: int, autocast: bool) -> float:
    ids = torch.randint(0, len(backbone.tokenizer), (batch, 128))
    times = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        for _ in range(6):
            start = time.perf_counter()
            backbone.model(ids)
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])  # the first warms the kernels up


def bench_model(model: str, args: argparse.Namespace, tmp: Path) -> dict:
    backbones = {dtype: load(model, device="cpu", dtype=dtype) for dtype in DTYPES}
    tasks = _tasks(tmp / model, args.inputs)
    menu = _menu(model, backbones["float32"].depth, args.programs, tmp)
    noise = {}
    for dtype, backbone in backbones.items():
        out = tmp / model / f"noise-{dtype}"
        seconds = _label(backbone, tasks, menu, args.recheck, out)
        noise[dtype] = {**read_noise([out]), "seconds": round(seconds, 1)}
    runs: dict[str, list[float]] = {dtype: [] for dtype in DTYPES}
    for r in range(args.repeats):
        for dtype, backbone in backbones.items():
            runs[dtype].append(round(_label(backbone, tasks, menu, 0.0, tmp / model / f"time-{dtype}-{r}"), 2))
    ratio = statistics.median(b / a for a, b in zip(runs["float32"], runs["bfloat16"], strict=True))
    forward = {
        "float32": _forward(backbones["float32"], args.batch, False),
        "bfloat16": _forward(backbones["bfloat16"], args.batch, False),
        "float32_autocast_bfloat16": _forward(backbones["float32"], args.batch, True),
    }
    return {
        "model": model,
        "inputs": args.inputs,
        "programs": args.programs,
        "rows": args.inputs * args.programs,
        "noise": noise,
        "grid_seconds": runs,
        "bfloat16_over_float32_time": round(ratio, 3),
        "forward_ms": {k: round(1000 * v, 1) for k, v in forward.items()},
        "forward_over_float32": {k: round(v / forward["float32"], 3) for k, v in forward.items()},
    }


def main() -> None:
    args = _arguments()
    pin_threads(args.threads)
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    results = {
        "command": "python bench/bench_noise.py "
        + " ".join(
            f"--{k} {' '.join(v) if isinstance(v, list) else v}" for k, v in vars(args).items() if k not in ("out",)
        ),
        "machine": {
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "avx512_bf16": "avx512_bf16" in flags,
            "amx_bf16": "amx_bf16" in flags,
        },
        "models": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            results["models"].append(bench_model(model, args, Path(tmp)))
            print(json.dumps(results["models"][-1], indent=1), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
