"""The validate stage: great-expectations suites over label files, the gate before training.

Four tables of a search label folder are validated (:func:`validate`), each with its own suite:

* ``records`` (one row per input): schema and types, a compact form that expands back to the
  shortest program, and the share of inputs with at least one valid program above a floor;
* ``programs`` (one row per valid program): layer indices inside ``[0, D)``, lengths inside the
  search's bounds, no layer visited more than the limit;
* ``segments`` (one row per segment of the shortest programs' compact forms): the op distribution, and
  the distribution of shortest lengths over D, each within a KL-divergence bound of the last labels
  accepted for the same base model (``reference``). A passing run becomes the new reference;
* ``heldout`` (one row per validation or test question, given ``heldout`` task files): none of them may
  be a question of the training labels (compared by normalised text, :mod:`polar.tasks.splits`).

The reward matrices of a menu chain (the train, validation and test splits, each labeled with one menu by
``polar label --menu``) are validated by :func:`validate_menus`, with the tables and suites of
:mod:`polar.validation_menus` and the same drift bound against the last accepted run.

Results go to ``validation.json``, to ``validation.html`` (a page that reads offline) and to great-expectations
Data Docs (HTML) under ``out_dir/gx``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from html import escape
from pathlib import Path

import pandas as pd

from polar import validation_menus as menus
from polar.labeling.folder import LabelRecord, read_labels, read_settings
from polar.programs import CompactProgram, Program, ProgramError
from polar.settings import ValidateConfig
from polar.tasks.files import read_examples
from polar.tasks.splits import normalise

__all__ = ["ValidationFailed", "label_tables", "validate", "validate_menus"]

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
LENGTH_BINS = (0.0, 0.7, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 10.0)  # shortest length / D


class ValidationFailed(RuntimeError):
    """The labels failed their suite: training must not start."""


def label_tables(records: list[LabelRecord]) -> dict[str, pd.DataFrame]:
    """The three tables the suites check (see the module docstring)."""
    rows, programs, segments = [], [], []
    for r in records:
        compact, roundtrip = r.compact, None
        if compact is not None:
            try:
                roundtrip = CompactProgram.parse(compact).to_program() == Program.parse(r.shortest)
            except (ProgramError, TypeError):
                roundtrip = False
            for seg in CompactProgram.parse(compact).segments if roundtrip else ():
                segments.append({"op": seg.op.value, "length": seg.length})
        rows.append(
            {
                "id": r.id,
                "level": str(r.level),
                "model": r.model,
                "depth": r.depth,
                "base_correct": r.base_correct,
                "has_valid": bool(r.valid),
                "compact_roundtrip": roundtrip,
                "length_bin": _length_bin(r.shortest_length, r.depth),
            }
        )
        for text in r.valid:
            try:
                layers = Program.parse(text).layers
            except ProgramError:
                layers = (-1,)  # unparseable: fails the index check with the text in the report
            programs.append(
                {
                    "id": r.id,
                    "program": text,
                    "length": len(layers),
                    "min_layer": min(layers),
                    "max_layer": max(layers),
                    "max_visits": max(layers.count(i) for i in set(layers)),
                }
            )
    return {"records": pd.DataFrame(rows), "programs": pd.DataFrame(programs), "segments": pd.DataFrame(segments)}


def heldout_table(records: list[LabelRecord], heldout: dict[str, list]) -> pd.DataFrame:
    """One row per held-out question (``split`` -> examples): whether a training label has the same question."""
    training = {normalise(r.question) for r in records}
    rows = [
        {"id": e.id, "split": split, "question": e.question, "in_training": normalise(e.question) in training}
        for split, examples in heldout.items()
        for e in examples
    ]
    return pd.DataFrame(rows, columns=["id", "split", "question", "in_training"])


def _length_bin(length: int | None, depth: int | None) -> str:
    if length is None or not depth:
        return "none"
    ratio = length / depth
    for lo, hi in zip(LENGTH_BINS, LENGTH_BINS[1:], strict=False):
        if lo <= ratio < hi:
            return f"{lo:.2f}-{hi:.2f}"
    return "other"


def _distribution(values: pd.Series) -> dict[str, float]:
    counts = values.value_counts(normalize=True)
    return {str(k): float(v) for k, v in counts.items()}


def _partition(reference: dict[str, float]) -> dict:
    keys = sorted(reference)
    total = sum(reference.values())
    return {"values": keys, "weights": [reference[k] / total for k in keys]}


def _suites(tables: dict[str, pd.DataFrame], settings: dict, config: ValidateConfig, reference: dict | None):
    import great_expectations as gx

    E = gx.expectations
    search = settings["config"]["search"]
    depth = int(tables["records"]["depth"].iloc[0])
    lo, hi = math.ceil(search["min_length_ratio"] * depth), math.floor(search["max_length_ratio"] * depth)
    suites = {
        "records": [
            *[E.ExpectColumnToExist(column=c) for c in ("id", "level", "model", "depth", "base_correct", "has_valid")],
            E.ExpectColumnValuesToNotBeNull(column="id"),
            E.ExpectColumnValuesToBeUnique(column="id"),
            E.ExpectColumnValuesToBeInSet(column="depth", value_set=[depth]),
            E.ExpectColumnValuesToBeInSet(column="model", value_set=[settings["model"]]),
            E.ExpectColumnValuesToBeInSet(column="base_correct", value_set=[True, False]),
            E.ExpectColumnValuesToBeInSet(column="compact_roundtrip", value_set=[True]),  # nulls: no compact form
            E.ExpectColumnMeanToBeBetween(column="has_valid", min_value=config.min_valid_share, max_value=1.0),
        ],
        "programs": [
            E.ExpectColumnValuesToBeBetween(column="min_layer", min_value=0, max_value=depth - 1),
            E.ExpectColumnValuesToBeBetween(column="max_layer", min_value=0, max_value=depth - 1),
            E.ExpectColumnValuesToBeBetween(column="length", min_value=lo, max_value=hi),
            E.ExpectColumnValuesToBeBetween(column="max_visits", min_value=1, max_value=search["max_visits"]),
        ],
        "segments": [
            E.ExpectColumnValuesToBeInSet(column="op", value_set=["skip", "keep", "repeat"]),
            E.ExpectColumnValuesToBeBetween(column="length", min_value=1, max_value=settings["config"]["k_max"]),
        ],
    }
    if "heldout" in tables:  # no validation or test question may be among the training labels
        suites["heldout"] = [E.ExpectColumnValuesToBeInSet(column="in_training", value_set=[False])]
    if reference is not None:
        for table, column in (("segments", "op"), ("records", "length_bin")):
            suites[table].append(_kl(column, reference[column], config))
    return suites


def _kl(column: str, reference: dict[str, float], config: ValidateConfig):
    """The drift bound of ``column``: KL divergence from the ``reference`` shares below ``config.max_kl``."""
    import great_expectations as gx

    return gx.expectations.ExpectColumnKLDivergenceToBeLessThan(
        column=column,
        partition_object=_partition(reference),
        threshold=config.max_kl,
        tail_weight_holdout=config.holdout,  # values the reference never saw: a finite divergence
    )


def validate(
    labels_dir: str | Path,
    out_dir: str | Path,
    config: ValidateConfig = ValidateConfig(),
    reference: str | Path | None = None,
    accept: bool = True,
    heldout: Sequence[str | Path] = (),
) -> dict:
    """Run the suites on ``labels_dir`` and write ``validation.json`` and Data Docs into ``out_dir``.

    Args:
        heldout: task files (validation, test) whose questions must not be among the training labels.
        reference: JSON of the op and length distributions of the last accepted labels for the same
            base model; absent on the first run (no drift check). Rewritten when the suites pass and
            ``accept`` is set.

    Returns:
        The summary written to ``validation.json``.

    Raises:
        ValidationFailed: a suite failed (the message names the failed expectations and the report).
    """
    labels_dir, out_dir = Path(labels_dir), Path(out_dir)
    records, settings = read_labels(labels_dir), read_settings(labels_dir)
    if not records:
        raise ValueError(f"{labels_dir}/labels.jsonl holds no records")
    tables = label_tables(records)
    if heldout:
        tables["heldout"] = heldout_table(records, {Path(p).stem: read_examples(p) for p in heldout})
    ref = json.loads(Path(reference).read_text()) if reference and Path(reference).exists() else None
    suites = _suites(tables, settings, config, ref)
    for name in suites:
        if tables[name].empty:
            tables[name] = pd.DataFrame({c: pd.Series(dtype=object) for c in _columns(name)})
    failures, results = _run_suites(out_dir, "labels", suites, tables)
    docs = _docs(out_dir)
    summary = {
        "labels": str(labels_dir),
        "model": settings["model"],
        "inputs": len(records),
        "valid_programs": len(tables["programs"]),
        "heldout_checked": {str(p): int((tables["heldout"]["split"] == Path(p).stem).sum()) for p in heldout},
        "heldout_in_training": sorted(tables["heldout"].loc[tables["heldout"]["in_training"], "id"]) if heldout else [],
        "success": not failures,
        "drift_checked": ref is not None,
        "distributions": {
            "op": _distribution(tables["segments"]["op"]) if len(tables["segments"]) else {},
            "length_bin": _distribution(tables["records"]["length_bin"]),
        },
        "failures": failures,
        "results": results,
        "data_docs": str(docs),
        "config": config.to_dict(),
    }
    report = write_page(out_dir, summary, docs.parent)
    summary["report"] = str(report)
    (out_dir / "validation.json").write_text(json.dumps(summary, indent=2) + "\n")
    if failures:
        what = "; ".join(f"{f['table']}.{f['column']}: {f['expectation']}" for f in failures)
        leaked = summary["heldout_in_training"]
        if leaked:
            what += (
                f"; {len(leaked)} held-out questions are in the training labels (first: {leaked[0]}): ingest the "
                "splits with `polar ingest`, which splits by question, and label its train split only"
            )
        raise ValidationFailed(f"labels in {labels_dir} failed validation ({what}); see {report}")
    if accept and reference:
        Path(reference).parent.mkdir(parents=True, exist_ok=True)
        Path(reference).write_text(json.dumps(summary["distributions"], indent=2) + "\n")
    return summary


def validate_menus(
    splits: dict[str, str | Path],
    out_dir: str | Path,
    config: ValidateConfig = ValidateConfig(),
    reference: str | Path | None = None,
    accept: bool = True,
) -> dict:
    """Run the menu-chain suites (:mod:`polar.validation_menus`) on the menu folders of ``splits``.

    Args:
        splits: split name (train, validation, test) -> its ``polar label --menu`` folder. The distributions
            come from the split named ``train`` (else the first).
        reference: JSON of the distributions of the last accepted run; absent on the first run, and replaced,
            not compared, when it is of another menu. Rewritten when the suites pass and ``accept`` is set.

    Returns:
        The summary written to ``validation.json``.

    Raises:
        ValidationFailed: a suite failed (the message names the failed expectations and the report).
    """
    if not splits:
        raise ValueError(
            "no menu folders to validate: give --menu SPLIT=FOLDER for each split (train, validation, test)"
        )
    if odd := [name for name in splits if not re.fullmatch(r"[A-Za-z0-9_.-]+", name)]:
        raise ValueError(
            f"split name {odd[0]!r}: use letters, digits, '_', '-' and '.' only (it names suites and files)"
        )
    out_dir = Path(out_dir)
    read = [menus.read_split(name, folder) for name, folder in splits.items()]
    train = menus.train_split(read)
    tables, suites = menus.matrix_tables(read), menus.matrix_suites(read)
    ref, against = _menu_reference(reference, train.menu)
    if ref is not None:
        tables |= menus.drift_tables(train, ref)
        for table, column, shares in menus.drift_columns(ref, tables):
            suites.setdefault(table, []).append(_kl(column, shares, config))
    failures, results = _run_suites(out_dir, "menus", suites, tables, menus.row_keys(suites))
    summary = {
        "kind": "menu",
        "menu": train.menu,
        "programs": len(train.programs),
        "model": train.settings.get("model"),
        "prompt": train.prompt,
        "splits": {s.name: str(s.folder) for s in read},
        "inputs": {s.name: len(s.inputs) for s in read},
        "success": not failures,
        "drift_checked": ref is not None,
        "reference": against,
        "distributions": {"split": train.name, **menus.distributions(train)},
        "failures": failures,
        "results": results,
        "data_docs": str(_docs(out_dir)),
        "config": config.to_dict(),
    }
    inputs = ", ".join(f"{name} {n}" for name, n in summary["inputs"].items())
    intro = [
        f"<p>Menu <code>{escape(train.menu)}</code> ({summary['programs']} programs) of "
        f"<code>{escape(str(summary['model']))}</code>, inputs per split: {escape(inputs)}; drift {escape(against)}.</p>"
    ]
    summary["report"] = str(_page(out_dir, "Menu validation", train.menu, summary, intro, _docs(out_dir).parent))
    (out_dir / "validation.json").write_text(json.dumps(summary, indent=2) + "\n")
    if failures:
        what = "; ".join(_failure(f) for f in failures)
        where = ", ".join(f"{s.name}={s.folder}" for s in read)
        raise ValidationFailed(f"menu folders {where} failed validation ({what}); see {summary['report']}")
    if accept and reference:
        Path(reference).parent.mkdir(parents=True, exist_ok=True)
        Path(reference).write_text(json.dumps({"menu": train.menu, **summary["distributions"]}, indent=2) + "\n")
    return summary


def _failure(entry: dict) -> str:
    """``table.column: expectation (a failing row, or what was observed)`` for an error message."""
    where = f"{entry['table']}.{entry['column']}" if entry["column"] else entry["table"]
    if entry["unexpected"]:
        return f"{where}: {entry['expectation']} ({entry['unexpected'][0]})"
    return f"{where}: {entry['expectation']}" + (
        f" (observed {entry['observed']})" if entry["observed"] is not None else ""
    )


def _menu_reference(reference: str | Path | None, menu: str) -> tuple[dict | None, str]:
    """The reference to compare a run of ``menu`` with (None: none), and what the summary says about it."""
    if not reference or not Path(reference).exists():
        return None, "not checked (no reference yet)"
    ref = json.loads(Path(reference).read_text())
    if ref.get("menu") != menu:
        was = f"of {ref['menu']}" if ref.get("menu") else "not of a menu run"
        return (
            None,
            f"not checked: the reference {reference} is {was}, this run's is {menu} (a passing run replaces it)",
        )
    return ref, f"checked against the last accepted run ({reference})"


def _docs(out_dir: Path) -> Path:
    return out_dir / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"


def _run_suites(
    out_dir: Path,
    source: str,
    suites: dict[str, list],
    tables: dict[str, pd.DataFrame],
    index: dict[str, str] | None = None,
) -> tuple[list[dict], dict[str, list[dict]]]:
    """Run each suite on its table through a checkpoint, then build the Data Docs under ``out_dir/gx``.

    Args:
        source: the pandas data source, also the prefix of the suites' names (``labels``, ``menus``).
        index: table -> the column that names a failing row (its unexpected values are reported with it).

    Returns:
        The failed expectations, and every expectation's result per table.
    """
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    context = gx.get_context(mode="file", project_root_dir=out_dir)
    data = context.data_sources.add_or_update_pandas(source)
    failures, results = [], {}
    for name, expectations in suites.items():
        asset = data.add_dataframe_asset(name) if name not in data.get_asset_names() else data.get_asset(name)
        batch_def = asset.add_batch_definition_whole_dataframe(f"{name}-all")
        suite = context.suites.add_or_update(gx.ExpectationSuite(name=f"{source}-{name}", expectations=expectations))
        definition = context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=f"{source}-{name}", data=batch_def, suite=suite)
        )
        key = (index or {}).get(name)
        result_format = "SUMMARY"
        if key in tables[name]:
            result_format = {"result_format": "SUMMARY", "unexpected_index_column_names": [key]}
        checkpoint = context.checkpoints.add_or_update(
            gx.Checkpoint(name=f"{source}-{name}", validation_definitions=[definition], result_format=result_format)
        )
        run = checkpoint.run(batch_parameters={"dataframe": tables[name]})
        for result in run.run_results.values():
            for r in result.results:
                entry = _entry(name, r, indexed=result_format != "SUMMARY")
                results.setdefault(name, []).append(entry)
                if not r.success:
                    failures.append(entry)
    context.build_data_docs()  # once, from every stored result (rendering the site per suite costs seconds)
    return failures, results


def _entry(table: str, r, indexed: bool) -> dict:
    """One expectation's result as validation.json holds it."""
    cfg = r.expectation_config
    column = cfg.kwargs.get("column") or ",".join(
        cfg.kwargs.get("column_list") or [c for c in (cfg.kwargs.get("column_A"), cfg.kwargs.get("column_B")) if c]
    )
    entry = {"table": table, "expectation": cfg.type, "column": column or None, "success": r.success}
    observed = r.result.get("observed_value")
    entry["observed"] = observed if isinstance(observed, (int, float, str, type(None))) else str(observed)
    unexpected = r.result.get("partial_unexpected_list", [])
    if indexed and r.result.get("partial_unexpected_index_list"):  # the values with the row they are in
        unexpected = r.result["partial_unexpected_index_list"]
    entry["unexpected"] = [_plain(x) for x in unexpected[:5]]
    return entry


def _plain(value: object) -> str:
    if isinstance(value, dict):  # a row named by its index column: numpy scalars as plain numbers
        return str({k: v.item() if hasattr(v, "item") else v for k, v in value.items()})
    return str(value)


def write_page(out_dir: Path, summary: dict, site: Path) -> Path:
    """``validation.html``: every expectation's result on one self-contained page (no script, no remote style).

    great-expectations' own Data Docs index fills its tables with scripts loaded from CDNs, so offline it
    shows an empty page; this page reads anywhere and links its rendered validation pages.
    """
    intro = [
        f"<p>Labels <code>{escape(summary['labels'])}</code> of <code>{escape(str(summary['model']))}</code>: "
        f"{summary['inputs']} inputs, {summary['valid_programs']} valid programs; drift "
        f"{'checked against the last accepted labels' if summary['drift_checked'] else 'not checked (no reference yet)'}"
        ".</p>",
    ]
    if summary.get("heldout_checked"):
        checked = ", ".join(f"{n} in {escape(p)}" for p, n in summary["heldout_checked"].items())
        leaked = summary["heldout_in_training"]
        intro.append(
            f"<p>Held-out questions checked against the training labels: {checked}; "
            + (f'<span class="bad">{len(leaked)} found in training</span>' if leaked else "none found in training")
            + ".</p>"
        )
    return _page(out_dir, "Label validation", str(summary["model"]), summary, intro, site)


def _page(out_dir: Path, heading: str, subject: str, summary: dict, intro: list[str], site: Path) -> Path:
    """The page of :func:`write_page`: ``heading`` and the verdict, the ``intro`` paragraphs (HTML), the results."""
    verdict = "passed" if summary["success"] else "FAILED"
    colour = "#1a7f37" if summary["success"] else "#cf222e"
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{heading}: {escape(subject)} {verdict}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;width:100%}"
        "td,th{border:1px solid #ccc;padding:.3em .5em;text-align:left;vertical-align:top}"
        ".ok{color:#1a7f37}.bad{color:#cf222e;font-weight:bold}</style></head><body>",
        f'<h1>{heading}: <span style="color:{colour}">{verdict}</span></h1>',
        *intro,
    ]
    for table, results in summary["results"].items():
        parts += [
            f"<h2>{escape(table)}</h2>",
            "<table><tr><th>expectation</th><th>column</th><th>result</th><th>observed</th><th>unexpected</th></tr>",
        ]
        for r in results:
            cls, word = ("ok", "passed") if r["success"] else ("bad", "failed")
            observed = "" if r["observed"] is None else r["observed"]  # an empty cell, not a second verdict
            cells = [f"<td>{escape(str(c))}</td>" for c in (r["expectation"], r["column"] or "", observed)]
            cells.insert(2, f'<td class="{cls}">{word}</td>')
            parts.append(f"<tr>{''.join(cells)}<td>{escape(', '.join(r['unexpected']))}</td></tr>")
        parts.append("</table>")
    latest: dict[str, Path] = {}  # suite -> its newest page (the run directories sort by time)
    for page in sorted(site.glob("validations/**/*.html")):
        latest[page.relative_to(site).parts[1]] = page
    pages = list(latest.values())
    if pages:
        parts.append("<h2>great-expectations pages</h2><ul>")
        for page in pages:
            rel = page.relative_to(out_dir)
            parts.append(f'<li><a href="{escape(str(rel))}">{escape(str(rel.relative_to(rel.parts[0])))}</a></li>')
        parts.append("</ul>")
    parts.append("</body></html>")
    path = out_dir / "validation.html"
    path.write_text("\n".join(parts) + "\n")
    return path


def _columns(name: str) -> tuple[str, ...]:
    return {
        "records": ("id", "level", "model", "depth", "base_correct", "has_valid", "compact_roundtrip", "length_bin"),
        "programs": ("id", "program", "length", "min_layer", "max_layer", "max_visits"),
        "segments": ("op", "length"),
        "heldout": ("id", "split", "question", "in_training"),
    }[name]
