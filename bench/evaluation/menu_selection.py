"""Per-input program selection over a menu, measured once on unseen test inputs (issue: selector on 500 inputs).

Two phases, in this order, by one command:

1. **freeze** (train and validation matrices only): every candidate is fitted on train and tuned on validation
   (B1 best static program, B2 best per level, B3 a confidence gate, M1 gain models over several feature sets
   and two model kinds, an efficiency-mode M1 on free features, the shortest static program within 1 point,
   M2 the PoLar network scored over the menu with one checkpoint per mode chosen by its validation decision).
   The accuracy-mode winner (highest validation pass@1) and the efficiency-mode winner (fewest layers with
   validation pass@1 within 1 point of base greedy) are written to ``OUT/frozen.json`` with every candidate's
   validation score. The test matrix is not read before that file is written.
2. **test**: every frozen candidate is scored on the test matrix; the two winners' chosen programs are run on the
   model for every test input through the serving path (:class:`polar.answering.Answerer`) and compared with the
   matrix, and ShortGPT is run at the efficiency budget. ``OUT/test.json``, ``OUT/report.md`` and
   ``OUT/accuracy_vs_layers.png``.

``--phase report`` runs nothing: it re-renders ``report.md`` and the plot from ``frozen.json`` and ``test.json``,
with each difference's interval recomputed from its counts (after a change of
:func:`polar.report.paired_interval`).

Usage (see bench/evaluation/README.md):
    python bench/evaluation/menu_selection.py --menus bench/menus/smollm2-135m --model models/smollm2-135m \
        --train train-0of2 --out bench/evaluation/menu-smollm2-135m
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
from polar.menu_network import MenuNetwork, MenuNetworkConfig, embed_each
from polar.selector import (
    WIDE,
    GainModel,
    choose_cheap,
    choose_gain,
    features,
    hidden_features,
    question_features,
    shared_prefix,
    tune_price,
    tune_threshold,
)
from tqdm import tqdm

from polar.answering import Answerer
from polar.baselines import block_influence, shortgpt_program
from polar.embedder import load_embedder
from polar.programs import Program
from polar.report import paired_interval
from polar.selection import (
    FEATURE_PASSES,
    Matrix,
    Selection,
    best_per_level,
    best_static,
    check_disjoint,
    gated,
    per_level,
    score,
    static,
    tune_gate,
)
from polar.tasks.answers import grade
from polar.tasks.files import read_examples
from polar.tasks.prompts import PromptSpec

ACCURACY_SETS = [
    ("level",),
    ("level", "confidence"),
    ("level", "confidence", "agreement"),
    ("level", "hidden:{free}"),
    ("level", "question"),
    ("level", "confidence", "question"),
    ("level", "confidence", "agreement", "hidden:{free}"),
]
FREE_SETS = [("level",), ("level", "hidden:{free}"), ("level", "question")]
KINDS = ("logistic", "boosted")
MARGIN = 0.01  # efficiency mode: pass@1 at most 1 point below base greedy
EXTRACTION_MS: dict[str, float] = {}  # feature block -> ms per input, when computed in this run (not cached)
_LOADED: dict[Path, np.ndarray] = {}  # feature blocks already read in this run (every candidate asks again)


def _computed(backbone, prompt: PromptSpec, matrix: Matrix, name: str, cache: Path) -> np.ndarray:
    """A model-computed feature block of ``matrix``'s inputs, cached under ``cache`` by a digest of the inputs
    and prompt."""
    key = hashlib.sha256(json.dumps([prompt.id, name, list(matrix.ids)]).encode()).hexdigest()[:16]
    path = cache / f"{name.replace(':', '-')}-{key}.npy"
    if path in _LOADED:
        return _LOADED[path]
    if path.exists():
        _LOADED[path] = np.load(path)
        return _LOADED[path]
    start = time.perf_counter()
    questions = list(matrix.inputs["question"])
    if name == "question":
        x = question_features(questions)
    else:
        x = hidden_features(backbone(), prompt, questions, list(matrix.levels), int(name.split(":")[1]))
    seconds = time.perf_counter() - start
    EXTRACTION_MS[name] = 1000 * seconds / len(x)
    print(f"{name} of {len(x)} inputs in {seconds:.0f} s", file=sys.stderr)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, x)
    _LOADED[path] = x
    return x


class Candidates:
    """Every candidate method, fitted on ``train`` and tuned on ``validation``, applicable to any split."""

    def __init__(self, train: Matrix, validation: Matrix, computed, samples: int) -> None:
        self.free = shared_prefix(train.programs)
        self.computed, self.samples = computed, samples
        self._vectors: dict[tuple[str, ...], tuple] = {}
        self.m2 = MenuNetwork(MenuNetworkConfig(), train.programs, train.depth, self.embedder.dim)
        self.m2.fit(train, *self.vectors(train), validation, *self.vectors(validation))
        self.b1 = best_static(train)
        self.b2 = best_per_level(train)
        self.gates = {f: tune_gate(validation, self.b1, f) for f in FEATURE_PASSES}
        base = train.correct[:, 0].mean()
        within = [j for j in range(len(train.programs)) if train.correct[:, j].mean() >= base - MARGIN]
        self.short = min(within, key=lambda j: (train.layers[j], -train.correct[:, j].sum(), j))
        self.models, self.tuned = {}, {}
        for mode, sets in (("accuracy", ACCURACY_SETS), ("efficiency", FREE_SETS)):
            for names in sets:
                names = tuple(n.format(free=self.free) for n in names)
                for kind in KINDS:
                    key = f"M1 {mode} {kind} [{'+'.join(names)}]"
                    model = GainModel(kind).fit(train, self._features(train, names))
                    fv = self._features(validation, names)
                    tune = tune_threshold if mode == "accuracy" else tune_price
                    self.models[key] = (mode, names, model)
                    self.tuned[key] = float(tune(validation, model.proba(fv), fv.passes))

    @functools.cached_property
    def embedder(self):
        return load_embedder(MenuNetworkConfig.embedder)

    def vectors(self, matrix: Matrix):
        """M2's input: each question's token vectors, embedded alone as a served question is."""
        if matrix.ids not in self._vectors:
            start = time.perf_counter()
            self._vectors[matrix.ids] = embed_each(list(matrix.inputs["question"]), self.embedder)
            self.embed_ms = 1000 * (time.perf_counter() - start) / len(matrix.ids)
        return self._vectors[matrix.ids]

    def _features(self, matrix: Matrix, names):
        return features(matrix, names, {n: self.computed(matrix, n) for n in names if n.startswith(WIDE)}, self.samples)

    def select(self, matrix: Matrix) -> list[tuple[str, Selection]]:
        out = [
            ("B0 base greedy", static(matrix, 0)),
            ("B1 best static program", static(matrix, self.b1)),
            ("B2 best program per level", per_level(matrix, self.b2)),
            ("B1' shortest static program within 1 point (train)", static(matrix, self.short)),
        ]
        for feature, threshold in self.gates.items():
            out.append((f"B3 gate on {feature}", gated(matrix, self.b1, feature, threshold, self.samples)))
        self.overhead_ms = {}
        for key, (mode, names, model) in self.models.items():
            f = self._features(matrix, names)
            start = time.perf_counter()
            proba, t = model.proba(f), self.tuned[key]
            pick = choose_gain if mode == "accuracy" else choose_cheap
            out.append((key, pick(matrix, proba, t, f.passes, key)))
            self.overhead_ms[key] = 1000 * (time.perf_counter() - start) / len(matrix.ids)
        for mode in ("accuracy", "efficiency"):
            key = f"M2 {mode} PoLar network over the menu"
            start = time.perf_counter()
            out.append((key, self.m2.select(matrix, *self.vectors(matrix), mode, key)))
            self.overhead_ms[key] = 1000 * (time.perf_counter() - start) / len(matrix.ids)
        return out

    def frozen(self, matrix: Matrix) -> dict:
        return {
            "b1": matrix.programs[self.b1],
            "b2": {level: matrix.programs[j] for level, j in self.b2.items()},
            "b1_short": matrix.programs[self.short],
            "gates": self.gates,
            "m1": {
                k: {"mode": m, "features": list(n), "kind": model.kind, "tuned": self.tuned[k]}
                for k, (m, n, model) in self.models.items()
            },
            "m2": {
                "config": self.m2.config.to_dict(),
                "tuned": self.m2.tuned,
                "checkpoints": self.m2.best,
                "history": self.m2.history,
            },
        }


def oracle(matrix: Matrix) -> Selection:
    """The ceiling: for each input the shortest menu program that answers it (the full depth if none does)."""
    order = np.lexsort((np.arange(len(matrix.layers)), matrix.layers))  # shortest first
    choice = np.array([next((int(j) for j in order if row[j]), 0) for row in matrix.correct])
    return Selection("oracle", choice, matrix.layers[choice].astype(float))


class Runner:
    """Programs run on the model for a split's inputs through the serving path, graded as labels are."""

    def __init__(self, backbone, prompt: PromptSpec, max_new_tokens: int, examples, batch: int = 16) -> None:
        self.answerer = Answerer(backbone, prompt, max_new_tokens)
        self.examples, self.batch = examples, batch

    def prompt(self, example) -> list[int]:
        return self.answerer.encode(example.question, example.level)

    def run(self, programs: list[str]) -> tuple[np.ndarray, list[str | None]]:
        """Whether each input's program answers it, and the answer it gives (inputs of one level batched)."""
        right, said = np.zeros(len(self.examples), bool), [None] * len(self.examples)
        order = sorted(range(len(self.examples)), key=lambda i: (self.examples[i].level, programs[i]))
        for start in tqdm(range(0, len(order), self.batch), desc="served", unit="batch", leave=False):
            rows = order[start : start + self.batch]
            gens = self.answerer.generate(
                [self.prompt(self.examples[i]) for i in rows], [Program.parse(programs[i]) for i in rows]
            )
            for i, g in zip(rows, gens, strict=True):
                e = self.examples[i]
                said[i], right[i] = grade(g.text, e.answer, e.answer_kind)
        return right, said


def _tasks(folder: Path) -> Path:
    tasks = Path(json.loads((folder / "settings.json").read_text())["tasks"])
    if not tasks.exists():
        raise SystemExit(
            f"{tasks} (the task file {folder} was labeled from) is missing: run the `polar ingest` "
            "command of bench/menus/README.md first"
        )
    return tasks


def winners(rows: dict[str, dict]) -> dict[str, str]:
    """Accuracy mode: the highest pass@1 (ties: fewer layers); efficiency: the fewest layers within 1 point."""
    base = rows["B0 base greedy"]["pass@1"]
    accuracy = max(rows, key=lambda k: (rows[k]["pass@1"], -rows[k]["layers_ratio"]))
    ok = [k for k in rows if rows[k]["pass@1"] >= base - MARGIN]
    efficiency = min(ok, key=lambda k: (rows[k]["layers_ratio"], -rows[k]["pass@1"]))
    return {"accuracy": accuracy, "efficiency": efficiency}


def _row(name: str, r: dict) -> str:
    lo, hi = r["ci95"]
    dlo, dhi = r["diff_ci95"]
    return (
        f"| {name} | {100 * r['pass@1']:.1f}% ({r['correct']}/{r['inputs']}) | {100 * lo:.1f}-{100 * hi:.1f}% "
        f"| {100 * r['diff']:+.1f} ({100 * dlo:+.1f} to {100 * dhi:+.1f}) | {r['fixes']}/{r['breaks']} "
        f"| {r['layers_ratio']:.3f} | {r['p_vs_base']:.3g} |"
    )


HEADER = (
    "| method | pass@1 | 95% CI | vs base, points (95% CI) | fixes/breaks | layers / D | McNemar p |\n"
    "|---|---|---|---|---|---|---|"
)


def write_report(out: Path, frozen: dict, result: dict) -> None:
    """report.md (validation and test tables) and accuracy_vs_layers.png (test)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    win = frozen["winners"]
    lines = [
        f"# Per-input program selection, menu `{frozen['menu']}`",
        "",
        f"Train {frozen['train']['inputs']} inputs ({', '.join(frozen['train']['folders'])}), validation "
        f"{frozen['validation']['inputs']}, test {result['test']['inputs']}; prompt `{frozen['prompt']}`. Every choice "
        "was frozen on validation (`frozen.json`) before the test matrix was read. Layers / D counts every pass a "
        "method needs (the greedy pass for confidence features, the samples for agreement).",
        "",
        f"- Accuracy mode (highest validation pass@1): **{win['accuracy']}**",
        f"- Efficiency mode (fewest layers within 1 point on validation): **{win['efficiency']}**",
        "",
        "## Test",
        "",
        HEADER,
        *(_row(k, r) for k, r in result["scores"].items()),
        "",
        "Served: each winner's programs run again on the model through `polar.answering.Answerer`; answers equal "
        "to the matrix's: "
        + "; ".join(f"{m} {v['agree_with_matrix']}/{v['inputs']}" for m, v in result["served"].items())
        + ".",
        "",
        "Overhead on the test inputs (CPU, ms per input; feature extraction includes loading its model when it "
        "was computed in this run, not read from the cache): "
        + "; ".join(
            f"{name}: choice {o['choice_ms_per_input']:.2f} ms"
            + "".join(f", {n} {ms:.1f} ms" for n, ms in o["features_ms_per_input"].items())
            for name, o in result["overhead"].items()
        )
        + ".",
        "",
        "## Validation (where the choices were made)",
        "",
        HEADER,
        *(_row(k, r) for k, r in frozen["validation_scores"].items()),
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, r in result["scores"].items():
        lo, hi = r["ci95"]
        marker = "*" if any(name.startswith(w) for w in win.values()) else "o"
        ax.errorbar(
            r["layers_ratio"],
            100 * r["pass@1"],
            yerr=[[100 * (r["pass@1"] - lo)], [100 * (hi - r["pass@1"])]],
            fmt=marker,
            capsize=3,
            alpha=0.7,
        )
        if name.startswith(("B0", "B1 ", "ShortGPT", "oracle")) or marker == "*":
            ax.annotate(name.split(" (")[0][:40], (r["layers_ratio"], 100 * r["pass@1"]), fontsize=7)
    ax.set_xlabel("layers run / D (every pass counted)")
    ax.set_ylabel(f"pass@1 on {result['test']['inputs']} test inputs (%)")
    ax.set_title("Program selection on unseen inputs (95% Wilson intervals)")
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_layers.png", dpi=120)


def rerender(out: Path) -> None:
    """``--phase report``: the report again from ``frozen.json`` and ``test.json``, intervals from their counts."""
    frozen, result = (json.loads((out / name).read_text()) for name in ("frozen.json", "test.json"))
    for rows in (frozen["validation_scores"], result["scores"]):
        base = rows["B0 base greedy"]["correct"]
        for r in rows.values():
            counts = {"a_only": r["fixes"], "b_only": r["breaks"]}
            r["diff_ci95"] = list(paired_interval(r["correct"], base, counts, r["inputs"]))
    (out / "frozen.json").write_text(json.dumps(frozen, indent=1, default=float) + "\n")
    (out / "test.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    write_report(out, frozen, result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--menus", help="folder of the menu matrices (train parts, validation, test)")
    ap.add_argument("--model")
    ap.add_argument("--train", action="append", help="train matrix folder(s) under --menus")
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", default="data/scale/features", help="where hidden-state features are kept")
    ap.add_argument("--phase", choices=("freeze", "test", "all", "report"), default="all")
    args = ap.parse_args()
    if args.phase == "report":
        return rerender(Path(args.out))
    if not (args.menus and args.model and args.train):
        ap.error(f"--phase {args.phase} needs --menus, --model and --train")
    menus, out = Path(args.menus), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = Matrix.concat([Matrix.load(menus / t) for t in args.train])
    validation = Matrix.load(menus / "validation")
    train.same_menu(validation)
    check_disjoint(train=train, validation=validation)
    settings = json.loads((menus / "validation" / "settings.json").read_text())
    prompt = PromptSpec.from_dict(settings["prompt"])
    samples = int(settings["config"]["samples"])
    loaded = {}

    def backbone():
        if "b" not in loaded:
            from polar.backbone import load

            loaded["b"] = load(args.model, device="cpu")
        return loaded["b"]

    cache = Path(args.cache) / Path(args.model).name
    candidates = Candidates(train, validation, lambda m, n: _computed(backbone, prompt, m, n, cache), samples)
    picked = candidates.select(validation)
    val_rows = {name: score(validation, s) for name, s in picked}
    frozen = {
        "train": {"folders": args.train, "inputs": len(train.ids)},
        "validation": {"inputs": len(validation.ids)},
        "menu": settings["menu"]["id"],
        "prompt": prompt.id,
        "choices": candidates.frozen(validation),
        "winners": winners(val_rows),
        "validation_scores": val_rows,
    }
    path = out / "frozen.json"
    if args.phase == "test" and not path.exists():
        raise SystemExit(f"{path} does not exist: freeze the choices first (--phase freeze or all)")
    if args.phase == "test":
        old = json.loads(path.read_text())
        if old["winners"] != frozen["winners"] or old["choices"] != frozen["choices"]:
            raise SystemExit(f"{path}: the refit differs from the frozen choices; run --phase freeze deliberately")
    elif args.phase != "test":
        path.write_text(json.dumps(frozen, indent=1, default=float) + "\n")
    print(json.dumps(frozen["winners"], indent=1))
    if args.phase == "freeze":
        return
    test = Matrix.load(menus / "test")  # first read here, after the choices are frozen
    train.same_menu(test)
    check_disjoint(train=train, validation=validation, test=test)
    selections = dict(candidates.select(test))
    rows = {name: score(test, s) for name, s in selections.items()}
    rows["oracle (any menu program right; ceiling)"] = score(test, oracle(test))
    examples = {e.id: e for e in read_examples(_tasks(menus / "test"))}
    runner = Runner(backbone(), prompt, int(settings["config"]["max_new_tokens"]), [examples[i] for i in test.ids])
    served = {}
    for mode, name in frozen["winners"].items():
        programs = [test.programs[j] for j in selections[name].choice]
        right, predictions = runner.run(programs)
        expected = test.predictions[np.arange(len(test.ids)), selections[name].choice]
        agree = int(sum(a == b for a, b in zip(predictions, expected, strict=True)))
        served[mode] = {"method": name, "agree_with_matrix": agree, "inputs": len(test.ids)}
        rows[f"{name} (served)"] = score(test, selections[name], right)
    # ShortGPT's Block Influence on 64 training prompts (calibration data it may see).
    seen = {e.id: e for t in args.train for e in read_examples(_tasks(menus / t))}
    calibration = [runner.prompt(seen[i]) for i in train.ids[:: max(1, len(train.ids) // 64)]]
    influence = block_influence(backbone(), calibration)
    budget = selections[frozen["winners"]["efficiency"]].cost.mean() / test.depth
    for n_remove in sorted({max(1, round(test.depth * (1 - budget))), test.depth - int(test.layers.min())}):
        program = shortgpt_program(influence, n_remove)
        right, _ = runner.run([program.text] * len(test.ids))
        name = f"ShortGPT, {n_remove} layers removed ({program.text})"
        sel = Selection(name, np.zeros(len(test.ids), int), np.full(len(test.ids), float(len(program))))
        rows[name] = score(test, sel, right)
    overhead = {
        name: {
            "choice_ms_per_input": candidates.overhead_ms.get(name, 0.0),
            "features_ms_per_input": {
                n: EXTRACTION_MS[n] for n in candidates.models.get(name, (None, ()))[1] if n in EXTRACTION_MS
            }
            | ({"question tokens (MiniLM, last split embedded)": candidates.embed_ms} if name.startswith("M2") else {}),
        }
        for name in frozen["winners"].values()
    }
    result = {
        "test": {"inputs": len(test.ids)},
        "winners": frozen["winners"],
        "served": served,
        "overhead": overhead,
        "scores": rows,
    }
    (out / "test.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    write_report(out, frozen, result)


if __name__ == "__main__":
    main()
