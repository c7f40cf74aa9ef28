"""Which program runs a context: one fixed program, or a registered predictor's choice per context.

lm-eval splits ``model_args`` on commas, so a program's text form (``0-4,8-29``) cannot be written there as it is:
:func:`parse_program` also takes ``+``, ``;``, ``|`` or spaces between the items (``0-4+8-29``), the compact form
(``keep(0-3) skip(4-7) ...``), or a file (``program_file=``).

A predictor is chosen per context, as the served model chooses per question (:mod:`polar.serving`): every request
with the same context (every choice of a multiple-choice question, every window of a rolling document) runs under
the program :func:`load_choice`'s ``choose_program`` returns for it. That one function is where the registry's
served format is read: a fixed program, a program per level or the predictor network would each change only it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from polar.programs import Program, ProgramError

__all__ = ["ProgramChoice", "base_model_of", "load_choice", "parse_program", "predictor_folder", "read_program_file"]

ProgramChoice = Callable[[str], Program]  # context text -> the program to run it under

_SEPARATORS = re.compile(r"\s*[+;|]\s*|\s+")


def parse_program(value: str | int | list | tuple, depth: int) -> Program:
    """A ``program=`` value as a program checked against a ``depth``-layer model.

    Args:
        value: text form with commas (``0-4,8-29``, from Python), a comma-free spelling (``0-4+8-29``, ``0-4;8-29``,
            ``"0-4 8-29"``), the compact form, ``full``, a list of indices, or one index (lm-eval turns ``5`` into 5).

    Raises:
        ProgramError: the value is no program, or does not fit the model.
    """
    if isinstance(value, list | tuple):
        return Program(tuple(value)).validate(depth, max_visits=None)
    text = str(value).strip()
    if text == "full":
        return Program.identity(depth)
    if "(" not in text:
        body = text[1:-1] if text.startswith("[") and text.endswith("]") else text
        text = ",".join(part for part in _SEPARATORS.split(body) if part)
    try:
        program = Program.parse_any(text)
    except ProgramError as err:
        raise ProgramError(
            f"program={value!r}: {err}; in lm-eval's model_args write the items without commas, e.g. program=0-4+8-29"
        ) from err
    try:
        return program.validate(depth, max_visits=None)
    except ProgramError as err:
        raise ProgramError(f"program={value!r}: {err}") from err


def read_program_file(path: str | Path, depth: int) -> Program:
    """The one program of a file (text or compact form; ``#`` comments and blank lines ignored).

    Raises:
        FileNotFoundError: no such file.
        ProgramError: the file holds no program, or more than one (several programs are a menu: ``polar lm-eval
            --programs FILE`` evaluates each).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"program_file={path}: no such file")
    lines = [text for line in path.read_text().splitlines() if (text := line.split("#", 1)[0].strip())]
    if len(lines) != 1:
        raise ProgramError(
            f"program_file={path} holds {len(lines)} programs, not one: a list of programs is a menu, which "
            "`polar lm-eval --programs FILE` evaluates one program at a time"
        )
    return parse_program(lines[0], depth)


def predictor_folder(source: str, tracking_uri: str | None = None) -> Path:
    """The local selector folder of ``source``: a folder written by ``polar train`` or ``polar select``, or a
    registered version's ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION`` (downloaded from the MLflow registry).

    Raises:
        FileNotFoundError: the folder, or the registered model's selector files, do not exist.
    """
    from polar.predictor import CONFIG, WEIGHTS
    from polar.selection.selector import SELECTOR

    def holds(folder: Path) -> bool:
        return (folder / SELECTOR).is_file() or ((folder / WEIGHTS).is_file() and (folder / CONFIG).is_file())

    if source.startswith("models:/"):
        import mlflow

        from polar.tracking import configure

        configure(tracking_uri)
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source))
        except mlflow.exceptions.MlflowException as err:
            raise FileNotFoundError(
                f"predictor={source}: not in the registry at {mlflow.get_tracking_uri()} ({err.message})"
            ) from err
        found = sorted({p.parent for name in (SELECTOR, CONFIG) for p in local.rglob(name) if holds(p.parent)})
        if not found:
            raise FileNotFoundError(
                f"predictor={source}: the registered model holds no selector ({SELECTOR}) or predictor"
            )
        return found[0]
    folder = Path(source)
    if not holds(folder):
        raise FileNotFoundError(
            f"predictor={source}: not a selector folder ({SELECTOR} from `polar select`), a predictor folder ({WEIGHTS} "
            f"and {CONFIG} from `polar train`) nor a models:/NAME@ALIAS URI"
        )
    return folder


def load_choice(folder: str | Path, backbone) -> ProgramChoice:
    """The program choice of the selector (or predictor) in ``folder`` for contexts run on ``backbone``: what the
    registered model serves (:class:`polar.selection.selector.Selector`): a fixed program, a program per level (a
    harness context has no level: the full depth), or the network's top program for the context.

    Args:
        folder: a selector or predictor folder (:func:`predictor_folder`).
        backbone: the loaded base model (:class:`polar.backbone.Backbone`); it must have the selector's depth.

    Returns:
        ``choose_program(context) -> Program`` (cached per text).

    Raises:
        ValueError: the selector was made for a model of another depth.
    """
    from polar.selection.selector import Selector

    selector = Selector.load(folder, backbone=backbone)
    if selector.spec.depth != backbone.depth:
        raise ValueError(
            f"predictor {folder} emits programs for {selector.spec.depth} layers, but {backbone.spec} has "
            f"{backbone.depth}: give the base model it was made for (model=, default: its recorded base_model)"
        )

    @lru_cache(maxsize=65536)
    def choose_program(context: str) -> Program:
        return selector.choose([context], [None])[0]

    return choose_program


def base_model_of(folder: str | Path) -> str:
    """The base model a selector or predictor folder records (``meta.base_model``)."""
    from polar.selection.selector import artifact_meta

    _, meta = artifact_meta(folder)
    if not meta.get("base_model"):
        raise ValueError(f"{folder} records no base_model: give model= with the predictor")
    return meta["base_model"]
