"""`polar stack up|down|status|env`: the team stack (PostgreSQL, SeaweedFS, Prefect and MLflow servers)."""

from __future__ import annotations

import shlex
from typing import Annotated

import typer
from rich.table import Table

from polar.cli.options import app, console, err_console, fail

stack_app = typer.Typer(
    help="The team stack: PostgreSQL behind Prefect and MLflow servers, and an S3 object store (MLflow artifacts, "
    "DVC remote). Data in one folder (--dir, $POLAR_STACK_DIR, default ./stack).",
    no_args_is_help=True,
)
app.add_typer(stack_app, name="stack")

DirOpt = Annotated[
    str | None, typer.Option("--dir", help="The stack's folder (default: $POLAR_STACK_DIR, else ./stack).")
]


def _port(service: str, default: int):
    return Annotated[
        int | None,
        typer.Option(
            f"--{service}-port",
            help=f"{service} port, fixed at the first `up` (default {default}).",
            show_default=False,
        ),
    ]


@stack_app.command(name="up")
def up_cmd(
    dir: DirOpt = None,  # noqa: A002 - the option users type
    host: Annotated[
        str | None,
        typer.Option(
            help="Address the servers bind to, fixed at the first `up` (default 127.0.0.1; 0.0.0.0 serves "
            "other machines, which then need the credentials)."
        ),
    ] = None,
    postgres_port: _port("postgres", 5432) = None,
    s3_port: _port("s3", 8333) = None,
    prefect_port: _port("prefect", 4200) = None,
    mlflow_port: _port("mlflow", 5000) = None,
) -> None:
    """Start the stack (the first time: create its databases, bucket and credentials) and wait until it answers.

    Services already running are left as they are; the data survives `polar stack down` and a restart.
    """
    from polar.stack import load_stack, up

    ports = {"postgres": postgres_port, "s3": s3_port, "prefect": prefect_port, "mlflow": mlflow_port}
    try:
        stack = load_stack(dir, host, ports, create=True)
        states = up(stack, progress=lambda line: err_console.print(f"polar stack: {line}", highlight=False))
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as err:
        fail(str(err))
    _print(states)
    console.print(
        f'\nUse it here or on another machine: eval "$(polar stack env --dir {shlex.quote(str(stack.root))})"',
        soft_wrap=True,
        highlight=False,
    )


@stack_app.command(name="down")
def down_cmd(dir: DirOpt = None) -> None:  # noqa: A002
    """Stop the stack's servers; their data stays in the stack's folder for the next `up`."""
    from polar.stack import down, load_stack

    try:
        stack = load_stack(dir)
        down(stack, progress=lambda line: err_console.print(f"polar stack: {line}", highlight=False))
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as err:
        fail(str(err))
    console.print(f"stack stopped; its data stays in {stack.root}", highlight=False, soft_wrap=True)


@stack_app.command(name="status")
def status_cmd(dir: DirOpt = None) -> None:  # noqa: A002
    """Each server's URL, process and whether it answers; exit 1 unless all answer."""
    from polar.stack import health, load_stack

    try:
        states = health(load_stack(dir))
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    _print(states)
    if not all(s.ok for s in states):
        raise typer.Exit(1)


@stack_app.command(name="env")
def env_cmd(dir: DirOpt = None) -> None:  # noqa: A002
    """Print the exports that point polar, Prefect, MLflow and DVC at the stack: eval "$(polar stack env)".

    PREFECT_API_URL, MLFLOW_TRACKING_URI, the object store (POLAR_STORE_URL, AWS_ENDPOINT_URL_S3) and its key pair.
    """
    from polar.stack import load_stack

    try:
        variables = load_stack(dir).client_env()
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    for key, value in variables.items():
        print(f"export {key}={shlex.quote(value)}")


def _print(states) -> None:
    table = Table(title="polar stack")
    for col in ("service", "url", "pid", "state"):
        table.add_column(col)
    for s in states:
        state = "[green]up[/]" if s.ok else f"[red]down[/] ({s.detail})"
        table.add_row(s.service, s.url, str(s.pid or "-"), state)
    console.print(table)
