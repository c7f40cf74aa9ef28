"""The select stage: every candidate fitted on train, frozen on validation, then scored once on test.

Two phases, in this order, in one call of :func:`select`:

1. **freeze** (train and validation matrices only): every candidate of :class:`~polar.selection.candidates.Candidates`
   is fitted and tuned; the accuracy-mode winner (highest validation pass@1) and the efficiency-mode winner (fewest
   layers within the margin of base greedy) are chosen (:func:`~polar.selection.policies.winners`), and
   ``frozen.json`` is written with every candidate's validation score. The servable selectors are written too
   (``baseline/`` always, ``accuracy/`` and ``efficiency/`` when the winner can be served; see
   :mod:`polar.selection.selector`).
2. **test**: the test matrix is read for the first time, after ``frozen.json`` exists (``test.json`` records its
   digest); every frozen candidate is scored once, with the oracle as the ceiling; ``choices.parquet`` holds each
   candidate's program per test input, which the evaluate stage runs on the model.

The splits must be disjoint by question (:func:`~polar.selection.matrix.check_disjoint`) and labeled with one menu.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from polar.backbone import pinned_threads
from polar.hashing import sha256_file
from polar.labeling.folder import INPUTS, REWARDS, check_same_numerics, read_noise, read_settings
from polar.selection.candidates import M2_DENSE_NAME, M2_NAME, Candidates, FeatureCache
from polar.selection.files import CHOICES, FROZEN, ORACLE, TEST, TIMINGS
from polar.selection.matrix import Matrix, check_disjoint
from polar.selection.policies import BASE, Selection, oracle, score, winners
from polar.selection.selector import Selector, SelectorSpec
from polar.settings import SelectConfig, recorded_threads
from polar.stats import MethodScore, detectable_difference, wilson
from polar.tasks.prompts import PromptSpec

__all__ = ["StudyResult", "choose_rule", "select", "verdict"]


@dataclass(frozen=True)
class StudyResult:
    """What the select stage decided and measured."""

    out_dir: Path
    winners: dict[str, str]  # mode -> candidate name
    validation: dict[str, MethodScore]
    test: dict[str, MethodScore]
    servable: dict[str, str | None]  # "baseline" / mode -> selector folder name, None when not servable
    summary: str


def _load(folders: Sequence[str | Path]) -> Matrix:
    return Matrix.concat([Matrix.load(f) for f in folders])


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1, default=float) + "\n")


def select(
    train: Sequence[str | Path],
    validation: str | Path,
    test: str | Path,
    out_dir: str | Path,
    config: SelectConfig = SelectConfig(),
    selectors_dir: str | Path | None = None,
    model: str | None = None,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
) -> StudyResult:
    """Freeze every candidate on ``train`` and ``validation`` menu folders, then score it once on ``test``.

    Args:
        train: menu folders of the training split (several: shards labeled apart, one menu).
        model: the base model for features that need it (hidden states); default: the one the menus name.
        selectors_dir: where the servable selectors go (default: ``out_dir/selectors``).
        cache_dir: where model-computed features are kept (default: ``out_dir/features``).

    Returns:
        The winners, every score, and the one-sentence summary that the report and the registry repeat.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    selectors_dir = Path(selectors_dir) if selectors_dir else out_dir / "selectors"
    # One dtype, device and thread count for every split; this stage's own arithmetic (the features it extracts,
    # M2's training) runs on the labels' threads, so that its outputs do not depend on the machine's cores.
    numerics = check_same_numerics({**{f"train {f}": f for f in train}, f"validation {validation}": validation})
    with pinned_threads(recorded_threads(numerics)):
        candidates, frozen, tr, va = _freeze(
            list(train), Path(validation), out_dir, config, model, cache_dir, device, numerics
        )
        servable = _write_selectors(candidates, frozen, selectors_dir)
        frozen["servable"] = servable
        _write_json(out_dir / FROZEN, frozen)  # before the test matrix is read
        validation_scores = {k: MethodScore.from_dict(v) for k, v in frozen["validation_scores"].items()}
        scores, line = _test_once(candidates, frozen, validation_scores, tr, va, Path(test), out_dir)
    return StudyResult(out_dir, frozen["winners"], validation_scores, scores, servable, line)


def _freeze(
    train: list,
    validation: Path,
    out_dir: Path,
    config: SelectConfig,
    model: str | None,
    cache_dir,
    device: str,
    numerics: dict | None,
) -> tuple[Candidates, dict, Matrix, Matrix]:
    """Every candidate fitted on ``train`` and tuned on ``validation``; the frozen record and both matrices."""
    tr, va = _load(train), Matrix.load(validation)
    tr.same_menu(va)
    check_disjoint(train=tr, validation=va)
    rule = choose_rule(va)
    tr, va = tr.with_rule(rule["rule"]), va.with_rule(rule["rule"])
    settings = read_settings(validation)
    if settings.get("kind") != "menu":
        raise ValueError(f"{validation} is not a menu folder (label it with `polar label --menu`)")
    prompt = PromptSpec.from_dict(settings["prompt"])
    spec = model or settings["model"]
    loaded: dict = {}

    def backbone():
        if "b" not in loaded:
            from polar.backbone import load_as_recorded

            loaded["b"] = load_as_recorded(spec, numerics, device)  # within select's pinned threads
        return loaded["b"]

    where = Path(cache_dir) if cache_dir else out_dir / "features"
    cache = FeatureCache(backbone, prompt, where, spec, numerics or {"threads": recorded_threads(None)})
    candidates = Candidates(tr, va, cache, int(settings["config"]["samples"]), config)
    val_scores = {name: score(va, s) for name, s in candidates.select(va).items()}
    frozen = {
        "train": {"folders": [str(f) for f in train], "inputs": len(tr.ids)},
        "validation": {"folder": str(validation), "inputs": len(va.ids)},
        "model": settings["model"],
        "menu": settings["menu"]["id"],
        "prompt": prompt.id,
        "max_new_tokens": int(settings["config"]["max_new_tokens"]),
        "scoring": settings["config"].get("scoring", "generate"),
        "rule": rule,
        "config": config.to_dict(),
        "candidates": len(val_scores),
        "choices": candidates.frozen(va),
        "winners": winners(val_scores, config.margin),
        "validation_scores": {name: s.to_dict() for name, s in val_scores.items()},
    }
    frozen["meta"] = _meta(settings, prompt, train, validation, config, candidates) | {"numerics": numerics}
    return candidates, frozen, tr, va


def _meta(settings: dict, prompt: PromptSpec, train: list, validation: Path, config, candidates) -> dict:
    """The provenance every selector of this study carries (what the registry tags)."""
    files = [Path(f) / name for f in [*train, validation] for name in (REWARDS, INPUTS)]
    digest = json.dumps([sha256_file(p) for p in files])
    return {
        "base_model": settings["model"],
        "prompt": prompt.to_dict(),
        "max_new_tokens": int(settings["config"]["max_new_tokens"]),
        "menu": settings["menu"]["id"],
        "label_files": [str(Path(f) / REWARDS) for f in [*train, validation]],
        "labels_sha256": hashlib.sha256(digest.encode()).hexdigest(),
        "embedder": "none",
        "train": config.to_dict(),
        "samples": candidates.samples,
    }


def _servable(candidates: Candidates, name: str, programs: tuple[str, ...], meta: dict, depth: int):
    """The selector spec (and network) of candidate ``name``, or None when it cannot be served."""
    c = candidates
    static = {BASE: 0, "B1 best static program": c.b1, c.short_name: c.short}
    if name in static:
        return SelectorSpec("static", name, depth, program=programs[static[name]], meta=meta), None
    if name == "B2 best program per level":
        chosen = {level: programs[j] for level, j in c.b2.items()}
        return SelectorSpec("per_level", name, depth, programs=chosen, meta=meta), None
    for network, pattern in ((c.m2, M2_NAME), (c.m2_dense, M2_DENSE_NAME)):
        if (
            name == pattern.format(mode="accuracy")
            and network is not None
            and network.tuned.get("accuracy") is not None
        ):
            network_meta = meta | {"embedder": c.config.m2.m2_embedder, "method": "menu"}
            return SelectorSpec("network", name, depth, meta=network_meta), network.predictor("accuracy", network_meta)
    return None


def _write_selectors(candidates: Candidates, frozen: dict, folder: Path) -> dict[str, str | None]:
    """``baseline/`` (the full depth) always; each mode's winner when it is servable and not the baseline."""
    programs = tuple(frozen["choices"]["programs"])
    depth, meta = frozen["choices"]["depth"], frozen["meta"]
    written: dict[str, str | None] = {}
    for role, name in {"baseline": BASE, **frozen["winners"]}.items():
        made = _servable(candidates, name, programs, meta, depth)
        if made is None or (role != "baseline" and name == BASE):
            written[role] = "baseline" if name == BASE else None
            continue
        Selector.save(folder / role, *made)
        written[role] = role
    return written


def _test_once(
    candidates: Candidates,
    frozen: dict,
    validation_scores: dict[str, MethodScore],
    tr: Matrix,
    va: Matrix,
    test: Path,
    out_dir: Path,
) -> tuple[dict[str, MethodScore], str]:
    """Every frozen candidate scored on the test matrix, read here for the first time; the scores and the summary."""
    te = Matrix.load(test).with_rule(frozen["rule"]["rule"])
    check_same_numerics(
        {f"validation {frozen['validation']['folder']}": frozen["validation"]["folder"], f"test {test}": test}
    )
    tr.same_menu(te)
    check_disjoint(train=tr, validation=va, test=te)
    selections: dict[str, Selection] = candidates.select(te)
    scores = {name: score(te, s) for name, s in selections.items()}
    scores[ORACLE] = score(te, oracle(te, ORACLE))
    rows = [
        {"id": i, "method": name, "program": te.programs[j], "prediction": te.predictions[n, j]}
        for name, s in selections.items()
        for n, (i, j) in enumerate(zip(te.ids, s.choice.tolist(), strict=True))
    ]
    pd.DataFrame(rows).to_parquet(out_dir / CHOICES, index=False)
    fix = te.fix_rates(candidates.samples)
    noise = read_noise([*frozen["train"]["folders"], frozen["validation"]["folder"], test])
    line = f"{verdict(frozen['winners'], validation_scores, scores)} {fix_rate_line(fix, noise)}"
    if len(frozen["rule"]["validation_base_right"]) > 1:
        right = frozen["rule"]["validation_base_right"]
        line = (
            f"Answer rule: {frozen['rule']['rule']} (fixed on validation: the full depth right on "
            f"{right['sum']} summed, {right['norm']} length-normalised of {frozen['rule']['inputs']}). {line}"
        )
    _write_json(
        out_dir / TEST,
        {
            "frozen_sha256": sha256_file(out_dir / FROZEN),
            "test": {"folder": str(test), "inputs": len(te.ids)},
            "winners": frozen["winners"],
            "fix_rates": fix,  # per try: a menu program against a base sample
            "noise": noise,  # rows run again alone that changed text or verdict: the numerical noise floor
            "scores": {name: s.to_dict() for name, s in scores.items()},
            "summary": line,
        },
    )
    # Milliseconds per input: each candidate's choice, and the model features extracted in this run (cached ones
    # cost nothing here). A sidecar, so that the outputs above stay byte-identical from run to run.
    timings = {"overhead_ms": candidates.overhead_ms, "feature_ms": candidates.cache.extraction_ms}
    _write_json(out_dir / TIMINGS, timings)
    return scores, line


def fix_rate_line(fix: dict, noise: dict | None) -> str:
    """``Fix rate per try: program 5.1%, sample 5.1%, numerical noise 0.0% (0 of 96 rows ...).``: how often a try
    rescues a wrong full-depth answer, beside how often a verdict flips from numerics alone (a rescue rate near the
    noise is no rescue)."""
    sample = f"{100 * fix['base_sample']:.1f}%" if fix["base_sample"] is not None else "not sampled"
    said = f"Fix rate per try: program {100 * fix['menu_program']:.1f}%, sample {sample}, numerical noise "
    if noise is None or not noise["rows"]:
        return said + "not measured (menu.recheck 0, or labels made before it was recorded)."
    lo, hi = wilson(noise["verdicts_differ"], noise["rows"])
    return said + (
        f"{100 * noise['verdict_flip_rate']:.1f}% ({noise['verdicts_differ']} of {noise['rows']} rows run again alone "
        f"changed their verdict, 95% CI {100 * lo:.1f}-{100 * hi:.1f}%; {noise['texts_differ']} their text)."
    )


def choose_rule(validation: Matrix) -> dict:
    """The answer rule of a menu scored by likelihood, fixed on validation before anything is fitted: the rule under
    which the full depth answers more validation inputs right (ties: the summed one). A generation menu has one."""
    right = {rule: int(validation.with_rule(rule).correct[:, 0].sum()) for rule in validation.rules}
    best = max(validation.rules, key=lambda r: (right[r], r == "sum"))
    return {"rule": best, "validation_base_right": right, "inputs": len(validation.ids)}


def verdict(winners_: dict[str, str], validation: dict[str, MethodScore], test: dict[str, MethodScore]) -> str:
    """One sentence per mode: which candidate won on validation, and what test said of it against base greedy."""
    parts = []
    n = test[BASE].inputs
    for mode, name in winners_.items():
        v, t = validation[name], test[name]
        if name == BASE:
            parts.append(
                f"{mode.capitalize()} mode: no candidate did better than base greedy on validation "
                f"({100 * v.pass1:.1f}% of {v.inputs}), so base greedy is the choice (test: {100 * t.pass1:.1f}% of {n})."
            )
            continue
        lo, hi = t.diff_ci95
        said = "beats base greedy" if t.significant() and t.diff > 0 else "does not beat base greedy"
        if t.significant() and t.diff < 0:
            said = "is worse than base greedy"
        parts.append(
            f"{mode.capitalize()} mode: {name} won on validation ({100 * v.pass1:.1f}% against base "
            f"{100 * validation[BASE].pass1:.1f}%, {v.layers_ratio:.2f} D); on {n} test inputs it {said}: "
            f"{100 * t.pass1:.1f}% against {100 * test[BASE].pass1:.1f}%, {100 * t.diff:+.1f} points "
            f"(95% CI {100 * lo:+.1f} to {100 * hi:+.1f}), McNemar p = {t.p_vs_base:.3g}, at {t.layers_ratio:.2f} D."
        )
    dense = [name for name in validation if " dense " in name or name.endswith("likelihood target")]
    if dense:  # whether learning from the likelihood, not the 0/1 verdict, changes what test says
        best = max(dense, key=lambda k: (validation[k].pass1, -validation[k].layers_ratio))
        t, v = test[best], validation[best]
        parts.append(
            f"Fitted to the likelihood gain, the best on validation ({best}, {100 * v.pass1:.1f}%) scores "
            f"{100 * t.pass1:.1f}% on test, {100 * t.diff:+.1f} points, McNemar p = {t.p_vs_base:.3g}."
        )
    accuracy = test[winners_["accuracy"]]
    discordance = accuracy.discordance or max(s.discordance for s in test.values() if s.method != ORACLE)
    smallest = detectable_difference(n, discordance)
    parts.append(
        f"At n = {n} and {100 * discordance:.0f}% discordance, the smallest gain this test detects with 80% power "
        + (f"is {100 * smallest:.1f} points." if smallest is not None else "does not exist (too few inputs differ).")
    )
    return " ".join(parts)
