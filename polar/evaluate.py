"""The evaluate stage: run predicted programs on the model and compare them with baselines, honestly.

Every program is run on the model here; nothing is scored from the search's records (the reference
code's shortcut). pass@1 comes first, with a 95% Wilson interval and an exact McNemar test against
base greedy on the same inputs; pass@k of the predictor's top-k programs is compared with the base
model's own pass@k from ``k`` samples. Baselines: base greedy, base sampling, ShortGPT with as many
layers removed as the predictor skips on average, random programs of the predictor's lengths, other
predictors (e.g. trained on skip-only or loop-only labels) and, given label files of the same
inputs, the search oracle as an upper bound. Writes ``metrics.json`` and ``results.jsonl``; the
report (``report.md``, plot) comes from :mod:`polar.report`.

The prompt is the one the predictor's labels were made with (its recorded
:class:`~polar.tasks.prompts.PromptSpec`); prompt settings given here must match it. Both output files are
the same bytes for the same inputs; the predictor's timings go to ``timings.json`` beside them, which is no
DVC output.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from polar import predictor as P
from polar.answering import Answerer
from polar.baselines import block_influence, random_program, shortgpt_program
from polar.embedder import load_embedder
from polar.executor import Sampling
from polar.labeling.folder import read_labels
from polar.programs import Program
from polar.report import write_report
from polar.settings import DEFAULT_THREADS, EvalConfig
from polar.stats import mcnemar_p, pass_at_k, wilson
from polar.tasks.answers import grade
from polar.tasks.files import SHOTS_FILE, read_examples
from polar.tasks.prompts import PromptSpec

__all__ = ["TIMINGS", "evaluate"]

TIMINGS = "timings.json"  # beside metrics.json; not a DVC output (seconds differ from run to run)


# ------------------------------------------------------------------------------------------ evaluation
def _predict(model: P.ProgramPredictor, embedder, questions: list[str], k: int) -> tuple[list[list[Program]], float]:
    """Top-k programs per question and the predictor's seconds per input (embedder + network + decode)."""
    start = time.perf_counter()
    ranked = P.predict(model, embedder, questions, k)
    return ranked, (time.perf_counter() - start) / max(len(questions), 1)


def resolve_prompt(predictor: P.ProgramPredictor, config: EvalConfig, tasks_path: str | Path) -> PromptSpec:
    """The predictor's prompt, after checking that prompt settings given in ``config`` describe the same one."""
    spec = P.prompt_spec(predictor)
    if config.shots is None and config.prompt is None and not config.shots_from:
        return spec
    pool = Path(config.shots_from) if config.shots_from else Path(tasks_path).with_name(SHOTS_FILE)
    given = PromptSpec.from_pool(
        pool, config.prompt or spec.style, spec.shots if config.shots is None else config.shots
    )
    spec.check(given, "evaluation")
    return spec


def resolve_budget(predictor: P.ProgramPredictor, config: EvalConfig) -> int:
    """The generation budget: the labels' (recorded by the predictor), or the one given, which must match it."""
    labels = predictor.config.meta.get("max_new_tokens")
    if config.max_new_tokens is None and labels is None:
        raise ValueError("the predictor records no generation budget of its labels: give --max-new-tokens")
    if config.max_new_tokens is not None and labels is not None and config.max_new_tokens != labels:
        raise ValueError(
            f"--max-new-tokens {config.max_new_tokens} differs from the labels' budget {labels}: a program's reward "
            "depends on it, so evaluate with the labels' budget (leave --max-new-tokens out)"
        )
    return config.max_new_tokens or labels


def evaluate(
    model: str | None,
    predictor_dir: str | Path,
    tasks_path: str | Path,
    out_dir: str | Path,
    config: EvalConfig = EvalConfig(),
    others: Mapping[str, str | Path] | None = None,
    oracle_labels: str | Path | None = None,
    limit: int | None = None,
    device: str = "auto",
    backbone=None,
    command: str | None = None,
) -> Path:
    """Evaluate a predictor on the inputs of ``tasks_path``; returns ``out_dir/metrics.json``.

    Writes ``metrics.json``, ``results.jsonl``, and the report (``report.md`` and its plot, :mod:`polar.report`,
    which names ``command`` as the way to reproduce it) into ``out_dir``.

    Args:
        model: base model spec (None: the one the predictor was trained for).
        predictor_dir: folder written by ``polar train``.
        others: more predictors to compare, by name (e.g. ``{"skip-only": dir}``): their top-1 runs.
        oracle_labels: ``labels.jsonl`` of the same inputs: the search oracle's accuracy as upper bound.
    """
    from polar.backbone import load_as_recorded

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    examples = read_examples(tasks_path)[:limit]
    if not examples:
        raise ValueError(f"{tasks_path} holds no examples")
    meta = P.load(predictor_dir).config.meta
    model = model or meta.get("base_model")
    if not model:
        raise ValueError(f"{predictor_dir} does not record its base model; pass --model")
    # As its labels computed: their dtype, and on a CPU their threads (what is served is what was evaluated).
    backbone = backbone or load_as_recorded(model, meta.get("numerics"), device, DEFAULT_THREADS)
    predictors = _load_predictors(predictor_dir, others, backbone, model)
    prompt = resolve_prompt(predictors["predictor"], config, tasks_path)
    config = replace(config, max_new_tokens=resolve_budget(predictors["predictor"], config))
    answerer = Answerer(backbone, prompt, config.max_new_tokens)  # as the registered model will serve
    for name, pred in predictors.items():
        if name != "predictor":
            prompt.check(P.prompt_spec(pred), f"the predictor {name!r}")
    prompts = [answerer.encode(e.question, e.level) for e in examples]
    ranked, overhead = _rank(predictors, backbone, [e.question for e in examples], config.k)
    depth = backbone.executor.depth
    top1_lengths = [len(r[0]) for r in ranked["predictor"]]
    n_remove = max(1, round(depth - sum(top1_lengths) / len(top1_lengths)))
    shortgpt = shortgpt_program(block_influence(backbone, prompts), n_remove)
    rows, gen_seconds = _run_inputs(answerer, examples, prompts, ranked, predictors, shortgpt, config)
    with (out_dir / "results.jsonl").open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    metrics = _metrics(rows, depth, predictors, shortgpt, config, oracle_labels, examples)
    metrics |= {
        "model": model,
        "tasks": str(tasks_path),
        "predictor": str(predictor_dir),
        "prompt": prompt.id,
        "answer_kinds": sorted({e.answer_kind for e in examples}),
        "config": config.to_dict(),
    }
    path = out_dir / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    mean_gen = sum(gen_seconds) / len(gen_seconds)
    timings = {
        "predictor_ms": 1000 * overhead["predictor"],
        "top1_generation_ms": 1000 * mean_gen,
        "predictor_share_of_generation": overhead["predictor"] / mean_gen if mean_gen else None,
    }
    (out_dir / TIMINGS).write_text(json.dumps(timings, indent=2) + "\n")
    write_report(path, command)
    return path


def _load_predictors(predictor_dir, others, backbone, model: str) -> dict[str, P.ProgramPredictor]:
    """The predictor and the others to compare, each checked against the model's depth."""
    executor, depth = backbone.executor, backbone.executor.depth
    predictors = {"predictor": P.load(predictor_dir, device=executor.device)}
    for name, path in (others or {}).items():
        predictors[name] = P.load(path, device=executor.device)
    for name, pred in predictors.items():
        if pred.config.depth != depth:
            raise ValueError(f"{name} was trained for a {pred.config.depth}-layer model; {model} has {depth} layers")
    return predictors


def _rank(predictors, backbone, questions: list[str], k: int) -> tuple[dict, dict]:
    """Each predictor's top-k programs per question, and its seconds per input."""
    ranked, overhead, embedders = {}, {}, {}
    for name, pred in predictors.items():
        spec = pred.config.meta["embedder"]
        embedders.setdefault(spec, load_embedder(spec, backbone=backbone, device=backbone.executor.device))
        ranked[name], overhead[name] = _predict(pred, embedders[spec], questions, k)
    return ranked, overhead


def _run_inputs(answerer, examples, prompts, ranked, predictors, shortgpt, config: EvalConfig):
    """One row per input: the predictor's top-k, the static baselines and the base model's samples, all run."""
    depth = answerer.backbone.executor.depth
    rng = random.Random(config.seed)
    full = Program.identity(depth)

    def correct(text: str | None, example) -> bool:
        return grade(text, example.answer, example.answer_kind)[1]

    rows, gen_seconds = [], []
    for i, (example, ids) in enumerate(tqdm(list(zip(examples, prompts, strict=True)), desc="evaluate", unit="input")):
        top = ranked["predictor"][i]
        start = time.perf_counter()  # the top-1 program alone: its time is the denominator of the overhead
        first = answerer.generate([ids], [top[0]])[0]
        gen_seconds.append(time.perf_counter() - start)
        static = {
            "base": full,
            "shortgpt": shortgpt,
            "random": random_program(depth, len(top[0]), rng),
            **{name: ranked[name][i][0] for name in predictors if name != "predictor"},
        }
        # Each distinct program runs once (the identity is often both top-1 and base); a program's greedy
        # text does not depend on what else is in the batch.
        batch = list(dict.fromkeys(p for p in [*top[1:], *static.values()] if p != top[0]))
        outs = answerer.generate([ids], batch) if batch else []
        ok = {top[0]: correct(first.text, example)} | {
            p: correct(g.text, example) for p, g in zip(batch, outs, strict=True)
        }
        sampling = Sampling(temperature=config.temperature, top_p=config.top_p, seed=config.seed + i)
        samples = answerer.generate([ids] * config.k, [full], sampling)
        rows.append(
            {
                "id": example.id,
                "level": example.level,
                "answer": example.answer,
                "programs": [p.text for p in top],
                "top1_length": len(top[0]),
                "top1_text": first.text,
                "top1_answer": grade(first.text, example.answer, example.answer_kind)[0],
                "topk_correct": [ok[p] for p in top],
                **{f"{name}_correct": ok[p] for name, p in static.items()},
                **{f"{name}_program": static[name].text for name in static if name != "base"},
                "samples_correct": [correct(g.text, example) for g in samples],
            }
        )
    return rows, gen_seconds


def _metrics(rows, depth, predictors, shortgpt, config, oracle_labels, examples) -> dict:
    n = len(rows)
    pred_ok = [r["topk_correct"][0] for r in rows]
    base_ok = [r["base_correct"] for r in rows]

    def method(ok: Sequence[bool], layers: float) -> dict:
        lo, hi = wilson(sum(ok), n)
        return {
            "pass@1": sum(ok) / n,
            "correct": sum(ok),
            "ci95": [lo, hi],
            "avg_layers": layers,
            "layers_ratio": layers / depth,
            "p_vs_base": mcnemar_p(base_ok, ok),
        }

    avg_len = sum(r["top1_length"] for r in rows) / n
    methods = {
        "base greedy": method(base_ok, depth),
        "predictor": method(pred_ok, avg_len),
        f"ShortGPT (-{depth - len(shortgpt)} layers)": method([r["shortgpt_correct"] for r in rows], len(shortgpt)),
        "random (predictor's lengths)": method([r["random_correct"] for r in rows], avg_len),
    }
    for name in predictors:
        if name != "predictor":
            lengths = [len(Program.parse(r[f"{name}_program"])) for r in rows]
            methods[name] = method([r[f"{name}_correct"] for r in rows], sum(lengths) / n)
    if oracle_labels is not None:
        oracle = {}
        for record in read_labels(oracle_labels):
            oracle[record.id] = (bool(record.valid), record.shortest_length or depth)
        missing = [e.id for e in examples if e.id not in oracle]
        if missing:
            raise ValueError(f"{oracle_labels} has no label for {len(missing)} evaluated inputs (first: {missing[0]})")
        ok = [oracle[e.id][0] for e in examples]
        methods["search oracle (upper bound)"] = method(ok, sum(oracle[e.id][1] for e in examples) / n)
    k = config.k
    pass_k = {
        "predictor": [sum(any(r["topk_correct"][:j]) for r in rows) / n for j in range(1, k + 1)],
        "base sampling": [
            sum(pass_at_k(len(r["samples_correct"]), sum(r["samples_correct"]), j) for r in rows) / n
            for j in range(1, k + 1)
        ],
    }
    per_level: dict[str, dict] = {}
    for r in rows:
        lv = per_level.setdefault(r["level"], {"inputs": 0, "base": 0, "predictor": 0})
        lv["inputs"] += 1
        lv["base"] += r["base_correct"]
        lv["predictor"] += r["topk_correct"][0]
    return {
        "inputs": n,
        "depth": depth,
        "methods": methods,
        "pass_at_k": pass_k,
        "per_level": per_level,
        "identity_share": sum(r["programs"][0] == Program.identity(depth).text for r in rows) / n,
        "gap_pass@1_vs_base": (sum(pred_ok) - sum(base_ok)) / n,
        "discordant": {  # predictor right and base wrong, and the reverse: the paired test's counts
            "a_only": sum(a and not b for a, b in zip(pred_ok, base_ok, strict=True)),
            "b_only": sum(b and not a for a, b in zip(pred_ok, base_ok, strict=True)),
        },
    }
