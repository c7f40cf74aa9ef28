"""One table across every (model, task) study: base greedy, each mode's winner on test, the oracle, the per-try fix
rates of a menu program and of a base-model sample, and what the dense-reward selectors did.

Reads ``frozen.json`` and ``test.json`` of each study folder given (``bench/menus/mc_study.sh`` copies them into
``bench/evaluation/menu-MODEL-TASK/``) and prints a Markdown table; descriptive only (it chooses nothing). The
arithmetic studies predate the per-try fix rates in ``test.json``: give their test matrix after ``=`` and the
rates are computed from it (:meth:`polar.selection.matrix.Matrix.fix_rates`, the stage's own).

    .venv/bin/python bench/menus/mc_table.py bench/evaluation/menu-*-arc-* \
        bench/evaluation/menu-smollm2-135m-train1000=bench/menus/smollm2-135m/test \
        bench/evaluation/menu-gemma3-270m=bench/menus/gemma3-270m/test
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from polar.selection.matrix import Matrix
from polar.stats import MethodScore

BASE = "B0 base greedy"


def _score(data: dict) -> MethodScore:
    """A score as any study wrote it (the first ones named pass@1 ``pass@1``)."""
    return MethodScore.from_dict({"pass1": data.get("pass@1")} | data)


def _row(study: str) -> str:
    folder, _, matrix = study.partition("=")
    folder = Path(folder)
    frozen = json.loads((folder / "frozen.json").read_text())
    tested = json.loads((folder / "test.json").read_text())
    scores = {k: _score(v) for k, v in tested["scores"].items()}
    validation = {k: _score(v) for k, v in frozen["validation_scores"].items()}
    base = scores[BASE]

    def said(name: str) -> str:
        t = scores[name]
        if name == BASE:
            return "B0 (none better on validation)"
        lo, hi = t.diff_ci95
        return (
            f"{100 * t.pass1:.1f}% ({100 * t.diff:+.1f}, {100 * lo:+.1f} to {100 * hi:+.1f}, p = {t.p_vs_base:.2g}) "
            f"at {t.layers_ratio:.2f} D"
        )

    dense = [k for k in validation if " dense " in k or k.endswith("likelihood target")]
    best_dense = max(dense, key=lambda k: (validation[k].pass1, -validation[k].layers_ratio)) if dense else None
    settings = json.loads((Path(matrix) / "settings.json").read_text()) if matrix else {}
    fix = tested.get("fix_rates")
    if fix is None and matrix:
        fix = Matrix.load(matrix).fix_rates(int(settings["config"]["samples"]))
    fix = fix or {}
    model = frozen.get("model") or settings.get("model", "")
    sample = fix.get("base_sample")
    rule = frozen.get("rule", {}).get("rule", "sum")
    oracle = next(v for k, v in scores.items() if k.startswith("oracle"))
    cells = [
        model.rsplit("/", 1)[-1],
        folder.name.removeprefix("menu-"),
        "likelihood, " + rule if frozen.get("scoring") == "likelihood" else "generate (graded answer)",
        str(base.inputs),
        f"{100 * base.pass1:.1f}%",
        said(frozen["winners"]["accuracy"]),
        said(frozen["winners"]["efficiency"]),
        said(best_dense) if best_dense else "-",
        f"{100 * oracle.pass1:.1f}%",
        f"{100 * fix.get('menu_program', 0):.1f}% / " + ("-" if sample is None else f"{100 * sample:.1f}%"),
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="study folders, each optionally =its test matrix folder")
    args = parser.parse_args()
    print(
        "| model | study | scoring, rule | n | base | accuracy winner (diff, 95% CI, McNemar p) | efficiency winner | "
        "best dense-reward selector | oracle | fix rate per try: program / sample |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for folder in args.folders:
        print(_row(folder))


if __name__ == "__main__":
    main()
