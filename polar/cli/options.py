"""What every command shares: the app, the consoles, errors that name the fix, and options made from settings."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from polar.config import Flat, fields_of, load

if TYPE_CHECKING:
    from collections.abc import Iterable

    from polar.stats import MethodScore

__all__ = [
    "DeviceOpt",
    "DtypeOpt",
    "ModelOpt",
    "app",
    "configured",
    "console",
    "err_console",
    "fail",
    "name_value",
    "scores_table",
]

app = typer.Typer(
    help="polar: run a frozen LLM along programs of layers that skip or loop its layers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Base model: a bundled name (smollm2-135m, gemma3-270m), a local directory, a .gguf file or a hub id.",
    ),
]
DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA when available), cpu, cuda, cuda:N.")]
DtypeOpt = Annotated[str, typer.Option(help="auto (bfloat16 on CUDA, float32 on a CPU), float32, bfloat16 or float16.")]
TrackingOpt = Annotated[
    str | None,
    typer.Option(help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow/mlflow.db)."),
]
ParamsOpt = Annotated[
    str | None,
    typer.Option(
        "--params",
        help="Read settings from this params file (its section for this command, e.g. params.yaml); "
        "options given here win over it.",
    ),
]


def fail(message: str, code: int = 2) -> typing.NoReturn:
    # Unwrapped: the commands that errors suggest must survive a copy and paste.
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def name_value(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` of a repeatable option."""
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise ValueError(f"{text!r}: write NAME=VALUE, e.g. skip-only=models/predictors/m/skip")
    return name, value


def _option(flat: Flat, section: str) -> Any:
    """The command-line option of one setting: its flag, its type (or text, when it has a parser) and its help."""
    tp = str if flat.parse is not None else flat.type
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args and (isinstance(tp, type(int | None)) or typing.get_origin(tp) is typing.Union):
        tp = args[0]
    default = "none" if flat.default in (None, "", ()) else flat.default
    help_text = f"{flat.help} (default: {default}; params.yaml: {section}.{flat.name})"
    flag = "--" + flat.name.replace("_", "-")
    return Annotated[tp | None, typer.Option(flag, help=help_text, show_default=False)]


def configured(**settings: type) -> Callable[[Callable], Callable]:
    """Give a command one option per field of each settings class, and ``--params``.

    The command receives, under each keyword given here, an instance built by :func:`polar.config.load`: field
    defaults, then the class's section of the ``--params`` file, then the options given on the command line.
    """

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command)
        hints = typing.get_type_hints(command, include_extras=True)
        own = [p.replace(annotation=hints[p.name]) for p in signature.parameters.values() if p.name not in settings]
        taken = {p.name for p in own} | {"params"}
        owner: dict[str, str] = {}
        added = [inspect.Parameter("params", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ParamsOpt)]
        for arg, cls in settings.items():
            for flat in fields_of(cls):
                if flat.name in taken:
                    raise TypeError(f"{command.__name__}: option --{flat.name} is declared twice")
                taken.add(flat.name)
                owner[flat.name] = arg
                annotation = _option(flat, cls.SECTION)
                added.append(
                    inspect.Parameter(flat.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
                )

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            params = kwargs.pop("params")
            given = {name: kwargs.pop(name) for name in owner}
            built = {}
            try:
                for arg, cls in settings.items():
                    mine = {k: v for k, v in given.items() if owner[k] == arg and v is not None}
                    built[arg] = load(cls, params, mine)
            except (ValueError, FileNotFoundError) as err:
                fail(str(err))
            return command(**kwargs, **built)

        wrapper.__signature__ = signature.replace(parameters=own + added)
        wrapper.__annotations__ = {p.name: p.annotation for p in own + added}
        del wrapper.__wrapped__  # typer must read the new signature, not the command's
        wrapper.settings = settings  # for tests: which classes this command's options come from
        return wrapper

    return decorate


def scores_table(scores: Iterable[MethodScore], title: str) -> Table:
    """Score rows as a table: n, pass@1 with its 95% interval, the difference from base greedy with its interval,
    the exact McNemar p and layers / D."""
    from rich.markup import escape

    table = Table(title=title)
    table.add_column("method", overflow="fold", min_width=24)  # names hold [feature sets]: escaped, not markup
    for col in ("n", "pass@1", "95% CI", "vs base, pts (95% CI)", "McNemar p", "layers / D"):
        table.add_column(col, no_wrap=True)
    for s in scores:
        lo, hi = s.diff_ci95
        table.add_row(
            escape(s.method),
            str(s.inputs),
            f"{100 * s.pass1:.1f}%",
            f"{100 * s.ci95[0]:.1f}-{100 * s.ci95[1]:.1f}%",
            f"{100 * s.diff:+.1f} ({100 * lo:+.1f} to {100 * hi:+.1f})",
            f"{s.p_vs_base:.3g}",
            f"{s.layers_ratio:.3f}",
        )
    return table
