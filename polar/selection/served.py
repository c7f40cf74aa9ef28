"""The menu chain's evaluate stage: the frozen winners run on the model for every test input, as they are served.

For each servable selector of the study (``baseline/``, and ``accuracy/`` / ``efficiency/`` when the winner can be
served) the stage loads the folder exactly as the registered model will (:class:`~polar.selection.selector.Selector`),
chooses a program per test input, checks the choice is the study's, runs it through the serving path
(:class:`polar.answering.Answerer`, the labels' prompt and budget) and checks each answer against the reward
matrix. A winner that cannot be served (it reads the base model's confidence or M1's features) has its study
choices run the same way, so its matrix figures are checked too. ShortGPT runs at the efficiency winner's budget.

Writes ``metrics.json`` (every score row, the checks, the summary), ``versions/<role>.json`` (each servable
selector's evaluation in the registry's format), ``report.md`` and ``accuracy_vs_layers.png``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from polar.answering import Answerer
from polar.labeling.folder import read_settings
from polar.programs import Program
from polar.selection.files import CHOICES, FROZEN, ORACLE, TEST, VERSIONS, served_programs
from polar.selection.matrix import Matrix
from polar.selection.policies import BASE
from polar.selection.selector import Selector
from polar.settings import DEFAULT_THREADS
from polar.stats import MethodScore, markdown_table, score_outcomes
from polar.tasks.files import read_examples

__all__ = ["evaluate_selection"]


def evaluate_selection(
    selection_dir: str | Path,
    selectors_dir: str | Path,
    tasks_path: str | Path,
    out_dir: str | Path,
    model: str | None = None,
    device: str = "auto",
    backbone=None,
    command: str | None = None,
) -> Path:
    """Serve the study's winners on the test inputs of ``tasks_path``; returns ``out_dir/metrics.json``.

    Args:
        selection_dir: the select stage's folder (``frozen.json``, ``test.json``, ``choices.parquet``).
        selectors_dir: its servable selector folders.
        tasks_path: the ingested test split the test matrix was labeled from (answers and levels).
    """
    from polar.backbone import load_as_recorded

    selection_dir, out_dir = Path(selection_dir), Path(out_dir)
    frozen, tested = _read_study(selection_dir)
    matrix = Matrix.load(tested["test"]["folder"])
    examples = _examples(tasks_path, matrix)
    backbone = backbone or load_as_recorded(
        model or frozen["model"], frozen["meta"].get("numerics"), device, DEFAULT_THREADS
    )
    if backbone.depth != matrix.depth:
        raise ValueError(f"the study's menus are for {matrix.depth} layers; {backbone.spec} has {backbone.depth}")
    rule = frozen.get("rule", {}).get("rule", "sum")
    matrix = matrix.with_rule(rule)
    runner = _Runner(Answerer(backbone, _prompt(frozen), frozen["max_new_tokens"], rule), examples, matrix)
    scores = {k: MethodScore.from_dict(v) for k, v in tested["scores"].items()}
    served, versions = {}, {}
    for role, name in {"baseline": BASE, **frozen["winners"]}.items():
        folder = frozen["servable"].get(role)
        chosen = served_programs(selection_dir, name)
        programs = [Program.parse(chosen[i]) for i in matrix.ids]
        if folder is not None:
            selector = Selector.load(Path(selectors_dir) / folder, backbone=backbone)
            picked = selector.choose([e.question for e in examples], [e.level for e in examples])
            mismatch = sum(a != b for a, b in zip(picked, programs, strict=True))
            if mismatch:
                raise ValueError(
                    f"{Path(selectors_dir) / folder} chooses another program than the study did on {mismatch} of "
                    f"{len(programs)} test inputs: the served selector is not what was evaluated; run `polar select` again"
                )
        right, agree = runner.run(programs)
        # The served choice is the study's, so it costs what the study charged: its feature passes too.
        row = score_outcomes(f"{name} (served)", right, runner.base, scores[name].layers_ratio, len(set(programs)))
        scores[row.method] = row
        served[role] = {
            "method": name,
            "servable": folder is not None,
            "agree_with_matrix": agree,
            "inputs": len(right),
        }
        if folder is not None and (role == "baseline" or folder != "baseline"):  # a winning B0 is the baseline
            versions[role] = _version_metrics(row, runner, frozen, tasks_path, programs, examples)
    scores |= _shortgpt(backbone, runner, frozen, scores[frozen["winners"]["efficiency"]].layers_ratio)
    return _write(out_dir, frozen, tested, scores, served, versions, command)


def _read_study(folder: Path) -> tuple[dict, dict]:
    from polar.hashing import sha256_file

    missing = [n for n in (FROZEN, TEST, CHOICES) if not (folder / n).exists()]
    if missing:
        raise FileNotFoundError(f"{folder} has no {', '.join(missing)}: run `polar select --out {folder}` first")
    frozen, tested = (json.loads((folder / n).read_text()) for n in (FROZEN, TEST))
    if tested.get("frozen_sha256") != sha256_file(folder / FROZEN):
        raise ValueError(f"{folder / TEST} was not scored with this {FROZEN}: run `polar select` again")
    return frozen, tested


def _prompt(frozen: dict):
    from polar.tasks.prompts import PromptSpec

    return PromptSpec.from_dict(frozen["meta"]["prompt"])


def _examples(tasks_path: str | Path, matrix: Matrix) -> list:
    by_id = {e.id: e for e in read_examples(tasks_path)}
    missing = [i for i in matrix.ids if i not in by_id]
    if missing:
        raise ValueError(
            f"{tasks_path} lacks {len(missing)} inputs of the test matrix (first: {missing[0]}): give the task file "
            "the test split was labeled from"
        )
    return [by_id[i] for i in matrix.ids]


class _Runner:
    """Programs run on the model for the test inputs, each (input, program) once, graded as labels are."""

    def __init__(self, answerer: Answerer, examples: list, matrix: Matrix) -> None:
        self.answerer, self.examples, self.matrix = answerer, examples, matrix
        self.done: dict[tuple[int, str], tuple[str | None, bool]] = {}
        self.base = self.run([Program.identity(matrix.depth)] * len(examples))[0]

    def run(self, programs: list[Program]) -> tuple[np.ndarray, int]:
        """Whether each input's program answers it, and on how many the answer equals the matrix's."""
        todo = [i for i, p in enumerate(programs) if (i, p.text) not in self.done]
        answers = self.answerer.answer_each([self.examples[i] for i in todo], [programs[i] for i in todo], "served")
        for i, answer in zip(todo, answers, strict=True):
            self.done[i, programs[i].text] = answer
        said = [self.done[i, p.text] for i, p in enumerate(programs)]
        column = {text: j for j, text in enumerate(self.matrix.programs)}
        agree = 0
        for i, (p, (prediction, _)) in enumerate(zip(programs, said, strict=True)):
            j = column.get(p.text)
            agree += j is not None and self.matrix.predictions[i, j] == prediction
        return np.array([ok for _, ok in said]), int(agree)


def _version_metrics(row: MethodScore, runner: _Runner, frozen: dict, tasks, programs, examples) -> dict:
    """A servable selector's test evaluation in the registry's format (what :func:`polar.registry.register` reads)."""
    base = score_outcomes("base greedy", runner.base, runner.base, 1.0)
    depth = runner.matrix.depth

    def method(s: MethodScore) -> dict:
        return {
            "pass@1": s.pass1,
            "correct": s.correct,
            "ci95": list(s.ci95),
            "avg_layers": s.layers_ratio * depth,
            "layers_ratio": s.layers_ratio,
            "p_vs_base": s.p_vs_base,
        }

    full = Program.identity(depth)
    return {
        "model": frozen["model"],
        "tasks": str(tasks),
        "inputs": row.inputs,
        "depth": depth,
        "methods": {"predictor": method(row), "base greedy": method(base)},
        "discordant": {"a_only": row.fixes, "b_only": row.breaks},
        "identity_share": sum(p == full for p in programs) / len(programs),
        "pass_at_k": {"predictor": [row.pass1]},
        "prompt": _prompt(frozen).id,
        "answer_kinds": sorted({e.answer_kind for e in examples}),
        "config": {"max_new_tokens": frozen["max_new_tokens"], "rule": frozen.get("rule", {}).get("rule", "sum")},
        "method": row.method.removesuffix(" (served)"),
    }


def _shortgpt(backbone, runner: _Runner, frozen: dict, budget: float) -> dict[str, MethodScore]:
    """ShortGPT at the efficiency winner's budget, its Block Influence from 64 training prompts (calibration
    data it may see)."""
    from polar.baselines import block_influence, shortgpt_program

    depth = runner.matrix.depth
    tasks = Path(read_settings(frozen["train"]["folders"][0])["tasks"])
    seen = read_examples(tasks)
    prompt = runner.answerer.prompt
    calibration = [runner.answerer.encode(prompt.question_of(e), e.level) for e in seen[:: max(1, len(seen) // 64)]]
    n_remove = max(1, round(depth * (1 - min(budget, 1.0))))
    program = shortgpt_program(block_influence(backbone, calibration), n_remove)
    right, _ = runner.run([program] * len(runner.examples))
    name = f"ShortGPT, {n_remove} layers removed ({program.text})"
    return {name: score_outcomes(name, right, runner.base, len(program) / depth)}


def _write(out_dir: Path, frozen, tested, scores: dict[str, MethodScore], served, versions, command) -> Path:
    from polar.report import plot_scores

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / VERSIONS).mkdir(exist_ok=True)
    for role, data in versions.items():
        (out_dir / VERSIONS / f"{role}.json").write_text(json.dumps(data, indent=2) + "\n")
    metrics = {
        "model": frozen["model"],
        "menu": frozen["menu"],
        "prompt": frozen["prompt"],
        "inputs": tested["test"]["inputs"],
        "candidates": frozen["candidates"],
        "winners": frozen["winners"],
        "summary": tested["summary"],
        "served": served,
        "versions": sorted(versions),
        "scores": {k: s.to_dict() for k, s in scores.items()},
    }
    path = out_dir / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    validation = [MethodScore.from_dict(v) for v in frozen["validation_scores"].values()]
    checks = "; ".join(
        f"{role} ({v['method']}{'' if v['servable'] else ', not servable: its study choices'}) "
        f"{v['agree_with_matrix']}/{v['inputs']} answers equal to the matrix's"
        for role, v in served.items()
    )
    lines = [
        f"# Program selection on {frozen['model']}, menu `{frozen['menu']}`",
        "",
        f"Train {frozen['train']['inputs']} inputs, validation {frozen['validation']['inputs']}, test "
        f"{tested['test']['inputs']}; prompt `{frozen['prompt']}`; {frozen['candidates']} candidates. Every choice "
        "was frozen on validation (`frozen.json`) before the test matrix was read. Layers / D counts every pass a "
        "method needs (the greedy pass for confidence features, the samples for agreement).",
        "",
        tested["summary"],
        "",
        "## Test",
        "",
        markdown_table(scores.values()),
        "",
        f"Served through the registered selector and `polar.answering.Answerer`: {checks}.",
        "",
        "![accuracy vs layers](accuracy_vs_layers.png)",
        "",
        "## Validation (where the choices were made)",
        "",
        markdown_table(validation),
        "",
    ]
    if command:
        lines += ["Made by:", "", "```bash", command, "```", ""]
    (out_dir / "report.md").write_text("\n".join(lines))
    marked = set(frozen["winners"].values()) | {BASE, ORACLE}
    plot_scores(scores.values(), out_dir / "accuracy_vs_layers.png", marked, f"{tested['test']['inputs']} test inputs")
    return path
