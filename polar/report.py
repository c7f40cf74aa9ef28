"""The evaluation report: a Markdown table and an accuracy-vs-layers plot from ``metrics.json``."""

from __future__ import annotations

import json
from pathlib import Path

from polar.stats import ALPHA, paired_interval

__all__ = ["plot_scores", "write_report"]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def verdict(m: dict) -> str:
    """One sentence on the predictor against base greedy that says no more than the paired test does."""
    n, gap = m["inputs"], m["gap_pass@1_vs_base"]
    pred, base = m["methods"]["predictor"], m["methods"]["base greedy"]
    p = pred["p_vs_base"]
    lo, hi = paired_interval(pred["correct"], base["correct"], m.get("discordant"), n)
    disc = m.get("discordant") or {}
    interval = f"95% CI of the difference {lo * 100:+.1f} to {hi * 100:+.1f} points"
    if disc and not disc["a_only"] + disc["b_only"]:
        interval = f"the two are right and wrong on the same inputs; {interval}"
    test = f"p = {p:.3g}, exact McNemar on {n} paired inputs"
    if p < ALPHA and gap != 0:
        word = "beats" if gap > 0 else "is worse than"
        return f"**The predictor {word} base greedy at pass@1**: {gap * 100:+.1f} points ({test}; {interval})."
    return (
        f"**No significant difference from base greedy at pass@1** at the {ALPHA:g} level: {gap * 100:+.1f} points "
        f"({test}; {interval})."
    )


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
    lines += [
        "",
        verdict(m),
        f"Top-1 programs that are the full-depth identity: {_pct(m['identity_share'])}. Prompt `{m['prompt']}`. "
        "The predictor's overhead in milliseconds is in `timings.json` beside this report (timings are not part "
        "of the reproducible outputs).",
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


def plot_scores(scores, path: str | Path, marked: set[str], what: str) -> Path:
    """Accuracy against layers run for :class:`polar.stats.MethodScore` rows, with their 95% Wilson intervals;
    ``marked`` methods (the winners, base greedy, the oracle) are starred and named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for s in scores:
        lo, hi = s.ci95
        star = any(s.method.startswith(m) for m in marked) or s.method.startswith("ShortGPT")
        ax.errorbar(
            s.layers_ratio,
            100 * s.pass1,
            yerr=[[100 * (s.pass1 - lo)], [100 * (hi - s.pass1)]],
            fmt="*" if star else "o",
            capsize=3,
            alpha=0.8 if star else 0.4,
        )
        if star:
            ax.annotate(s.method.split(" (")[0][:40], (s.layers_ratio, 100 * s.pass1), fontsize=7)
    ax.set_xlabel("layers run / D (every pass counted)")
    ax.set_ylabel(f"pass@1 on {what} (%)")
    ax.set_title("Program selection on unseen inputs (95% Wilson intervals)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
