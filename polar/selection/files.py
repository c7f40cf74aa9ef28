"""The files of a selection study, by name: what the select, evaluate and register stages hand each other.

The select stage's folder holds ``frozen.json`` (written before the test matrix is read), ``test.json`` (the one
look at test, with the digest of ``frozen.json``) and ``choices.parquet`` (each candidate's program per test input);
its selectors folder holds one servable selector per role. Wall-clock figures (each candidate's choice time, the
model features' extraction time) go to ``timings.json`` beside them, which ``.dvcignore`` keeps out of the folder's
hash: every other file is a pure function of the matrices and the settings. The evaluate stage's folder holds ``metrics.json`` and
``versions/<role>.json`` (each servable selector's served evaluation, in the registry's format).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CHOICES", "FROZEN", "ORACLE", "ROLES", "TEST", "TIMINGS", "VERSIONS", "served_programs"]

FROZEN = "frozen.json"
TEST = "test.json"
CHOICES = "choices.parquet"
TIMINGS = "timings.json"  # seconds differ from run to run: in .dvcignore, never in a hashed output
VERSIONS = "versions"
ROLES = ("baseline", "accuracy", "efficiency")  # the full depth, and the two modes' winners
ORACLE = "oracle (any menu program right; ceiling)"  # the ceiling's row in every table


def served_programs(study_dir: str | Path, method: str) -> dict[str, str]:
    """Test input id -> the program candidate ``method`` chose (from the study's ``choices.parquet``)."""
    import pandas as pd

    table = pd.read_parquet(Path(study_dir) / CHOICES)
    rows = table[table["method"] == method]
    if rows.empty:
        raise ValueError(f"{Path(study_dir) / CHOICES} has no choices of {method!r}: run `polar select` again")
    return dict(zip(rows["id"], rows["program"], strict=True))
