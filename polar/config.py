"""Settings declared once: a frozen dataclass per stage is its command-line options and its params.yaml section.

Each field is declared with :func:`setting` (default and help). The class names its section of params.yaml
(``SECTION``); a field whose type is another settings class (``LabelConfig.search``) is flattened into the same
section. :func:`load` merges, in this order, the field defaults, the section of a params file and the values
given on the command line; ``polar.cli.options.configured`` makes the options from the same fields. So a new
setting is one new field: its flag, its params.yaml key and its default cannot disagree.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, Field, field
from pathlib import Path
from typing import Any

__all__ = ["Flat", "fields_of", "load", "names", "read_section", "setting"]


def setting(default: Any = MISSING, help: str = "", *, factory: Callable[[], Any] | None = None, parse=None) -> Any:
    """A settings field: its default, the help its option shows, and how to read it from text (``parse``)."""
    metadata = {"help": help, "parse": parse}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Flat:
    """One leaf setting of a (possibly nested) settings class."""

    name: str
    type: Any  # resolved annotation
    default: Any
    help: str
    parse: Callable[[str], Any] | None
    path: tuple[str, ...]  # attribute names from the outer class down to this field


def names(text: str) -> tuple[str, ...]:
    """Names from '1-3', '1,4' or 'train,test' (ranges of numbers expand): levels on a command line."""
    out: list[str] = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        a, sep, b = item.partition("-")
        out += [str(i) for i in range(int(a), int(b) + 1)] if sep and a.isdigit() and b.isdigit() else [item]
    return tuple(out)


def _is_settings(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def fields_of(cls: type, path: tuple[str, ...] = ()) -> Iterator[Flat]:
    """The leaf settings of ``cls``, nested settings classes flattened (a name may occur once)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_settings(tp):
            yield from fields_of(tp, (*path, f.name))
            continue
        yield Flat(f.name, tp, _default(f), f.metadata.get("help", ""), f.metadata.get("parse"), (*path, f.name))


def _default(f: Field) -> Any:
    return f.default_factory() if f.default is MISSING and f.default_factory is not MISSING else f.default


def read_section(params: str | Path, section: str) -> dict:
    """The ``section`` of a params file (empty when absent)."""
    import yaml

    path = Path(params)
    if not path.exists():
        raise FileNotFoundError(f"params file not found: {path} (run from the project root, or give --params PATH)")
    data = yaml.safe_load(path.read_text()) or {}
    value = data.get(section) or {}
    if not isinstance(value, dict):
        raise ValueError(f"{path}: `{section}` must be a mapping of settings, got {type(value).__name__}")
    return value


def load(cls: type, params: str | Path | None = None, given: Mapping[str, Any] | None = None) -> Any:
    """An instance of ``cls``: field defaults, then ``cls.SECTION`` of the ``params`` file, then ``given``.

    Raises:
        ValueError: a key of the section or of ``given`` is no setting of ``cls`` (the message lists them), or a
            value does not fit its field.
    """
    flat = {f.name: f for f in fields_of(cls)}
    values: dict[str, Any] = {}
    sources = [(f"{params}: {cls.SECTION}", read_section(params, cls.SECTION))] if params else []
    sources.append(("given settings", dict(given or {})))
    for where, entries in sources:
        unknown = sorted(set(entries) - set(flat))
        if unknown:
            raise ValueError(
                f"{where}: no setting named {', '.join(unknown)}; the settings are {', '.join(sorted(flat))}"
            )
        values |= {k: _coerce(flat[k], v, where) for k, v in entries.items()}
    return _build(cls, values)


def _build(cls: type, values: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if _is_settings(hints[f.name]):
            kwargs[f.name] = _build(hints[f.name], values)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)


def _coerce(flat: Flat, value: Any, where: str) -> Any:
    """``value`` (from YAML or the command line) as the field's type."""
    if value is None:
        return None
    if isinstance(value, str) and flat.parse is not None:
        return flat.parse(value)
    base = _base(flat.type)
    try:
        if base is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if base is tuple and isinstance(value, list | tuple):
            return tuple(str(v) for v in value)
        if base in (int, str, bool) and not isinstance(value, base):
            raise TypeError
    except TypeError:
        pass
    else:
        return value
    raise ValueError(f"{where}: {flat.name} must be {getattr(base, '__name__', base)}, got {value!r}")


def _base(tp: Any) -> Any:
    """The type of a setting without ``| None`` and parameters: ``int | None`` -> int, ``tuple[str, ...]`` -> tuple."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else tp
    return typing.get_origin(tp) or tp
