"""The menu labeler: every program of a fixed menu run on every input, into a reward matrix.

Where the search labeler (:mod:`polar.labeling.search`) searches each input for programs that answer it, a menu
labels every input with the same programs: a dense (input x program) matrix of correctness, predictions, layers
and answer log-probabilities, from which a selector learns which program to run for which input. Menus are a
file of programs (text or compact form, one per line, ``#`` comments) or ``auto:K``: the full-depth program and
the K programs valid on the most inputs of a search discovery run (``--discovery``, a label folder of the same
model and prompt; the search's root edits are among its candidates).

Each input's :class:`~polar.labeling.folder.MenuRecord` also holds the base model's confidence in its own answer:
the answer's mean token log-probability, the top-2 margin and the entropy at its first token, and the shares of
a few samples that agree with it and that are correct. :func:`polar.labeling.run.run_labeling` writes them to
resumable shards as search labels are; the merged ``menu.jsonl`` is exported as ``rewards.parquet`` and
``inputs.parquet`` (:func:`polar.labeling.reward_matrix.export`).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np

from polar.backbone import Backbone, load, model_depth, numerics
from polar.decoding import Sampling
from polar.grid import Samples, generate_grid
from polar.labeling.folder import (
    MENU_FILE,
    SCHEMA,
    MenuRecord,
    MenuResult,
    check_settings,
    label_prompt,
    merge_shards,
    read_labels,
    record_header,
)
from polar.labeling.reward_matrix import write_matrix
from polar.likelihood import Likelihood, best_choice, score_grid
from polar.programs import Program, ProgramError
from polar.settings import EngineConfig, LabelConfig, MenuConfig
from polar.tasks.answers import grade
from polar.tasks.prompts import PromptSpec, stop_token_ids
from polar.tasks.schema import LETTERS, Example

__all__ = ["LIKELIHOODS", "MenuLabeler", "level_batches", "menu_id", "resolve_menu", "run_menu", "write_menu"]


LIKELIHOODS = 1  # the likelihood fields every result records (a folder labeled without them does not resume)


# ------------------------------------------------------------------------------------------------ menus
def resolve_menu(
    spec: str, depth: int, max_visits: int, prompt: PromptSpec | None = None, discovery: str = ""
) -> list[Program]:
    """The programs of a menu, the full-depth program first, each once.

    Args:
        spec: a menu file, or ``auto:K``.
        depth: the model's layers.
        max_visits: most times one layer may run in a program.
        prompt: the prompt the menu is for (an ``auto`` menu's discovery labels must have been made with it).
        discovery: for ``auto:K``, a label folder of search labels.

    Returns:
        The menu's programs.
    """
    identity = Program.identity(depth)
    if spec.startswith("auto:"):
        try:
            k = int(spec.removeprefix("auto:"))
        except ValueError:
            raise ValueError(f"menu {spec!r}: write auto:K with K a number of programs, e.g. auto:31") from None
        programs = _discovered(k, depth, prompt, discovery)
    else:
        path = Path(spec)
        if not path.exists():
            raise FileNotFoundError(f"menu file not found: {path} (or write auto:K with --discovery LABELS)")
        programs = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                programs.append(Program.parse_any(text).validate(depth, max_visits=max_visits))
            except ProgramError as err:
                raise ValueError(f"{path}:{n}: {err}") from err
    return list(dict.fromkeys([identity, *programs]))


def _discovered(k: int, depth: int, prompt: PromptSpec | None, discovery: str) -> list[Program]:
    """The ``k`` programs valid on the most inputs of the search labels in ``discovery`` (then shorter first)."""
    if not discovery:
        raise ValueError(
            "an auto menu needs --discovery LABELS: MCTS labels of a few inputs with the same model and prompt, "
            "e.g. `polar label --limit 16 --out data/labels/discovery`"
        )
    records = read_labels(discovery)
    if prompt is not None and label_prompt(discovery).id != prompt.id:
        raise ValueError(f"{discovery} was labeled with the prompt {label_prompt(discovery).id}, not {prompt.id}")
    if records and records[0].depth != depth:
        raise ValueError(f"{discovery} labels a {records[0].depth}-layer model; this one has {depth} layers")
    valid = Counter(p for r in records for p in set(r.valid))
    identity = Program.identity(depth).text
    ranked = sorted((p for p in valid if p != identity), key=lambda p: (-valid[p], len(Program.parse(p)), p))
    return [Program.parse(p) for p in ranked[:k]]


def write_menu(path: str | Path, programs: Sequence[Program], title: str) -> Path:
    """A menu file (one program per line) that ``--menu`` reads back as the same menu (the same :func:`menu_id`)."""
    path = Path(path)
    if path.exists() and [p.text for p in programs] == _programs_in(path):
        return path  # already there (another worker of the same run, or a resumed run): left as it is
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"# {title}\n" + "".join(f"{p.text}\n" for p in programs))
    tmp.replace(path)  # atomic: a worker reading it never sees half a menu
    return path


def _programs_in(path: Path) -> list[str]:
    return [t for line in path.read_text().splitlines() if (t := line.split("#", 1)[0].strip())]


def menu_id(programs: Sequence[Program]) -> str:
    """``menu-<n>-<12 hex>``: the number of programs and a digest of their texts in order."""
    digest = hashlib.sha256("\n".join(p.text for p in programs).encode()).hexdigest()[:12]
    return f"menu-{len(programs)}-{digest}"


# ------------------------------------------------------------------------------------------------ running
def run_menu(
    backbone: Backbone,
    examples: Sequence[Example],
    prompt: PromptSpec,
    menu: Sequence[Program],
    config: LabelConfig,
    dense: MenuConfig,
    menu_name: str,
) -> list[MenuRecord]:
    """Every program of ``menu`` on each of ``examples`` (one grid: their shared few-shot prefix runs once per
    program), and the base model's confidence (the menu's first program, the full depth).

    Under ``dense.scoring == "generate"`` each program generates its answer line, which is graded, and the reference
    answer's (for multiple choice: each letter's) likelihood is scored beside it; under ``"likelihood"`` each
    program answers a multiple-choice question with the choice of highest likelihood after a cloze prompt.

    Args:
        backbone: the base model.
        examples: the inputs (of one level, to share their prefix).
        prompt: the prompt spec they are asked with (cloze for likelihood scoring).
        menu: the programs, the full-depth one first.
        config: the label settings (the generation budget).
        dense: the menu settings (the scoring, the samples and their temperature).
        menu_name: the menu's id (:func:`menu_id`), recorded in every record.

    Returns:
        One record per input, in the order of ``examples``.
    """
    tok = backbone.tokenizer
    encoded = [prompt.encode_scored(e, tok) for e in examples]
    prompts, continuations = [ids for ids, _ in encoded], [tails for _, tails in encoded]
    if dense.scoring == "likelihood":
        scores = score_grid(backbone.executor, prompts, continuations, menu)
        rows = [_by_likelihood(e, prompt, menu, s, dense) for e, s in zip(examples, scores, strict=True)]
    else:
        rows = _generated(backbone, examples, prompts, continuations, menu, config, dense)
    head = {"menu": menu_name}
    stops = stop_token_ids(backbone.tokenizer)  # once per grid, not per rechecked row
    checked = [
        _recheck(backbone, e, x, tails, menu, row.pop("tokens", None), row["results"], dense, config, stops)
        for e, x, tails, row in zip(examples, prompts, continuations, rows, strict=True)
    ]
    return [
        MenuRecord(**record_header(e, backbone.spec, backbone.executor.depth, prompt.id), **head, **fields, recheck=c)
        for e, fields, c in zip(examples, rows, checked, strict=True)
    ]


def rechecked(example_id: str, program: str, share: float) -> bool:
    """Whether the row (``example_id``, ``program``) is in the noise-floor sample: a fixed share of all rows, chosen
    by a hash of both, so that it does not depend on the batch, the shard or the order the inputs come in."""
    digest = int(hashlib.sha256(f"{example_id}\n{program}".encode()).hexdigest()[:8], 16)
    return digest < share * 0x100000000


def _recheck(
    backbone, example, prompt_ids, tails, menu, tokens, results, dense: MenuConfig, config: LabelConfig, stops
) -> tuple:
    """The input's sampled rows run again alone (a grid of one prompt and one program): whether each gives the same
    answer text (generation: the same tokens; likelihood: the same choice) and the same verdict as in its grid."""
    out = []
    for j, (program, result) in enumerate(zip(menu, results, strict=True)):
        if not rechecked(example.id, program.text, dense.recheck):
            continue
        if dense.scoring == "likelihood":
            sums = [x.logprob for x in score_grid(backbone.executor, [prompt_ids], [tails], [program])[0][0]]
            best = int(np.argmax(sums))  # the summed rule, as ``results`` holds it
            same_text, ok = LETTERS[best] == result.prediction, best == example.answer_index
        else:
            alone = generate_grid(backbone.executor, [prompt_ids], [program], config.max_new_tokens, stops)[0][0]
            ok = grade(alone.text, example.answer, example.answer_kind)[1]
            same_text = list(alone.tokens) == list(tokens[j])
        out.append({"program": program.text, "same_text": bool(same_text), "same_verdict": bool(ok) == result.correct})
    return tuple(out)


def _generated(backbone, examples, prompts, continuations, menu, config, dense) -> list[dict]:
    """Each input's results and confidence fields under generation: graded answer lines, likelihoods beside."""
    stops = stop_token_ids(backbone.tokenizer)
    samples = None
    if dense.samples:  # seeded by the input: independent of the batch
        seeds = [int(hashlib.sha256(e.id.encode()).hexdigest()[:8], 16) for e in examples]
        samples = Samples(dense.samples, Sampling(temperature=dense.temperature), seeds)
    grid = generate_grid(backbone.executor, prompts, menu, config.max_new_tokens, stops, samples, continuations)
    out = []
    for example, row in zip(examples, grid, strict=True):
        results = []
        for program, cell in zip(menu, row, strict=False):  # the menu's rows; the samples follow
            prediction, ok = grade(cell.text, example.answer, example.answer_kind)
            likely = _likelihood_fields(example, cell.likelihoods)
            results.append(
                MenuResult(
                    program.text, ok, prediction, len(program), round(cell.logprob, 4), len(cell.tokens), **likely
                )
            )
        base, first = results[0], row[0]
        drawn = [grade(cell.text, example.answer, example.answer_kind) for cell in row[len(menu) :]]
        agree = sum(a == base.prediction for a, _ in drawn) / len(drawn) if drawn else 1.0
        right = sum(ok for _, ok in drawn) / len(drawn) if drawn else float(base.correct)
        out.append(
            {
                "results": tuple(results),
                "base_logprob": round(base.logprob / max(base.tokens, 1), 4),
                "base_margin": round(first.margin, 4),
                "base_entropy": round(first.entropy, 4),
                "sample_agreement": round(agree, 4),
                "sample_correct": round(right, 4),
                "tokens": [cell.tokens for cell in row[: len(menu)]],  # for the recheck; not a record field
            }
        )
    return out


def _likelihood_fields(example: Example, likelihoods: Sequence[Likelihood]) -> dict:
    """A result's likelihood fields from the scores of :meth:`PromptSpec.answers_of` (choices, or the reference)."""
    sums = tuple(round(x.logprob, 4) for x in likelihoods)
    tokens = tuple(x.tokens for x in likelihoods)
    at = example.answer_index if example.choices else 0
    fields = {"answer_logprob": sums[at], "answer_tokens": tokens[at]}
    return fields | ({"choice_logprobs": sums, "choice_tokens": tokens} if example.choices else {})


def _by_likelihood(example: Example, prompt: PromptSpec, menu, scores, dense: MenuConfig) -> dict:
    """An input's results and confidence fields under likelihood scoring (each program: the likeliest choice).

    The base model's confidence is read from the full depth's distribution over the choices (their summed
    likelihoods, softmaxed): its top-2 margin and entropy, the chosen choice's mean log-probability per token, and
    the shares a sample drawn from that distribution at the menu's temperature would agree with the choice and be
    right (expected values, not draws; with no samples 1 and the verdict, as under generation).
    """
    texts = prompt.answers_of(example)
    results = []
    for program, likelihoods in zip(menu, scores, strict=True):
        fields = _likelihood_fields(example, likelihoods)
        sums = np.array(fields["choice_logprobs"])
        best, best_norm = best_choice(sums, texts, "sum"), best_choice(sums, texts, "norm")
        results.append(
            MenuResult(
                program.text,
                best == example.answer_index,
                LETTERS[best],
                len(program),
                float(sums[best]),
                fields["choice_tokens"][best],
                **fields,
                correct_norm=best_norm == example.answer_index,
                prediction_norm=LETTERS[best_norm],
            )  # fmt: skip
        )
    base = results[0]
    sums = np.array(base.choice_logprobs)
    probs = _softmax(sums)
    top = np.sort(probs)[::-1]
    best = int(np.argmax(sums))
    drawn = _softmax(sums / dense.temperature) if dense.samples else None
    return {
        "results": tuple(results),
        "base_logprob": round(base.logprob / max(base.tokens, 1), 4),
        "base_margin": round(float(top[0] - (top[1] if len(top) > 1 else 0.0)), 4),
        "base_entropy": round(float(-(probs * np.log(np.clip(probs, 1e-30, None))).sum()), 4),
        "sample_agreement": round(float(drawn[best]), 4) if drawn is not None else 1.0,
        "sample_correct": round(float(drawn[example.answer_index]), 4) if drawn is not None else float(base.correct),
    }


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def level_batches(examples: Sequence[Example], size: int) -> list[list[Example]]:
    """Inputs of one level together (they share their few-shot prefix), ``size`` at a time, in input order."""
    by_level: dict[str, list[Example]] = {}
    for e in examples:
        by_level.setdefault(e.level, []).append(e)
    return [group[i : i + size] for group in by_level.values() for i in range(0, len(group), size)]


# ------------------------------------------------------------------------------------------------ the labeler
@dataclass
class MenuLabeler:
    """Labels each input with every program of the menu of ``dense`` (``menu.jsonl`` and the reward matrix); see
    :class:`~polar.labeling.run.Labeler`.

    ``backbone``, when given, is used as it is (its ``spec`` is what the records name); otherwise ``model`` is
    loaded on ``device`` when the first input is labeled, and its depth read from its config to resolve the menu.
    """

    model: str
    tasks: str | Path
    config: LabelConfig
    dense: MenuConfig
    device: str = "auto"
    backbone: Backbone | None = None
    engine: EngineConfig = field(default_factory=EngineConfig)  # dtype and threads, when the model is loaded here
    menu: list[Program] | None = field(default=None, init=False)  # resolved by prepare
    record_kind: ClassVar[type] = MenuRecord
    name: ClassVar[str] = "menu"  # the default label folder's name

    @cached_property
    def prompt(self) -> PromptSpec:
        """The prompt of these settings (recorded in ``settings.json``)."""
        return self.config.prompt_spec(self.tasks, "cloze" if self.dense.scoring == "likelihood" else "qa")

    def prepare(self, out_dir: Path, restart_on_change: bool = False) -> None:
        """Resolve the menu, create ``out_dir`` for these settings (or check that what it holds was made with them)
        and leave the menu there as ``menu.txt``.

        The menu's programs, not how it was given, are part of the settings: a run given ``auto:K`` resumes with
        ``--menu OUT/menu.txt``.
        """
        out_dir, dense = Path(out_dir), self.dense
        depth = self.backbone.depth if self.backbone is not None else model_depth(self.model)
        # An auto menu's discovery searched with generation: the prompt of these settings that generates.
        searched = self.config.prompt_spec(self.tasks) if self.prompt.format == "cloze" else self.prompt
        self.menu = resolve_menu(dense.menu, depth, self.config.search.max_visits, searched, dense.discovery)
        name = menu_id(self.menu)
        engine = self.numerics()
        # In float32 a grid's composition changes no row (tested); in a half type it can, so it is then part of what
        # the labels were made with. The recheck share decides which rows a record carries a recheck of.
        grid = {} if engine["dtype"] == "float32" else {"grid_inputs": dense.grid_inputs}
        settings = {
            "schema": SCHEMA,
            "kind": "menu",
            "model": self.model,
            "tasks": str(self.tasks),
            "config": {
                "max_new_tokens": self.config.max_new_tokens,
                "samples": dense.samples,
                "temperature": dense.temperature,
                "scoring": dense.scoring,
                "likelihoods": LIKELIHOODS,
                "recheck": dense.recheck,
                **grid,
            },
            "prompt": self.prompt.to_dict(),
            "menu": {"id": name, "programs": [p.text for p in self.menu]},
            "engine": engine,
        }
        check_settings(out_dir, settings, restart_on_change)
        source = f" from {dense.discovery}" if dense.discovery else ""
        write_menu(out_dir / MENU_FILE, self.menu, f"{name}: {dense.menu}{source}")

    def numerics(self) -> dict:
        """The dtype, device and threads the labels are (to be) made with: part of the folder's settings."""
        if self.backbone is not None:
            return self.backbone.numerics
        return numerics(self.engine.dtype, self.device, self.engine.threads)

    def label_batch(self, examples: Sequence[Example]) -> Iterator[tuple[MenuRecord, float]]:
        """Run the menu on ``examples``, one level's grid of ``grid_inputs`` at a time; yields each record with
        its share of its grid's seconds."""
        if self.menu is None:
            raise RuntimeError("MenuLabeler.label_batch before prepare: the menu is resolved by prepare(out_dir)")
        if self.backbone is None:
            self.backbone = load(self.model, self.device, self.engine.dtype, threads=self.engine.threads)
        name = menu_id(self.menu)
        for batch in level_batches(examples, self.dense.grid_inputs):
            start = time.perf_counter()
            records = run_menu(self.backbone, batch, self.prompt, self.menu, self.config, self.dense, name)
            seconds = (time.perf_counter() - start) / len(batch)
            for record in records:
                yield record, seconds

    def finish(self, out_dir: Path, ids: Sequence[str]) -> Path:
        """Merge the shards of ``out_dir`` into ``menu.jsonl`` (in the order of ``ids``), export the reward matrix
        and write the manifest."""
        merged = merge_shards(out_dir, ids, MenuRecord)
        write_matrix(out_dir, {"model": self.model, "tasks": str(self.tasks)}, read_labels(merged, MenuRecord))
        return merged
