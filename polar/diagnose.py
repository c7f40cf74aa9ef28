"""The diagnosis report: what search finds, per level and search space (the paper's diagnosis).

Input: a folder with one label folder per search space (``skip/``, ``loop/``, ``joint/``, each with a
``labels.jsonl`` from ``polar label``). Output: ``report.md`` with the tables and PNG plots beside it.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from polar.labeling.folder import SETTINGS, LabelRecord, read_labels, read_settings, read_timings  # noqa: E402
from polar.programs import CompactProgram, Op, Program  # noqa: E402
from polar.settings import SPACES  # noqa: E402

__all__ = ["diagnose", "load_labels"]


def load_labels(folder: Path) -> list[LabelRecord]:
    """The records of one search space's label folder.

    Args:
        folder: the label folder (its name is the search space, e.g. ``joint``).

    Returns:
        its ``labels.jsonl`` records, in input order.

    Raises:
        FileNotFoundError: the folder holds no ``labels.jsonl`` (the message says how to make it).
    """
    path = folder / "labels.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `polar label --space {folder.name} --out {folder}` first")
    return read_labels(path)


def _pct(num: int, den: int) -> str:
    return f"{100 * num / den:.0f}% ({num}/{den})" if den else "n/a"


def _edited_segments(record: LabelRecord) -> list[tuple[str, int]]:
    """(op, length) of the skip and repeat segments in the compact form of the shortest valid program."""
    if not record.compact:
        return []
    compact = CompactProgram.parse(record.compact)
    return [(s.op.value, s.length) for s in compact.segments if s.op is not Op.KEEP]


@dataclass(frozen=True)
class Labels:
    """The label folders of one diagnosis, as read from disk."""

    root: Path  # the folder holding skip/, loop/ and joint/
    runs: dict[str, list[LabelRecord]]  # search space -> its records, in SPACES order
    settings: dict[str, dict]  # search space -> its settings.json, for the folders that have one
    seconds: float  # labeling time over all spaces, summed per input from their timings.jsonl

    @property
    def joint(self) -> list[LabelRecord]:
        return self.runs["joint"]


def diagnose(labels_dir: str | Path, out_dir: str | Path, command: str | None = None) -> Path:
    """Write ``report.md`` and its plots for the labels under ``labels_dir``.

    Args:
        labels_dir: the folder with one label folder per search space (``joint/`` at least).
        out_dir: the report's folder (made when missing).
        command: the command line that made the report, added to its "Reproduce" steps.

    Returns:
        the report's path.
    """
    labels = _load(Path(labels_dir))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    joint, depth = labels.joint, labels.joint[0].depth
    levels = sorted({r.level for r in joint}, key=lambda x: (len(x), x))
    sections = [
        _header(labels, levels),
        _oracle_section(labels.runs, levels, out_dir),
        _corrections_section(joint, depth),
        _segments_section(joint, out_dir),
        _edits_section(joint, levels, depth, out_dir),
        _reproduce_section(labels, command),
    ]
    return _write(out_dir, sections)


# -------------------------------------------------------------------------------------- load, write
def _load(labels_dir: Path) -> Labels:
    """Read the records, settings and timings of every search space under ``labels_dir``.

    Raises:
        FileNotFoundError: there is no ``joint/`` folder, or one holds no ``labels.jsonl``.
    """
    runs = {space: load_labels(labels_dir / space) for space in SPACES if (labels_dir / space).exists()}
    if "joint" not in runs:
        raise FileNotFoundError(f"{labels_dir / 'joint'} not found: the diagnosis needs at least the joint search")
    settings = {s: read_settings(labels_dir / s) for s in runs if (labels_dir / s / SETTINGS).exists()}
    seconds = sum(sum(read_timings(labels_dir / space).values()) for space in runs)
    return Labels(labels_dir, runs, settings, seconds)


def _write(out_dir: Path, sections: list[list[str]]) -> Path:
    """Write ``report.md``: the non-empty ``sections``, one blank line apart."""
    lines: list[str] = []
    for section in filter(None, sections):
        if lines:
            lines.append("")
        lines += section
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


# ----------------------------------------------------------------------------------------- sections
def _header(labels: Labels, levels: list[str]) -> list[str]:
    """The title and what was searched: spaces, inputs, prompt, simulations and search time."""
    joint = labels.joint
    sims = sorted({v["config"]["search"]["simulations"] for v in labels.settings.values()})
    evaluations = sum(r.evaluations for recs in labels.runs.values() for r in recs)
    return [
        f"# Diagnosis: {joint[0].model} ({joint[0].depth} layers)",
        "",
        f"Search spaces: {', '.join(labels.runs)}; {len(joint)} inputs ({len(joint) // max(1, len(levels))} per "
        f"level); prompt `{joint[0].prompt}`; {'/'.join(map(str, sims)) or '?'} simulations per input "
        f"(the reference uses 100). Search time: {labels.seconds / 60:.1f} min for {evaluations} program "
        "evaluations over all spaces (summed per input, from the label folders' timings.jsonl).",
    ]


def _oracle_section(runs: dict[str, list[LabelRecord]], levels: list[str], out_dir: Path) -> list[str]:
    """1. Oracle accuracy per level: an input counts when search found at least one valid program."""
    table = [
        "| level | inputs | base | " + " | ".join(f"{s} oracle" for s in runs) + " |",
        "|---|---|---|" + "---|" * len(runs),
    ]
    acc: dict[str, list[float]] = defaultdict(list)
    for level in [*levels, "all"]:
        rows = {s: [r for r in recs if level in ("all", r.level)] for s, recs in runs.items()}
        n = len(rows["joint"])
        base = sum(r.base_correct for r in rows["joint"])
        cells = [_pct(sum(bool(r.valid) for r in rows[s]), len(rows[s])) for s in runs]
        table.append(f"| {level} | {n} | {_pct(base, n)} | " + " | ".join(cells) + " |")
        if level != "all":
            acc["base"].append(base / n)
            for s in runs:
                acc[s].append(sum(bool(r.valid) for r in rows[s]) / max(1, len(rows[s])))
    _plot_accuracy(acc, levels, out_dir / "oracle_accuracy.png")
    return [
        "## Oracle accuracy per level",
        "",
        "An input counts for a search space when search found at least one program whose greedy answer is "
        "correct (run alone). Base is the full-depth model.",
        "",
        *table,
        "",
        "![oracle accuracy](oracle_accuracy.png)",
    ]


def _corrections_section(joint: list[LabelRecord], depth: int) -> list[str]:
    """2-3. Shorter programs for correct inputs; corrections of wrong ones (joint search)."""
    correct = [r for r in joint if r.base_correct]
    wrong = [r for r in joint if not r.base_correct]
    shorter = sum(1 for r in correct if r.shortest_length is not None and r.shortest_length < depth)
    fixed = [r for r in wrong if r.valid]
    fixed_shorter = sum(1 for r in fixed if r.shortest_length < depth)
    lengths = [r.shortest_length for r in joint if r.shortest_length]
    return [
        "## Shorter programs and corrections (joint search)",
        "",
        f"- Already-correct inputs with a strictly shorter valid program: {_pct(shorter, len(correct))}.",
        f"- Wrong inputs corrected by some program: {_pct(len(fixed), len(wrong))}; "
        f"by a program shorter than full depth: {_pct(fixed_shorter, len(wrong))}.",
        f"- Shortest valid program length: mean {np.mean(lengths):.1f} of {depth} layers"
        if lengths
        else "- No valid program found.",
    ]


def _segments_section(joint: list[LabelRecord], out_dir: Path) -> list[str]:
    """4. Edited segment lengths, per op."""
    segs = Counter(seg for r in joint for seg in _edited_segments(r))
    _plot_segments(segs, out_dir / "segment_lengths.png")
    return [
        "## Edited segments",
        "",
        "Lengths of the skip and repeat segments in the canonical compact form of each input's shortest valid "
        "program (joint search).",
        "",
        "| op | " + " | ".join(str(k) for k in range(1, 5)) + " |",
        "|---|---|---|---|---|",
        *[f"| {op} | " + " | ".join(str(segs[(op, k)]) for k in range(1, 5)) + " |" for op in ("skip", "repeat")],
        "",
        "![segment lengths](segment_lengths.png)",
    ]


def _edits_section(joint: list[LabelRecord], levels: list[str], depth: int, out_dir: Path) -> list[str]:
    """5. Which layers are skipped / looped, per level (shortest valid program, joint search)."""
    skip_map = np.zeros((len(levels), depth))  # (levels, D): share of the level's inputs that skip the layer
    loop_map = np.zeros((len(levels), depth))  # (levels, D): ... that run it more than once
    for i, level in enumerate(levels):
        rows = [r for r in joint if r.level == level and r.shortest]
        for r in rows:
            visits = Program.parse(r.shortest).visits()
            for layer in range(depth):
                skip_map[i, layer] += visits.get(layer, 0) == 0
                loop_map[i, layer] += visits.get(layer, 0) > 1
        if rows:
            skip_map[i] /= len(rows)
            loop_map[i] /= len(rows)
    _plot_heatmaps(skip_map, loop_map, levels, out_dir / "layer_heatmap.png")
    return [
        "## Where the edits are",
        "",
        "Share of inputs (per level, shortest valid program, joint search) that skip or loop each layer.",
        "",
        "![layer heat map](layer_heatmap.png)",
    ]


def _reproduce_section(labels: Labels, command: str | None) -> list[str]:
    """The commands that made the labels (and the report), or nothing when none is known."""
    steps = []
    for space, st in labels.settings.items():
        manifest = Path(st["tasks"]).with_name(Path(st["tasks"]).stem + ".manifest.json")
        if not steps and manifest.exists():
            steps.append(f"# tasks: {st['tasks']} ({json.loads(manifest.read_text())['source']}, from polar ingest)")
        search = st["config"]["search"]
        steps.append(
            f"polar label --model {st['model']} --tasks {st['tasks']} --space {space} "
            f"--simulations {search['simulations']} --out {labels.root / space}"
        )
    if command:
        steps.append(command.strip())
    return ["## Reproduce", "", "```bash", *steps, "```"] if steps else []


# -------------------------------------------------------------------------------------------- plots
def _plot_accuracy(acc: dict[str, list[float]], levels: list[str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in acc.items():
        ax.plot(levels, [100 * v for v in values], marker="o", label=name)
    ax.set_xlabel("level")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.set_title("Base accuracy and search oracle per level")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_segments(segs: Counter, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    x = np.arange(1, 5)
    for offset, op in ((-0.2, "skip"), (0.2, "repeat")):
        ax.bar(x + offset, [segs[(op, k)] for k in x], width=0.4, label=op)
    ax.set_xticks(x)
    ax.set_xlabel("segment length (layers)")
    ax.set_ylabel("segments")
    ax.legend()
    ax.set_title("Edited segments in shortest valid programs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_heatmaps(skip_map: np.ndarray, loop_map: np.ndarray, levels: list[str], path: Path) -> None:
    fig, axes = plt.subplots(2, 1, figsize=(8, 4.5), sharex=True)
    for ax, data, title, cmap in ((axes[0], skip_map, "skipped", "Blues"), (axes[1], loop_map, "looped", "Oranges")):
        im = ax.imshow(data, aspect="auto", cmap=cmap, vmin=0, vmax=max(0.01, float(data.max())))
        ax.set_yticks(range(len(levels)), labels=levels)
        ax.set_ylabel("level")
        ax.set_title(f"share of inputs whose shortest valid program {title} the layer")
        fig.colorbar(im, ax=ax)
    axes[1].set_xlabel("layer")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
