"""The tables and great-expectations suites of a menu chain: the reward matrices of its splits.

A menu chain labels the train, validation and test splits each with one menu (``polar label --menu``) into a
folder of its own; :func:`polar.validation.validate_menus` runs these suites over them before a selector is
chosen. Tables, each with its own suite:

* ``<split>-rewards`` (the rows of ``rewards.parquet``): schema and types; one row per (input, program) and
  inputs x programs rows; only programs of the menu and inputs of ``inputs.parquet``; each row's layers equal to
  the length of its program text;
* ``<split>-inputs`` (the rows of ``inputs.parquet``): schema and types; one row per input, of the menu's depth;
  every input with one row of the identity program (the menu's first line) and a row of every program; no
  question in another split (compared by normalised text, :mod:`polar.tasks.splits`);
* ``splits`` (one row per split): one menu, one prompt and one model for all, the menu's first program the full
  depth;
* ``drift-programs`` and ``drift-levels`` (the train split, given a reference of the same menu): which programs
  the right answers come from, and the base model's accuracy per level, each within a KL bound of the last
  accepted run (the bounds are added by :mod:`polar.validation`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from polar.labeling.folder import INPUTS, REWARDS, describe_numerics, label_prompt, read_settings
from polar.programs import Program, ProgramError
from polar.tasks.splits import normalise

__all__ = [
    "INPUT_COLUMNS",
    "REWARD_COLUMNS",
    "MenuSplit",
    "distributions",
    "drift_columns",
    "drift_tables",
    "matrix_suites",
    "matrix_tables",
    "read_matrix",
    "read_split",
    "row_keys",
    "train_split",
]

# Parquet columns and their types: numbers and booleans by dtype; strings (``str`` under pandas 3, ``object``
# before it, or a column with no value at all) value by value, nulls allowed (a program may give no answer). A
# null turns an int column into floats (a type failure) and a bool column into objects: those need not-null too.
_STR, _BOOL, _INT, _FLOAT = "str", "bool", "int64", "float64"
REWARD_COLUMNS = {
    "id": _STR,
    "level": _STR,
    "program": _STR,
    "correct": _BOOL,
    "prediction": _STR,
    "layers": _INT,
    "logprob": _FLOAT,
    "tokens": _INT,
}
INPUT_COLUMNS = {
    "id": _STR,
    "level": _STR,
    "question": _STR,
    "answer": _STR,
    "depth": _INT,
    "base_correct": _BOOL,
    "base_logprob": _FLOAT,
    "base_margin": _FLOAT,
    "base_entropy": _FLOAT,
    "sample_agreement": _FLOAT,
    "sample_correct": _FLOAT,
}
# The likelihood columns every menu records (:data:`polar.labeling.reward_matrix.LIKELIHOOD_COLUMNS`): the reference
# answer's always, each choice's for multiple choice, the length-normalised rule's answer under likelihood scoring.
LIKELIHOOD_REWARD_COLUMNS = {"answer_logprob": _FLOAT, "answer_tokens": _INT}
CHOICE_COLUMNS = ("choice_logprobs", "choice_tokens")  # lists: checked by the column set, not by type
NORM_COLUMNS = {"correct_norm": _BOOL, "prediction_norm": _STR}
_DERIVED = {"rewards": ["program_layers"], "inputs": ["identity_rows", "programs_run", "shared"]}
_KEYS = {"rewards": "id", "inputs": "id", "splits": "split"}  # per kind of table: the column naming a failing row
_SHARES = ("base_margin", "sample_agreement", "sample_correct")  # probabilities and shares, in [0, 1]


@dataclass(frozen=True)
class MenuSplit:
    """One split's menu folder, as read: its settings and its two matrices."""

    name: str
    folder: Path
    settings: dict
    prompt: str  # the prompt spec's id
    rewards: pd.DataFrame
    inputs: pd.DataFrame

    @property
    def menu(self) -> str:
        return self.settings["menu"]["id"]

    @property
    def programs(self) -> list[str]:
        return list(self.settings["menu"]["programs"])

    @property
    def scoring(self) -> str:
        return self.settings.get("config", {}).get("scoring", "generate")

    def reward_columns(self) -> dict[str, str]:
        """The typed columns of this split's ``rewards.parquet``: the base ones, the likelihoods, and the
        length-normalised rule's under likelihood scoring."""
        extra = NORM_COLUMNS if self.scoring == "likelihood" else {}
        return {**REWARD_COLUMNS, **LIKELIHOOD_REWARD_COLUMNS, **extra}

    @property
    def identity(self) -> str:
        """The menu's first line: the full-depth program (:func:`polar.labeling.menu.resolve_menu` puts it first)."""
        return self.programs[0]


def read_matrix(folder: str | Path, name: str) -> pd.DataFrame:
    """One Parquet file of a menu folder; a missing or broken file is named with what was expected there."""
    from pyarrow import ArrowException

    path = Path(folder) / name
    expected = f"expected {name} written by `polar label --menu`"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found ({expected}): label the split with `polar label --menu MENU --out {folder}`"
        )
    try:
        return pd.read_parquet(path)
    except (ArrowException, OSError, ValueError) as err:
        raise ValueError(
            f"{path} is not a Parquet file ({expected}; {err.__class__.__name__}): run the same `polar label --menu "
            f"... --out {folder}` again, which exports the matrices anew from menu.jsonl"
        ) from err


def read_split(name: str, folder: str | Path) -> MenuSplit:
    """The menu folder of split ``name``: settings.json, rewards.parquet and inputs.parquet."""
    folder = Path(folder)
    settings = read_settings(folder)
    if settings.get("kind") != "menu" or not settings.get("menu", {}).get("programs"):
        raise ValueError(
            f"{folder / 'settings.json'} is not a menu folder's (kind {settings.get('kind', 'search')!r}): give "
            f"--menu {name}=FOLDER a folder written by `polar label --menu MENU`; search labels take --labels"
        )
    return MenuSplit(
        name, folder, settings, label_prompt(folder).id, read_matrix(folder, REWARDS), read_matrix(folder, INPUTS)
    )


def row_keys(tables: Iterable[str]) -> dict[str, str]:
    """Table -> the column that names its failing rows in the report (``id`` of an input, ``split``)."""
    return {t: _KEYS[kind] for t in tables if (kind := t.rsplit("-", 1)[-1]) in _KEYS}


def train_split(splits: Sequence[MenuSplit]) -> MenuSplit:
    """The split the distributions are taken from: the one named ``train``, else the first."""
    return next((s for s in splits if s.name == "train"), splits[0])


def _layers(text: object) -> int:
    try:
        return len(Program.parse(str(text)))
    except ProgramError:
        return -1  # not a program: differs from any layer count, so the row is named in the report


def matrix_tables(splits: Sequence[MenuSplit]) -> dict[str, pd.DataFrame]:
    """The tables the suites check (see the module docstring), keyed by table name."""
    owners: dict[str, list[str]] = {}  # normalised question -> the splits holding it
    for s in splits:
        for q in dict.fromkeys(normalise(str(q)) for q in s.inputs.get("question", ())):
            owners.setdefault(q, []).append(s.name)
    tables, rows = {}, []
    for s in splits:
        rewards, inputs = s.rewards.copy(), s.inputs.copy()
        if "program" in rewards:
            rewards["program_layers"] = [_layers(p) for p in rewards["program"]]
        if {"id", "program"} <= set(rewards.columns) and "id" in inputs:
            ids = inputs["id"]
            inputs["identity_rows"] = ids.map(rewards.loc[rewards["program"] == s.identity, "id"].value_counts())
            inputs["identity_rows"] = inputs["identity_rows"].fillna(0).astype("int64")
            inputs["programs_run"] = ids.map(rewards.groupby("id")["program"].nunique()).fillna(0).astype("int64")
        if "question" in inputs:
            inputs["shared"] = [_shared(str(q), s.name, owners) for q in inputs["question"]]
        tables[f"{s.name}-rewards"], tables[f"{s.name}-inputs"] = rewards, inputs
        try:
            first = Program.parse(s.identity)
            full = first.is_identity(len(first))  # 0..D-1, and D the inputs' depth (checked on the inputs)
        except ProgramError:
            full = False
        rows.append(
            {
                "split": s.name,
                "menu": s.menu,
                "prompt": s.prompt,
                "model": s.settings.get("model"),
                "numerics": describe_numerics(s.settings.get("engine")).removeprefix("in "),
                "identity_first": full,
            }
        )
    tables["splits"] = pd.DataFrame(rows)
    return tables


def _shared(question: str, split: str, owners: dict[str, list[str]]) -> str | None:
    others = [o for o in owners.get(normalise(question), []) if o != split]
    return f"question {question!r} is in {split} and in {' and '.join(others)}" if others else None


def matrix_suites(splits: Sequence[MenuSplit]) -> dict[str, list]:
    """The expectations of every table of :func:`matrix_tables` (without the drift bounds)."""
    import great_expectations as gx

    E = gx.expectations
    first = train_split(splits)
    suites: dict[str, list] = {}
    for s in splits:
        n, programs = len(s.inputs), s.programs
        typed = s.reward_columns()
        # each choice's likelihood: required under likelihood scoring (the choices are the answers), and under
        # generation both columns or neither (multiple choice records them, other tasks have no choices)
        choices = list(CHOICE_COLUMNS) if s.scoring == "likelihood" or "choice_logprobs" in s.rewards else []
        not_null = [
            "id",
            "program",
            "correct",
            "answer_logprob",
            *(["correct_norm"] if s.scoring == "likelihood" else []),
        ]
        suites[f"{s.name}-rewards"] = [
            E.ExpectTableColumnsToMatchSet(column_set=[*typed, *choices, *_DERIVED["rewards"]], exact_match=True),
            *[E.ExpectColumnValuesToBeOfType(column=c, type_=t) for c, t in typed.items()],
            *[E.ExpectColumnValuesToNotBeNull(column=c) for c in not_null],  # ints: by type
            E.ExpectColumnValuesToBeBetween(column="answer_logprob", max_value=0.0),
            E.ExpectColumnValuesToBeBetween(column="answer_tokens", min_value=1),
            E.ExpectCompoundColumnsToBeUnique(column_list=["id", "program"]),
            E.ExpectTableRowCountToEqual(value=n * len(programs)),  # every input x every program
            E.ExpectColumnValuesToBeInSet(column="program", value_set=programs),
            E.ExpectColumnValuesToBeInSet(column="id", value_set=list(s.inputs.get("id", ()))),
            E.ExpectColumnPairValuesToBeEqual(column_A="layers", column_B="program_layers"),
            E.ExpectColumnValuesToBeBetween(column="logprob", max_value=0.0),  # a log-probability
        ]
        suites[f"{s.name}-inputs"] = [
            E.ExpectTableColumnsToMatchSet(column_set=[*INPUT_COLUMNS, *_DERIVED["inputs"]], exact_match=True),
            *[E.ExpectColumnValuesToBeOfType(column=c, type_=t) for c, t in INPUT_COLUMNS.items()],
            E.ExpectTableRowCountToBeBetween(min_value=1),
            *[E.ExpectColumnValuesToNotBeNull(column=c) for c in ("id", "question", "base_correct")],
            E.ExpectColumnValuesToBeUnique(column="id"),
            E.ExpectColumnValuesToBeInSet(column="depth", value_set=[_layers(s.identity)]),
            E.ExpectColumnValuesToBeInSet(column="identity_rows", value_set=[1]),
            E.ExpectColumnValuesToBeInSet(column="programs_run", value_set=[len(programs)]),
            E.ExpectColumnValuesToBeNull(column="shared"),  # no question in two splits
            *[E.ExpectColumnValuesToBeBetween(column=c, min_value=0.0, max_value=1.0) for c in _SHARES],
        ]
    suites["splits"] = [
        E.ExpectColumnValuesToBeInSet(column="menu", value_set=[first.menu]),
        E.ExpectColumnValuesToBeInSet(column="prompt", value_set=[first.prompt]),
        E.ExpectColumnValuesToBeInSet(column="model", value_set=[first.settings.get("model")]),
        # one dtype, device and thread count: a split computed otherwise is not comparable
        E.ExpectColumnValuesToBeInSet(
            column="numerics", value_set=[describe_numerics(first.settings.get("engine")).removeprefix("in ")]
        ),
        E.ExpectColumnValuesToBeInSet(column="identity_first", value_set=[True]),
    ]
    return suites


def distributions(train: MenuSplit) -> dict:
    """What drift is measured on: the share of the train split's right answers each program gives, and the
    base model's accuracy per level (``right``/``wrong`` shares)."""
    rewards, inputs = train.rewards, train.inputs
    right = rewards.loc[rewards["correct"].astype(bool), "program"] if {"correct", "program"} <= set(rewards) else []
    by_program = pd.Series(right, dtype=object).value_counts(normalize=True)
    levels = {}
    if {"level", "base_correct"} <= set(inputs.columns):
        for level, group in inputs.groupby(inputs["level"].astype(str), sort=True):
            counts = group["base_correct"].map({True: "right", False: "wrong"}).value_counts(normalize=True)
            levels[str(level)] = {str(k): float(v) for k, v in counts.items()}
    return {"right_program": {str(k): float(v) for k, v in by_program.items()}, "base_accuracy": levels}


def drift_tables(train: MenuSplit, reference: dict) -> dict[str, pd.DataFrame]:
    """The train split's right answers by program, and a ``level L`` column (right/wrong; empty on the other
    levels) for each level the reference knows."""
    rewards, inputs = train.rewards, train.inputs
    right = (
        rewards.loc[rewards["correct"].astype(bool), ["program"]] if {"correct", "program"} <= set(rewards) else None
    )
    levels = pd.DataFrame(index=inputs.index)
    if {"level", "base_correct"} <= set(inputs.columns):
        said = inputs["base_correct"].map({True: "right", False: "wrong"})
        for level in reference.get("base_accuracy", {}):
            if (inputs["level"].astype(str) == level).any():
                levels[f"level {level}"] = said.where(inputs["level"].astype(str) == level, None)
    return {
        "drift-programs": right if right is not None else pd.DataFrame({"program": pd.Series(dtype=object)}),
        "drift-levels": levels,
    }


def drift_columns(reference: dict, tables: dict[str, pd.DataFrame]) -> list[tuple[str, str, dict[str, float]]]:
    """``(table, column, reference distribution)`` of every drift bound that :func:`drift_tables` can be held to."""
    bounds = [("drift-programs", "program", reference["right_program"])] if reference.get("right_program") else []
    for level, shares in reference.get("base_accuracy", {}).items():
        if f"level {level}" in tables["drift-levels"] and shares:
            bounds.append(("drift-levels", f"level {level}", shares))
    return bounds
