"""Programs through the harness: each program of a list or a menu on one task, as one table and one plot.

The model loads once (:class:`~polar.harness.model.PolarLM`); each program then runs the task through lm-eval's own
``simple_evaluate`` (same documents, prompts, seeds and metrics), and the table puts every metric with its stderr
beside the program's layers per token and layers / D. The plot is the table's first metric against layers / D.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from polar.programs import Program

__all__ = ["SweepRow", "metrics_of", "render_table", "run_sweep", "write_sweep"]

TABLE, PLOT, DATA = "sweep.md", "sweep.png", "sweep.json"


@dataclass(frozen=True)
class SweepRow:
    """One program's result on the task."""

    program: str  # canonical text form
    layers: float  # layers run per token, mean over the documents
    layers_ratio: float  # layers / D
    metrics: dict[str, tuple[float, float | None]]  # "acc" or "exact_match (strict-match)" -> (value, stderr)

    def to_dict(self) -> dict:
        return asdict(self)


def metrics_of(results: dict, task: str) -> dict[str, tuple[float, float | None]]:
    """A task's metrics from lm-eval's results: ``"acc,none"`` -> ``acc``, ``"exact_match,strict-match"`` ->
    ``exact_match (strict-match)``, each with its stderr (None where lm-eval gives none, e.g. one document)."""
    try:
        entry = results["results"][task]
    except KeyError:
        raise KeyError(
            f"lm-eval's results hold no task {task!r} (they hold {sorted(results.get('results', {}))})"
        ) from None
    out = {}
    for key, value in entry.items():
        metric, _, flt = key.partition(",")
        if not flt or metric.endswith("_stderr") or not isinstance(value, int | float):
            continue
        stderr = entry.get(f"{metric}_stderr,{flt}")
        name = metric if flt == "none" else f"{metric} ({flt})"
        out[name] = (float(value), float(stderr) if isinstance(stderr, int | float) else None)
    return out


def run_sweep(lm, programs: Sequence[Program], task: str, evaluate: Callable[[], dict]) -> list[SweepRow]:
    """Run ``task`` under each program on one loaded model.

    Args:
        lm: a :class:`~polar.harness.model.PolarLM` (its program is set for each run).
        evaluate: runs lm-eval on ``lm`` once and returns its results (``simple_evaluate`` with the run's settings).
    """
    rows = []
    for program in programs:
        lm.use_program(program)
        results = evaluate()
        done = results["config"]["polar"]["tasks"].get(task)
        if done is None:
            raise ValueError(f"the run of program {program.text} evaluated no document of {task}")
        rows.append(SweepRow(program.text, done["layers"], done["layers_ratio"], metrics_of(results, task)))
    return rows


def render_table(rows: Sequence[SweepRow], task: str, model: str, depth: int) -> str:
    """The sweep as a Markdown table: one row per program, every metric as ``value ± stderr``."""
    names = list(dict.fromkeys(name for row in rows for name in row.metrics))
    head = ["program", "layers", "layers / D", *names]
    lines = [
        f"{task} on {model} (D = {depth}), one row per program",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for row in rows:
        cells = [f"`{row.program}`", f"{row.layers:.2f}", f"{row.layers_ratio:.3f}"]
        for name in names:
            value, stderr = row.metrics.get(name, (float("nan"), None))
            cells.append(f"{value:.4f}" + (f" ± {stderr:.4f}" if stderr is not None else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_sweep(
    rows: Sequence[SweepRow], out_dir: str | Path, task: str, model: str, depth: int, metric: str | None = None
) -> dict[str, Path]:
    """Write the table (``sweep.md``), the rows (``sweep.json``) and the plot (``sweep.png``) into ``out_dir``.

    Args:
        metric: the plotted metric (default: the first of the table).

    Returns:
        ``{"table", "data", "plot"}`` paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys(name for row in rows for name in row.metrics))
    metric = metric or names[0]
    if metric not in names:
        raise ValueError(f"metric {metric!r} is not among the task's: {', '.join(names)}")
    (out / TABLE).write_text(render_table(rows, task, model, depth))
    data = {"task": task, "model": model, "depth": depth, "rows": [r.to_dict() for r in rows]}
    (out / DATA).write_text(json.dumps(data, indent=2) + "\n")
    _plot(rows, metric, f"{task} on {model}", out / PLOT)
    return {"table": out / TABLE, "data": out / DATA, "plot": out / PLOT}


def _plot(rows: Sequence[SweepRow], metric: str, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for row in rows:
        value, stderr = row.metrics.get(metric, (float("nan"), None))
        full = row.layers_ratio == 1.0 and Program.parse(row.program).is_identity(len(Program.parse(row.program)))
        ax.errorbar(
            row.layers_ratio, value, yerr=stderr or 0.0, fmt="s" if full else "o", color="C1" if full else "C0",
            capsize=3,
        )  # fmt: skip
        if len(rows) <= 12:
            ax.annotate(row.program, (row.layers_ratio, value), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("layers / D (per token)")
    ax.set_ylabel(metric)
    ax.set_title(title + " (square: full depth)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
