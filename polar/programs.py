"""Programs of layers: which frozen decoder layers run, in which order.

A :class:`Program` is an immutable sequence of layer indices over a model of depth ``D``. Its text form
is a comma-separated list of indices and inclusive ranges: ``0-7,6-7,8-29`` runs layers 0..7, then 6
and 7 again, then 8..29. That text is the program's key everywhere (labels, logs, MLflow tags).

A :class:`CompactProgram` is the form the predictor emits: the ``D`` layers split into consecutive
segments of at most ``k_max`` layers, each with one op (skip, keep, repeat). Only some programs are
expressible that way; :meth:`CompactProgram.from_program` finds the canonical segmentation.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

__all__ = [
    "DEFAULT_K_MAX",
    "DEFAULT_MAX_VISITS",
    "CompactProgram",
    "Op",
    "Program",
    "ProgramError",
    "Segment",
]

DEFAULT_K_MAX = 4  # longest segment of the compact form (the paper's K_max)
DEFAULT_MAX_VISITS = 2  # the search never runs a layer more than twice


class ProgramError(ValueError):
    """A program that does not parse, or that does not fit the model it is meant for."""


@dataclass(frozen=True)
class Program:
    """A sequence of layer indices, e.g. ``Program((0, 1, 2, 1, 2, 3))``."""

    layers: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        if not self.layers:
            raise ProgramError("empty program: a program must run at least one layer")
        negative = [i for i in self.layers if i < 0]
        if negative:
            raise ProgramError(f"layer index {negative[0]} is negative: indices start at 0")

    # ----------------------------------------------------------------------------------------- building
    @classmethod
    def identity(cls, depth: int) -> Program:
        """The full-depth program ``0..depth-1``: the stock model."""
        if depth < 1:
            raise ProgramError(f"depth must be at least 1, got {depth}")
        return cls(tuple(range(depth)))

    @classmethod
    def parse(cls, text: str) -> Program:
        """Parse the text form: indices and inclusive ranges separated by commas (``0-7,6-7,8-29``).

        A descending range such as ``7-4`` runs the layers in that order (7, 6, 5, 4).
        """
        if not isinstance(text, str):
            raise ProgramError(f"program text must be a string, got {type(text).__name__}")
        body = text.strip()
        if body.startswith("[") and body.endswith("]"):  # accept a pasted Python/JSON list
            body = body[1:-1]
        if not body:
            raise ProgramError("empty program: give layer indices such as '0-7,6-7,8-29'")
        layers: list[int] = []
        for pos, part in enumerate(body.split(",")):
            token = part.strip()
            match = _ITEM.fullmatch(token)
            if match is None:
                raise ProgramError(
                    f"cannot parse item {pos + 1} {token!r} of program {text!r}: "
                    "expected an index like '5' or an inclusive range like '0-7'"
                )
            start, end = int(match["start"]), int(match["end"] or match["start"])
            step = 1 if end >= start else -1
            layers.extend(range(start, end + step, step))
        return cls(tuple(layers))

    @classmethod
    def parse_any(cls, text: str) -> Program:
        """Parse a program in text form (``0-7,6-7,8-29``) or compact form (``keep(0-3) repeat(4-5) ...``).

        Args:
            text: either form; a ``(`` marks the compact one.

        Returns:
            The program (not yet checked against a model: see :meth:`validate`).

        Raises:
            ProgramError: the text parses as neither form.
        """
        return CompactProgram.parse(text).to_program() if "(" in text else cls.parse(text)

    @classmethod
    def coerce(cls, value: Program | str | list[int] | tuple[int, ...]) -> Program:
        """Accept a Program, its text form or a list of indices."""
        if isinstance(value, Program):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        return cls(tuple(value))

    # ---------------------------------------------------------------------------------------- inspecting
    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, i: int) -> int:
        return self.layers[i]

    def __str__(self) -> str:
        return self.text

    @cached_property
    def text(self) -> str:
        """Canonical text form: maximal ascending runs written as ranges (``0-7,6-7,8-29``)."""
        parts: list[str] = []
        start = prev = self.layers[0]
        for i in self.layers[1:]:
            if i == prev + 1:
                prev = i
                continue
            parts.append(_run(start, prev))
            start = prev = i
        parts.append(_run(start, prev))
        return ",".join(parts)

    def visits(self) -> Counter[int]:
        """How many times each layer runs."""
        return Counter(self.layers)

    def is_identity(self, depth: int) -> bool:
        return self.layers == tuple(range(depth))

    def skipped(self, depth: int) -> list[int]:
        """Layers of the model that this program never runs."""
        seen = set(self.layers)
        return [i for i in range(depth) if i not in seen]

    def validate(self, depth: int, max_visits: int | None = DEFAULT_MAX_VISITS) -> Program:
        """Check the program against a model of ``depth`` layers; return it for chaining.

        Raises:
            ProgramError: an index outside ``[0, depth)``, or a layer run more than ``max_visits`` times.
        """
        bad = next((i for i in self.layers if i >= depth), None)
        if bad is not None:
            raise ProgramError(
                f"layer {bad} is out of range in program {self.text!r}: the model has {depth} layers (0-{depth - 1})"
            )
        if max_visits is not None:
            over = {i: n for i, n in self.visits().items() if n > max_visits}
            if over:
                i, n = min(over.items())
                raise ProgramError(
                    f"layer {i} runs {n} times in program {self.text!r}; at most {max_visits} visits per layer are "
                    "allowed (raise the limit with --max-visits)"
                )
        return self


_ITEM = re.compile(r"(?P<start>\d+)(?:\s*-\s*(?P<end>\d+))?")


def _run(start: int, end: int) -> str:
    return str(start) if start == end else f"{start}-{end}"


# ------------------------------------------------------------------------------------------ compact form
class Op(StrEnum):
    """What a segment of the compact form does with its layers."""

    SKIP = "skip"
    KEEP = "keep"
    REPEAT = "repeat"

    @property
    def times(self) -> int:
        return {Op.SKIP: 0, Op.KEEP: 1, Op.REPEAT: 2}[self]


@dataclass(frozen=True)
class Segment:
    """Layers ``start .. start+length-1`` under one op."""

    start: int
    length: int
    op: Op

    @property
    def end(self) -> int:  # exclusive
        return self.start + self.length

    def expand(self) -> tuple[int, ...]:
        return tuple(range(self.start, self.end)) * self.op.times

    def __str__(self) -> str:
        return f"{self.op.value}({_run(self.start, self.end - 1)})"


@dataclass(frozen=True)
class CompactProgram:
    """Consecutive segments covering layers ``0..depth-1``, each of at most ``k_max`` layers.

    Text form: ``keep(0-3) repeat(4-5) skip(6) keep(7-9)``.
    """

    segments: tuple[Segment, ...]
    k_max: int = DEFAULT_K_MAX

    def __post_init__(self) -> None:
        if not self.segments:
            raise ProgramError("empty compact program")
        pos = 0
        for seg in self.segments:
            if seg.start != pos:
                raise ProgramError(
                    f"segment {seg} starts at layer {seg.start}, expected {pos}: segments must be contiguous"
                )
            if not 1 <= seg.length <= self.k_max:
                raise ProgramError(f"segment {seg} has {seg.length} layers; allowed 1 to k_max={self.k_max}")
            pos = seg.end
        if all(seg.op is Op.SKIP for seg in self.segments):
            raise ProgramError("every segment is skipped: the program would run no layer")

    @property
    def depth(self) -> int:
        return self.segments[-1].end

    def to_program(self) -> Program:
        return Program(tuple(i for seg in self.segments for i in seg.expand()))

    def __str__(self) -> str:
        return " ".join(str(s) for s in self.segments)

    # ----------------------------------------------------------------------- predictor's array form
    def boundaries(self) -> list[int]:
        """z in {0,1}^D: 1 where a segment starts."""
        z = [0] * self.depth
        for seg in self.segments:
            z[seg.start] = 1
        return z

    def ops(self) -> list[Op | None]:
        """Per layer: the op of the segment that starts there, else None."""
        out: list[Op | None] = [None] * self.depth
        for seg in self.segments:
            out[seg.start] = seg.op
        return out

    @classmethod
    def from_arrays(
        cls, boundaries: list[int], ops: list[Op | str | None], k_max: int = DEFAULT_K_MAX
    ) -> CompactProgram:
        """Inverse of :meth:`boundaries` and :meth:`ops` (the first layer always starts a segment)."""
        if len(boundaries) != len(ops):
            raise ProgramError(f"{len(boundaries)} boundaries but {len(ops)} ops")
        starts = [0] + [i for i in range(1, len(boundaries)) if boundaries[i]]
        segments = []
        for a, b in zip(starts, [*starts[1:], len(boundaries)], strict=True):
            if ops[a] is None:
                raise ProgramError(f"segment starting at layer {a} has no op")
            segments.append(Segment(a, b - a, Op(ops[a])))
        return cls(tuple(segments), k_max)

    # ------------------------------------------------------------------------------------------- text
    @classmethod
    def parse(cls, text: str, k_max: int = DEFAULT_K_MAX) -> CompactProgram:
        items = text.replace(",", " ").split()
        if not items:
            raise ProgramError("empty compact program: give segments such as 'keep(0-3) repeat(4-5)'")
        segments = []
        for item in items:
            m = _SEGMENT.fullmatch(item)
            if m is None:
                raise ProgramError(
                    f"cannot parse segment {item!r}: expected op(start-end) with op skip, keep or repeat"
                )
            start, end = int(m["start"]), int(m["end"] or m["start"])
            if end < start:
                raise ProgramError(f"segment {item!r} runs backwards")
            segments.append(Segment(start, end - start + 1, Op(m["op"])))
        return cls(tuple(segments), k_max)

    # ------------------------------------------------------------------------------ canonical conversion
    @classmethod
    def from_program(cls, program: Program, depth: int, k_max: int = DEFAULT_K_MAX) -> CompactProgram:
        """The canonical compact form of ``program`` over ``depth`` layers.

        Among all segmentations whose expansion equals the program, take the one with the fewest
        segments, then the fewest skips, then the most repeats, then the longest leading segments.

        Raises:
            ProgramError: the program is not expressible (it runs layers out of order, loops a block
                longer than ``k_max``, or runs a layer more than twice).
        """
        program.validate(depth, max_visits=None)
        seq = program.layers
        n = len(seq)
        # best[i][j]: best cost of covering layers i..D-1 with program positions j..n-1. Costs are
        # tuples compared lexicographically: (segments, skips, -repeats, -lengths...), so that the
        # last key prefers long segments first.
        inf = None
        best: list[list[tuple | None]] = [[inf] * (n + 1) for _ in range(depth + 1)]
        choice: list[list[tuple[int, Op] | None]] = [[None] * (n + 1) for _ in range(depth + 1)]
        best[depth][n] = ()
        for i in range(depth - 1, -1, -1):
            for j in range(n, -1, -1):
                for length in range(1, min(k_max, depth - i) + 1):
                    block = tuple(range(i, i + length))
                    for op in Op:
                        used = length * op.times
                        if seq[j : j + used] != block * op.times:
                            continue
                        rest = best[i + length][j + used]
                        if rest is None:
                            continue
                        cost = _add_cost(rest, length, op)
                        if best[i][j] is None or cost < best[i][j]:
                            best[i][j], choice[i][j] = cost, (length, op)
        if best[0][0] is None:
            raise ProgramError(
                f"program {program.text!r} has no compact form with segments of at most {k_max} layers: "
                "only skipping, keeping or repeating (twice) consecutive blocks in order is expressible"
            )
        segments, i, j = [], 0, 0
        while i < depth:
            length, op = choice[i][j]  # type: ignore[misc]
            segments.append(Segment(i, length, op))
            i, j = i + length, j + length * op.times
        return cls(tuple(segments), k_max)


_SEGMENT = re.compile(r"(?P<op>skip|keep|repeat)\((?P<start>\d+)(?:-(?P<end>\d+))?\)")


def _add_cost(rest: tuple, length: int, op: Op) -> tuple:
    """Prepend one segment to the cost of the segmentation that follows it."""
    if not rest:
        rest = (0, 0, 0, ())
    segs, skips, neg_repeats, lengths = rest
    return (segs + 1, skips + (op is Op.SKIP), neg_repeats - (op is Op.REPEAT), (-length, *lengths))
