"""Where the pipeline's stages write, per base model: the one copy of dvc.yaml's layout (a test holds them equal).

The pipeline summary, its MLflow run and the registry read the stages' outputs through :class:`Outputs`;
``dvc.yaml`` spells the same paths with ``${key}`` for the model (``tests/test_settings.py`` checks them).

A stage's code dependencies are computed, not kept by hand: :func:`code_deps` reads the imports of a ``polar``
sub-command with :mod:`ast` (nothing is imported) and :func:`missing_code_deps` says which of them a dvc.yaml
stage does not list (``tests/test_dvc_deps.py`` runs it on every stage).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = [
    "NOT_OUTPUT_CODE",
    "READ_AS_FILES",
    "SOURCE_PACKAGES",
    "TASKS",
    "Outputs",
    "code_deps",
    "missing_code_deps",
    "stage_commands",
]

TASKS = Path("data/tasks")  # the ingest stage: train, validation, test and shots Parquet files, manifest.json


@dataclass(frozen=True)
class Outputs:
    """The files of one base model's chain, under the project ``root``."""

    root: Path
    model: str

    @property
    def weights(self) -> Path:  # convert
        return self.root / "models" / self.model

    @property
    def labels(self) -> Path:  # label: labels.jsonl, settings.json, manifest.json
        return self.root / "data" / "labels" / self.model

    @property
    def validation(self) -> Path:  # validate: validation.json (the gate's summary), validation.html, gx/
        return self.root / "reports" / self.model / "validation" / "validation.json"

    @property
    def accepted(self) -> Path:  # validate: the distributions of the last accepted labels
        return self.root / "data" / "accepted" / f"{self.model}.json"

    @property
    def predictor(self) -> Path:  # train
        return self.root / "models" / "predictors" / self.model

    @property
    def evaluation(self) -> Path:  # evaluate: metrics.json, results.jsonl, report.md, the plot, timings.json
        return self.root / "reports" / self.model / "evaluation"

    @property
    def registry(self) -> Path:  # register: the version and the promotion decision
        return self.root / "reports" / self.model / "registry.json"

    # The menu chain (the default): its own paths, so both chains can live in one dvc.yaml.
    @property
    def discovery(self) -> Path:  # menu: the discovery search's label folder
        return self.root / "data" / "discovery" / self.model

    @property
    def menus(self) -> Path:  # menu: menu.txt; label-<split>: one menu folder per split
        return self.root / "data" / "menus" / self.model

    @property
    def menu_file(self) -> Path:
        return self.menus / "menu.txt"

    @property
    def study(self) -> Path:  # the menu chain's reports: validation/, selection/, evaluation/, registry.json
        return self.root / "reports" / self.model / "menu"

    @property
    def menu_validation(self) -> Path:  # validate-menu: the gate's summary
        return self.study / "validation" / "validation.json"

    @property
    def menu_accepted(self) -> Path:  # validate-menu: the distributions of the last accepted matrices
        return self.root / "data" / "accepted" / f"{self.model}-menu.json"

    @property
    def selection(self) -> Path:  # select: frozen.json, test.json, choices.parquet
        return self.study / "selection"

    @property
    def selectors(self) -> Path:  # select: the servable selectors (baseline/, accuracy/, efficiency/)
        return self.root / "models" / "selectors" / self.model

    @property
    def study_evaluation(self) -> Path:  # evaluate-menu: metrics.json, versions/, report.md, the plot
        return self.study / "evaluation"

    @property
    def study_registry(self) -> Path:  # register-menu: the champion and every version registered
        return self.study / "registry.json"

    def stage_outputs(self) -> dict[str, list[Path]]:
        """What each per-model stage of dvc.yaml declares as its outputs (outs, metrics and plots)."""
        ev = self.evaluation
        return {
            "convert": [self.weights],
            "label": [self.labels],
            "validate": [self.validation, self.accepted],
            "train": [self.predictor],
            "evaluate": [ev / "results.jsonl", ev / "report.md", ev / "metrics.json", ev / "accuracy_vs_layers.png"],
            "register": [self.registry],
            "menu": [self.discovery, self.menu_file],
            **{f"label-{split}": [self.menus / split] for split in ("train", "validation", "test")},
            "validate-menu": [self.menu_validation, self.menu_accepted],
            "select": [self.selection, self.selectors],
            "evaluate-menu": [
                self.study_evaluation / name
                for name in ("versions", "report.md", "metrics.json", "accuracy_vs_layers.png")
            ],
            "register-menu": [self.study_registry],
        }


# --- code dependencies of the stages -------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]  # the checkout that holds polar/, flows/ and dvc.yaml
SOURCE_PACKAGES = ("polar", "flows")  # our own code; every other import is a pinned third-party release

# Code a command reaches that decides where or how visibly its work runs, never what it writes: no stage
# depends on it (a change there must not re-run labeling). A folder excludes everything under it; the imports
# of an excluded module are not followed either.
NOT_OUTPUT_CODE: dict[str, str] = {
    "polar/cli/__init__.py": "assembles the command groups for `polar`; each command's own module is its start",
    "flows/api.py": "`label --pool` asks whether Prefect answers: where labeling runs, not what it labels",
    "flows/labeling.py": "`label --pool` sends shards to a work pool; they run the labeling code `polar label` runs",
    "polar/stack": "the team's servers (database, object store): where runs are tracked and stored",
    "polar/servers.py": "probes that a tracking or Prefect server answers before a run talks to it",
}

# Files a module uses by path, not by import, so that ast cannot see them: reaching the module reaches them.
READ_AS_FILES: dict[str, tuple[str, ...]] = {
    "polar/registry.py": ("polar/serving.py",),  # the "models from code" pyfunc script logged with every version
}


def _is_type_checking(node: ast.AST) -> bool:
    """True for the test of ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``), whose body never runs."""
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(nodes: Iterable[ast.AST], into_functions: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements in and under ``nodes`` that can run; in function bodies too if ``into_functions``."""
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) and not into_functions:
            continue
        elif _is_type_checking(node):
            yield from _import_nodes(node.orelse, into_functions)  # the `else:` of `if TYPE_CHECKING:` does run
        else:
            yield from _import_nodes(ast.iter_child_nodes(node), into_functions)


def _imported(
    nodes: Iterable[ast.Import | ast.ImportFrom], module: str, is_package: bool
) -> list[tuple[str, tuple[str, ...]]]:
    """What the statements import: each module with the names taken from it.

    Args:
        nodes: import statements found in ``module``.
        module: the dotted name of the module that holds them (to resolve relative imports).
        is_package: whether ``module`` is a package's ``__init__.py``.

    Returns:
        ``(module, names)`` pairs: ``from M import x, y`` gives ``(M, ("x", "y"))``, each name a submodule of
        ``M`` or a name defined in it; ``import M`` and ``from M import *`` give ``(M, ("*",))``: any name.
    """
    found: list[tuple[str, tuple[str, ...]]] = []
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in nodes:
        if isinstance(node, ast.Import):
            found.extend((alias.name, ("*",)) for alias in node.names)
            continue
        if node.level:  # relative: `from . import x`, `from ..tasks import y`
            base = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
        else:
            base = node.module.split(".") if node.module else []
        if base:
            found.append((".".join(base), tuple(alias.name for alias in node.names)))
    return found


def _serves_names_lazily(tree: ast.Module) -> bool:
    """Whether a package's ``__init__`` defines a module-level ``__getattr__`` (PEP 562): any name it serves may
    load any of its submodules, e.g. through ``importlib.import_module``, which ast cannot follow."""
    return any(isinstance(node, ast.FunctionDef) and node.name == "__getattr__" for node in tree.body)


def _submodules(root: Path, package: str) -> list[str]:
    """The modules and subpackages directly inside a package's folder."""
    folder = root.joinpath(*package.split("."))
    names = [p.stem for p in folder.glob("*.py") if p.name != "__init__.py"]
    names += [p.name for p in folder.iterdir() if p.is_dir() and any(p.glob("*.py"))]
    return sorted(f"{package}.{name}" for name in names)


def _module_file(root: Path, name: str) -> Path | None:
    """The source file of one of our modules (``polar.tasks`` -> polar/tasks/__init__.py), or None."""
    parts = name.split(".")
    if parts[0] not in SOURCE_PACKAGES:
        return None
    for path in (root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")):
        if path.is_file():
            return path
    return None


def _excluded(relpath: str) -> bool:
    return any(relpath == skip or relpath.startswith(skip.rstrip("/") + "/") for skip in NOT_OUTPUT_CODE)


def _commands(root: Path) -> dict[str, tuple[Path, ast.Module, ast.FunctionDef]]:
    """Every ``@app.command(...)`` of polar/cli/*.py by its command name, with its module file and tree."""
    found: dict[str, tuple[Path, ast.Module, ast.FunctionDef]] = {}
    for path in sorted((root / "polar" / "cli").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for deco in node.decorator_list:  # @app.command() or @app.command(name="label") / ("label")
                func = deco.func if isinstance(deco, ast.Call) else None
                if not (isinstance(func, ast.Attribute) and func.attr == "command"):
                    continue
                if not (isinstance(func.value, ast.Name) and func.value.id == "app"):
                    continue
                given = [*deco.args[:1], *(k.value for k in deco.keywords if k.arg == "name")]
                named = [g.value for g in given if isinstance(g, ast.Constant) and isinstance(g.value, str)]
                found[named[0] if named else node.name.replace("_", "-")] = (path, tree, node)
    return found


def _called_functions(tree: ast.Module, function: ast.FunctionDef) -> list[ast.FunctionDef]:
    """``function`` and the module-level functions of ``tree`` it calls, directly or through each other."""
    defined = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    found, todo = {function.name: function}, [function]
    while todo:
        for node in ast.walk(todo.pop()):
            name = node.func.id if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) else None
            if name in defined and name not in found:
                found[name] = defined[name]
                todo.append(defined[name])
    return list(found.values())


def code_deps(command: str, root: Path | None = None) -> list[str]:
    """The source files of polar/ and flows/ that ``polar COMMAND`` runs, found by reading imports with ``ast``.

    The start is the command's function in polar/cli/: the imports in its body and its module's top-level ones.
    From there every import anywhere in a reached module counts (lazy imports inside functions too), and so does
    the ``__init__.py`` of every package on the way. ``if TYPE_CHECKING:`` blocks never run and do not count;
    :data:`NOT_OUTPUT_CODE` is left out, with its reasons, and :data:`READ_AS_FILES` is added.

    Args:
        command: a sub-command of ``polar``, e.g. ``label``.
        root: the checkout to read (default: the one holding this file).

    Returns:
        Paths relative to ``root``, POSIX style, sorted.

    Raises:
        ValueError: ``command`` is no ``@app.command`` of polar/cli/, or code it reaches imports a module of
            polar/ or flows/ that does not exist.
    """
    root = ROOT if root is None else root
    commands = _commands(root)
    if command not in commands:
        raise ValueError(
            f"polar {command}: no such command in {root / 'polar' / 'cli'} (found: {', '.join(sorted(commands))}); "
            "a stage's cmd must name a command decorated with @app.command"
        )
    path, tree, function = commands[command]
    start = ".".join(path.relative_to(root).with_suffix("").parts)
    todo: dict[str, str] = {start: path.relative_to(root).as_posix()}  # module -> a file importing it (for errors)
    maybe: dict[str, str] = {}  # `from M import x`: M.x, a submodule or a name in M, looked at once todo is empty
    seen: set[str] = set()
    lazy: set[str] = set()  # packages that serve their names on demand
    files: set[str] = set()

    def imports(nodes: Iterable[ast.Import | ast.ImportFrom], name: str, source: Path) -> None:
        where = source.relative_to(root).as_posix()
        for module, names in _imported(nodes, name, source.name == "__init__.py"):
            todo.setdefault(module, where)
            maybe.update({f"{module}.{x}": where for x in names})

    # The command's module runs its top level and, of its functions, the command's own and those it calls.
    imports(_import_nodes(tree.body, into_functions=False), start, path)
    for called in _called_functions(tree, function):
        imports(_import_nodes(called.body, into_functions=True), start, path)
    while todo or maybe:
        if not todo:
            name, importer = maybe.popitem()
            module = name.rpartition(".")[0]
            if _module_file(root, name) or root.joinpath(*name.split(".")).is_dir():
                todo[name] = importer
            elif module in lazy:  # a name served on demand: it may come from any submodule
                todo.update({sub: importer for sub in _submodules(root, module) if sub not in seen})
            continue  # otherwise a name defined in the module
        name, importer = todo.popitem()
        if name in seen:
            continue
        seen.add(name)
        source = _module_file(root, name)
        if source is None:
            if name.split(".")[0] in SOURCE_PACKAGES and not root.joinpath(*name.split(".")).is_dir():
                raise ValueError(
                    f"{importer} imports {name}, which is no module of {'/ or '.join(SOURCE_PACKAGES)}/: fix the "
                    f"import (`polar {command}` would fail where it runs)"
                )
            continue  # a third-party module, or a namespace package (a folder without __init__.py)
        relpath = source.relative_to(root).as_posix()
        if _excluded(relpath):
            continue
        files.add(relpath)
        files.update(READ_AS_FILES.get(relpath, ()))
        parts = name.split(".")
        todo.update({".".join(parts[:i]): relpath for i in range(1, len(parts))})  # a.b.c runs a and a.b first
        module_tree = tree if name == start else ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
        if name != start:
            imports(_import_nodes(module_tree.body, into_functions=True), name, source)
        if source.name == "__init__.py" and _serves_names_lazily(module_tree):
            lazy.add(name)
    return sorted(files)


def stage_commands(cmd: str | list[str]) -> list[str]:
    """The ``polar`` sub-commands a dvc.yaml stage's ``cmd`` runs (``polar label --out ...`` -> ``["label"]``).

    Args:
        cmd: the stage's ``cmd``: one command line, or a list of them.

    Returns:
        One name per line that starts with ``polar``; empty when none does.
    """
    lines = [cmd] if isinstance(cmd, str) else list(cmd)
    words = [str(line).split() for line in lines]
    return [w[1] for w in words if len(w) > 1 and w[0] == "polar"]


def _dep_path(dep: Any) -> PurePosixPath:
    """A dvc.yaml dep as a path: a plain string, or the key of ``{path: {options}}``."""
    path = next(iter(dep)) if isinstance(dep, Mapping) else dep
    return PurePosixPath(str(path).rstrip("/"))


def missing_code_deps(stage: Mapping[str, Any], root: Path | None = None) -> list[str]:
    """The files of :func:`code_deps` that a dvc.yaml stage's ``deps`` do not cover (a listed folder covers its files).

    Args:
        stage: one stage of dvc.yaml (for a ``foreach`` stage, its ``do:`` body): ``cmd`` and ``deps``.
        root: the checkout to read (default: the one holding this file).

    Returns:
        Missing paths, sorted; empty when every file is covered.

    Raises:
        ValueError: the stage's ``cmd`` runs no ``polar <command>``, or names no command (see :func:`code_deps`).
    """
    commands = stage_commands(stage.get("cmd", ""))
    if not commands:
        raise ValueError(f"stage cmd {stage.get('cmd')!r} runs no `polar <command>`: its code deps are not traced")
    listed = [_dep_path(dep) for dep in stage.get("deps") or []]
    needed = sorted({path for command in commands for path in code_deps(command, root)})
    return [
        path
        for path in needed
        if not any(dep == PurePosixPath(path) or dep in PurePosixPath(path).parents for dep in listed)
    ]


def _grouped(files: set[str], root: Path) -> list[str]:
    """``files`` with each package folder whose every source file is among them written as the folder."""
    out = set(files)
    for folder in sorted({PurePosixPath(f).parent.as_posix() for f in files}):
        if folder in SOURCE_PACKAGES or not (root / folder / "__init__.py").exists():
            continue
        members = {p.relative_to(root).as_posix() for p in (root / folder).glob("*.py")}
        if members <= files:
            out = {f for f in out if PurePosixPath(f).parent.as_posix() != folder} | {folder}
    return sorted(out)


def write_code_deps(dvc_yaml: Path | None = None, root: Path | None = None) -> list[str]:
    """Rewrite the code deps of every ``polar`` stage of ``dvc_yaml`` as :func:`code_deps` of its command, in place
    of the ``polar/`` and ``flows/`` entries it lists (other deps, comments and order kept). ``python -m
    polar.layout`` runs it; returns the stages whose list changed."""
    import re

    import yaml

    root = ROOT if root is None else root
    path = dvc_yaml or root / "dvc.yaml"
    text = path.read_text()
    stages = yaml.safe_load(text)["stages"]
    entry = re.compile(r"^(\s+)- (?:polar|flows)(?:/\S*)?\s*(?:#.*)?$")
    out: list[str] = []
    changed: set[str] = set()
    current, in_deps, written = None, False, False
    for line in text.splitlines(keepends=True):
        if (m := re.match(r"^  ([\w-]+):\s*$", line)) and m.group(1) in stages:
            current, in_deps = m.group(1), False
        elif re.match(r"^\s+deps:\s*$", line):
            in_deps, written = True, False
        elif in_deps and re.match(r"^\s+\w+:", line):
            in_deps = False
        if not (in_deps and (m := entry.match(line))):
            out.append(line)
            continue
        body = stages[current].get("do", stages[current])
        if not written:
            files = {f for command in stage_commands(body["cmd"]) for f in code_deps(command, root)}
            lines = [f"{m.group(1)}- {f}\n" for f in _grouped(files, root)]
            listed = [d for d in body.get("deps", []) if str(d).split("/")[0] in SOURCE_PACKAGES]
            changed |= {current} if sorted(listed) != [ln.strip()[2:] for ln in lines] else set()
            out.extend(lines)
            written = True
    path.write_text("".join(out))
    return sorted(changed)


if __name__ == "__main__":  # python -m polar.layout: regenerate dvc.yaml's code deps
    print("\n".join(f"updated {name}" for name in write_code_deps()) or "dvc.yaml's code deps are up to date")
