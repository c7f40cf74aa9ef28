"""``polar lm-eval``: lm-evaluation-harness with the ``polar`` model registered and the offline tasks included.

lm-eval 0.4.x discovers no plugins, so this command registers the model and then runs lm-eval's own command line
with the same arguments: ``polar lm-eval --model polar --model_args ... --tasks ...`` behaves as ``lm_eval`` does
(``--include_path`` defaults to the shipped tasks). A few options of its own come first: ``--data``, ``--programs``
(a sweep of programs on one task: one table and a plot) and ``--log-to`` (the results as metrics of a registered
version's run).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from polar.cli.options import TrackingOpt, app, console, fail

PROGRAMS_FILE = "polar_programs.jsonl"  # per-document programs, beside lm-eval's results when --output_path is set


@app.command(
    name="lm-eval",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def lm_eval_cmd(
    ctx: typer.Context,
    data: Annotated[
        str | None,
        typer.Option(
            help="Benchmark data folder of the shipped polar_* tasks (sets $POLAR_SHARED_DATA; default: "
            "../shared/data beside the checkout)."
        ),
    ] = None,
    programs: Annotated[
        list[str] | None,
        typer.Option(
            "--programs",
            help="Sweep: run the one task under each program (text form '0-4,8-29', compact form or 'full') or "
            "each program of a menu file; repeatable. Writes one table and a plot.",
        ),
    ] = None,
    sweep_out: Annotated[str, typer.Option(help="Folder of the sweep's sweep.md, sweep.json and sweep.png.")] = (
        "reports/harness"
    ),
    metric: Annotated[str | None, typer.Option(help="The sweep's plotted metric (default: the task's first).")] = None,
    log_to: Annotated[
        str | None,
        typer.Option(help="models:/NAME@ALIAS or models:/NAME/VERSION: log the results as metrics of its run."),
    ] = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Run lm-evaluation-harness with the `polar` model: the arguments after polar's own options are lm-eval's.

    polar lm-eval --model polar --model_args model=smollm2-135m,program=0-4+8-29 --tasks polar_arc_easy --limit 50

    Model args: model=, program= (no commas: 0-4+8-29), program_file=, predictor= (a folder or models:/NAME@ALIAS).

    Also: batch_size, dtype, device, max_length, add_bos_token, programs_out, tracking_uri.

    Shipped offline tasks: polar_arc_easy, polar_arc_challenge, polar_gsm8k, polar_mmlu_pro_math.

    lm-eval's own help: polar lm-eval -- run --help
    """
    from polar.harness import register

    if data:
        os.environ["POLAR_SHARED_DATA"] = str(Path(data).expanduser().resolve())
    register()
    args = _with_defaults(list(ctx.args))
    try:
        if programs:
            _sweep(args, programs, Path(sweep_out), metric, log_to, tracking_uri)
        else:
            _run(args, log_to, tracking_uri)
    except KeyError as err:  # str() of a KeyError is its repr
        fail(str(err.args[0]) if err.args else repr(err))
    except (ValueError, FileNotFoundError, TypeError) as err:
        fail(str(err))


# ------------------------------------------------------------------------------------------ lm-eval's run
def _with_defaults(args: list[str]) -> list[str]:
    """lm-eval's arguments with the shipped tasks on the include path (``run``, ``ls`` and ``validate`` all take
    one) and, for the polar model with an output path, the per-document program file beside lm-eval's results."""
    from polar.harness import MODEL_NAME, TASKS_DIR

    if not args or any(a in ("-h", "--help") for a in args):
        return args  # lm-eval's help
    given = any(a == "--include_path" or a.startswith("--include_path=") for a in args)
    out = list(args) if given else [*args, "--include_path", str(TASKS_DIR)]
    parsed = _parse(out)
    wanted = parsed is not None and parsed.model == MODEL_NAME and parsed.output_path
    if wanted and "programs_out" not in (parsed.model_args or {}):
        where = Path(parsed.output_path)
        folder = where.parent if where.suffix == ".json" else where
        out += ["--model_args", f"programs_out={folder / PROGRAMS_FILE}"]
    return out


def _parse(args: list[str]):
    """lm-eval's own parse of ``args`` (None for its sub-commands other than run, and for --help)."""
    from lm_eval._cli import HarnessCLI

    with _argv(args):
        parsed = HarnessCLI().parse_args()
    return parsed if getattr(parsed, "command", None) == "run" else None


@contextlib.contextmanager
def _argv(args: list[str]) -> Iterator[None]:
    """lm-eval's command line reads ``sys.argv``."""
    saved = sys.argv
    sys.argv = ["lm-eval", *args]
    try:
        yield
    finally:
        sys.argv = saved


@contextlib.contextmanager
def _captured(into: list[dict]) -> Iterator[None]:
    """Keep the results of lm-eval's own run (its command line prints and saves them, and returns nothing)."""
    import lm_eval
    from lm_eval import evaluator

    def capture(*a, **kw):
        results = evaluator.simple_evaluate(*a, **kw)
        if results is not None:
            into.append(results)
        return results

    saved = lm_eval.__dict__.get("simple_evaluate")  # usually absent: lm_eval resolves it lazily
    lm_eval.simple_evaluate = capture  # what `lm-eval run` imports at call time
    try:
        yield
    finally:
        if saved is None:
            del lm_eval.simple_evaluate
        else:
            lm_eval.simple_evaluate = saved


def _run(args: list[str], log_to: str | None, tracking_uri: str | None) -> None:
    from lm_eval._cli import HarnessCLI

    results: list[dict] = []
    with _argv(args), _captured(results):
        cli = HarnessCLI()
        cli.execute(cli.parse_args())
    for r in results:
        _print_efficiency(r)
    if log_to:
        if not results:
            raise ValueError("--log-to: lm-eval produced no results to log")
        _log(log_to, tracking_uri, results[-1])


def _print_efficiency(results: dict) -> None:
    info = results.get("config", {}).get("polar")
    if not info:
        return
    console.print(f"polar: {info['model']} (D = {info['depth']}), {info['source']}", highlight=False, soft_wrap=True)
    for task, t in info["tasks"].items():
        top = ", ".join(f"{p} x{n}" for p, n in list(t["programs"].items())[:3])
        more = f" and {len(t['programs']) - 3} more" if len(t["programs"]) > 3 else ""
        console.print(
            f"  {task}: {t['documents']} documents, {t['layers']:.2f} layers per token (layers / D "
            f"{t['layers_ratio']:.3f}); programs {top}{more}",
            highlight=False,
            soft_wrap=True,
        )


def _log(model_uri: str, tracking_uri: str | None, results: dict) -> None:
    from lm_eval.utils import handle_non_serializable

    from polar.harness.tracking import flat_metrics, log_to_version

    kept = json.loads(json.dumps({k: v for k, v in results.items() if k != "samples"}, default=handle_non_serializable))
    name = "+".join(sorted(results.get("results", {})))
    run_id = log_to_version(model_uri, flat_metrics(results), kept, name, tracking_uri)
    console.print(f"logged the harness results to run {run_id} of {model_uri}", highlight=False, soft_wrap=True)


# ------------------------------------------------------------------------------------------------ sweep
def _sweep(args: list[str], specs: list[str], out: Path, metric: str | None, log_to: str | None, uri: str | None):
    """One task under each program: lm-eval's settings from ``args``, one model load, one table and plot."""
    from lm_eval import simple_evaluate
    from lm_eval.config.evaluate_config import EvaluatorConfig

    from polar.harness import MODEL_NAME
    from polar.harness.model import PolarLM
    from polar.harness.sweep import run_sweep, write_sweep

    parsed = _parse(args)
    if parsed is None:
        raise ValueError("--programs needs lm-eval's run arguments: --model polar --model_args model=... --tasks TASK")
    cfg = EvaluatorConfig.from_cli(parsed)
    if cfg.model != MODEL_NAME:
        raise ValueError(f"--programs runs the polar model, not --model {cfg.model}")
    fixed = sorted({"program", "program_file", "predictor"} & set(cfg.model_args))
    if fixed:
        raise ValueError(f"--programs sets the program of every run: drop {', '.join(fixed)} from --model_args")
    if not cfg.tasks or len(cfg.tasks) != 1 or "," in cfg.tasks[0]:
        raise ValueError(f"--programs evaluates one task, got --tasks {cfg.tasks}")
    task = cfg.tasks[0]
    model_args = {k: v for k, v in cfg.model_args.items() if k != "trust_remote_code"}
    lm = PolarLM.create_from_arg_obj(model_args, {"batch_size": cfg.batch_size, "device": cfg.device})
    programs = _programs(specs, lm.backbone.depth)
    manager = _task_manager(cfg, task)
    seeds = cfg.seed or [None] * 4
    settings = dict(
        tasks=[task], num_fewshot=cfg.num_fewshot, limit=cfg.limit, samples=cfg.samples, gen_kwargs=cfg.gen_kwargs,
        task_manager=manager, log_samples=False, apply_chat_template=cfg.apply_chat_template,
        fewshot_as_multiturn=cfg.fewshot_as_multiturn, system_instruction=cfg.system_instruction,
        confirm_run_unsafe_code=cfg.confirm_run_unsafe_code, metadata=cfg.metadata,
        **{k: s for k, s in zip(("random_seed", "numpy_random_seed", "torch_random_seed", "fewshot_random_seed"), seeds, strict=True) if s is not None},
    )  # fmt: skip
    rows = run_sweep(lm, programs, task, lambda: simple_evaluate(model=lm, **settings))
    paths = write_sweep(rows, out, task, lm.backbone.spec, lm.backbone.depth, metric)
    console.print(paths["table"].read_text(), highlight=False, soft_wrap=True)
    console.print(f"wrote {paths['table']}, {paths['data']} and {paths['plot']}", highlight=False, soft_wrap=True)
    if log_to:
        from polar.harness.tracking import log_to_version, sweep_metrics

        data = json.loads(paths["data"].read_text())
        run_id = log_to_version(log_to, sweep_metrics(rows, task), data, f"sweep {task}", uri)
        console.print(f"logged the sweep to run {run_id} of {log_to}", highlight=False, soft_wrap=True)


def _programs(specs: list[str], depth: int):
    """The sweep's programs: each spec a program or a menu file (its programs, the full depth first), each once."""
    from polar.labeling.menu import resolve_menu
    from polar.programs import Program

    out = []
    for spec in specs:
        if Path(spec).is_file():
            out.extend(resolve_menu(spec, depth, max_visits=None))
        elif spec.strip() in ("full", "identity"):
            out.append(Program.identity(depth))
        else:
            out.append(Program.parse_any(spec).validate(depth, max_visits=None))
    return list(dict.fromkeys(out))


def _task_manager(cfg, task: str):
    """lm-eval's task manager for the sweep; the shipped tasks alone skip indexing the harness's ~230 task
    folders (10-16 s on 2 CPU cores)."""
    from lm_eval.tasks import TaskManager

    from polar.harness import TASK_NAMES, TASKS_DIR

    shipped = task in TASK_NAMES and Path(cfg.include_path or TASKS_DIR).resolve() == TASKS_DIR.resolve()
    return TaskManager(include_path=cfg.include_path, include_defaults=not shipped, metadata=cfg.metadata or {})
