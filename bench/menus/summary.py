"""What a menu reward matrix holds: base accuracy, each program's fixes and breaks, the oracle, and the oracle
against the base model's own best-of-N sampling at the same N.

Reads ``rewards.parquet`` and ``inputs.parquet`` of a ``polar label --menu`` folder (the first program of the menu
is the full-depth one) and prints Markdown tables; ``--out`` also writes them as JSON. Descriptive only: it
chooses nothing, so it may read any split.

    .venv/bin/python bench/menus/summary.py bench/menus/smollm2-135m/validation --out bench/menus/smollm2-135m/validation/summary.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from polar.selection.matrix import Matrix
from polar.stats import pass_at_k, wilson


def summarise(folder: Path, samples: int) -> dict:
    matrix = Matrix.load(folder)
    inputs, programs, correct = matrix.inputs, matrix.programs, matrix.correct
    base = correct[:, 0]
    n = len(matrix.ids)
    table = [
        {
            "program": p,
            "layers": int(matrix.layers[j]),
            "correct": int(correct[:, j].sum()),
            "fixes": int((correct[:, j] & ~base).sum()),
            "breaks": int((~correct[:, j] & base).sum()),
        }
        for j, p in enumerate(programs)
    ]
    others = correct[:, 1:]
    m = others.shape[1]
    right_per_input = others.sum(1)
    oracle = base | others.any(1)
    # Best-of-N: programs drawn at random from the menu (identity excluded) against N base-model samples.
    sampled = (inputs["sample_correct"].to_numpy() * samples).round().astype(int)
    best_of = {
        "n": samples,
        "menu_programs": sum(pass_at_k(m, int(c), samples) for c in right_per_input) / n,
        "base_samples": float((sampled > 0).mean()),
        "on_base_wrong": {
            "menu_programs": sum(
                pass_at_k(m, int(c), samples) for c, b in zip(right_per_input, base, strict=True) if not b
            )
            / max(1, int((~base).sum())),
            "base_samples": float((sampled[~base] > 0).mean()) if (~base).any() else 0.0,
        },
        "per_try_fix_rate_on_base_wrong": {
            "menu_program": float(others[~base].mean()) if (~base).any() else 0.0,
            "base_sample": float(inputs["sample_correct"].to_numpy()[~base].mean()) if (~base).any() else 0.0,
        },
    }
    levels = []
    for level, group in inputs.groupby("level", sort=True):
        idx = inputs.index[inputs["level"] == level]
        levels.append(
            {
                "level": level,
                "inputs": len(group),
                "base": int(base[idx].sum()),
                "oracle": int(oracle[idx].sum()),
                "best_static": int(correct[idx].sum(0).max()),
            }
        )
    agreement = inputs["sample_agreement"].to_numpy()
    confidence = [
        {
            "sample_agreement": label,
            "inputs": int(mask.sum()),
            "base_correct": int(base[mask].sum()),
            "any_program_fixes": int((~base[mask] & others[mask].any(1)).sum()),
        }
        for label, mask in (("< 0.5", agreement < 0.5), (">= 0.5", agreement >= 0.5))
    ]
    return {
        "folder": str(folder),
        "inputs": n,
        "programs": len(programs),
        "base": {"correct": int(base.sum()), "ci95": wilson(int(base.sum()), n)},
        "oracle": {"correct": int(oracle.sum()), "ci95": wilson(int(oracle.sum()), n)},
        "per_program": table,
        "per_level": levels,
        "best_of_n": best_of,
        "by_confidence": confidence,
    }


def markdown(s: dict) -> str:
    n = s["inputs"]

    def pct(c: int, total: int = n) -> str:
        return f"{100 * c / total:.1f}% ({c}/{total})" if total else "-"

    lo, hi = s["base"]["ci95"]
    olo, ohi = s["oracle"]["ci95"]
    lines = [
        f"{n} inputs x {s['programs']} programs. Base greedy {pct(s['base']['correct'])} "
        f"(95% CI {100 * lo:.1f}-{100 * hi:.1f}%); oracle (any program right) {pct(s['oracle']['correct'])} "
        f"(95% CI {100 * olo:.1f}-{100 * ohi:.1f}%).",
        "",
        "| level | inputs | base | best single program | oracle |",
        "|---|---|---|---|---|",
    ]
    for row in s["per_level"]:
        k = row["inputs"]
        lines.append(
            f"| {row['level']} | {k} | {pct(row['base'], k)} | {pct(row['best_static'], k)} | {pct(row['oracle'], k)} |"
        )
    b = s["best_of_n"]
    lines += [
        "",
        f"Best-of-{b['n']}: any of {b['n']} menu programs drawn at random right on "
        f"{100 * b['menu_programs']:.1f}% of inputs, any of {b['n']} base-model samples on "
        f"{100 * b['base_samples']:.1f}%; on the inputs base greedy gets wrong "
        f"{100 * b['on_base_wrong']['menu_programs']:.1f}% vs {100 * b['on_base_wrong']['base_samples']:.1f}%. "
        f"Per try, a menu program fixes a wrong input {100 * b['per_try_fix_rate_on_base_wrong']['menu_program']:.1f}% "
        f"of the time, a sample {100 * b['per_try_fix_rate_on_base_wrong']['base_sample']:.1f}%.",
        "",
        "| base samples agreeing with greedy | inputs | base right | some program fixes |",
        "|---|---|---|---|",
    ]
    for row in s["by_confidence"]:
        lines.append(
            f"| {row['sample_agreement']} | {row['inputs']} | {row['base_correct']} | {row['any_program_fixes']} |"
        )
    lines += ["", "| program | layers | correct | fixes | breaks |", "|---|---|---|---|---|"]
    for row in sorted(s["per_program"], key=lambda r: (-r["correct"], r["layers"])):
        lines.append(f"| `{row['program']}` | {row['layers']} | {row['correct']} | {row['fixes']} | {row['breaks']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a polar label --menu folder (rewards.parquet, inputs.parquet)")
    parser.add_argument("--samples", type=int, default=4, help="base-model samples per input of that run")
    parser.add_argument("--out", type=Path, default=None, help="also write the summary as JSON")
    args = parser.parse_args()
    summary = summarise(args.folder, args.samples)
    print(markdown(summary))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
