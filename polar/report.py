"""The evaluation report: a Markdown table and an accuracy-vs-layers plot from ``metrics.json``."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["write_report"]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def write_report(metrics_path: str | Path, command: str | None = None) -> Path:
    """Write ``report.md`` and ``accuracy_vs_layers.png`` beside ``metrics.json``; returns the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics_path = Path(metrics_path)
    m = json.loads(metrics_path.read_text())
    out = metrics_path.parent
    n, depth = m["inputs"], m["depth"]
    lines = [
        f"# Evaluation: {m['model']}",
        "",
        f"{n} inputs from `{m['tasks']}`; predictor `{m['predictor']}`; {depth} layers. Every program was run",
        "on the model (greedy, the same prompts); nothing is scored from search records.",
        "",
        "| method | pass@1 | 95% CI | avg layers | layers / D | McNemar p vs base |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in m["methods"].items():
        lo, hi = r["ci95"]
        p = "-" if name == "base greedy" else f"{r['p_vs_base']:.3g}"
        lines.append(
            f"| {name} | {_pct(r['pass@1'])} ({r['correct']}/{n}) | {_pct(lo)}-{_pct(hi)} | "
            f"{r['avg_layers']:.1f} | {r['layers_ratio']:.2f} | {p} |"
        )
    gap = m["gap_pass@1_vs_base"]
    verdict = "beats" if gap > 0 else ("ties" if gap == 0 else "does not beat")
    lines += [
        "",
        f"**The predictor {verdict} base greedy at pass@1**: {gap * 100:+.1f} points "
        f"(p = {m['methods']['predictor']['p_vs_base']:.3g}, exact McNemar on the {n} paired inputs).",
        f"Top-1 programs that are the full-depth identity: {_pct(m['identity_share'])}. "
        f"Predictor overhead: {m['predictor_ms']:.1f} ms per input"
        + (
            f", {_pct(m['predictor_share_of_generation'])} of the top-1 program's generation time."
            if m["predictor_share_of_generation"] is not None
            else "."
        ),
        "",
        "## pass@k",
        "",
        "The predictor's top-k programs (greedy each) against the base model's own pass@k from "
        f"{m['config']['k']} samples (temperature {m['config']['temperature']}, top-p {m['config']['top_p']}; "
        "unbiased estimator).",
        "",
        "| k | " + " | ".join(str(k) for k in range(1, len(m["pass_at_k"]["predictor"]) + 1)) + " |",
        "|---|" + "---|" * len(m["pass_at_k"]["predictor"]),
    ]
    for name, values in m["pass_at_k"].items():
        lines.append(f"| {name} | " + " | ".join(_pct(v) for v in values) + " |")
    lines += ["", "## Per level", "", "| level | inputs | base | predictor |", "|---|---|---|---|"]
    for level, r in sorted(m["per_level"].items()):
        lines.append(f"| {level} | {r['inputs']} | {r['base']} | {r['predictor']} |")
    lines += ["", "![accuracy vs layers](accuracy_vs_layers.png)", ""]
    if command:
        lines += ["Made by:", "", "```bash", command, "```", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in m["methods"].items():
        ax.errorbar(
            r["layers_ratio"],
            100 * r["pass@1"],
            yerr=[[100 * (r["pass@1"] - r["ci95"][0])], [100 * (r["ci95"][1] - r["pass@1"])]],
            fmt="o",
            capsize=3,
            label=name,
        )
    ax.set_xlabel("average layers executed / D")
    ax.set_ylabel("pass@1 (%)")
    ax.set_title(f"{m['model']}: accuracy vs layers ({n} inputs)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_layers.png", dpi=120)
    plt.close(fig)
    return report
