"""Task files: the Parquet (or JSON lines) files of examples that `polar ingest` writes and every stage reads."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from polar.tasks.schema import Example
from polar.tasks.splits import SHOTS, SPLITS

__all__ = ["SHOTS_FILE", "read_examples", "split_path", "write_examples"]

SHOTS_FILE = f"{SHOTS}.parquet"  # the few-shot pool, beside the splits


def split_path(out_dir: str | Path, split: str) -> Path:
    """Where the ingest stage writes ``split`` (train, validation, test or shots) in ``out_dir``."""
    if split not in (*SPLITS, SHOTS):
        raise ValueError(f"unknown split {split!r}: one of {', '.join((*SPLITS, SHOTS))}")
    return Path(out_dir) / f"{split}.parquet"


def read_parquet(path: str | Path, what: str) -> pd.DataFrame:
    """A Parquet file; a missing or unreadable one is named with ``what`` was expected there."""
    import pyarrow

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (expected {what})")
    try:
        return pd.read_parquet(path)
    except (pyarrow.ArrowInvalid, OSError) as err:
        raise ValueError(f"{path} is not a readable Parquet file (expected {what}): {err}") from None


def read_examples(path: str | Path) -> list[Example]:
    """Examples of an ingested task file (Parquet or JSON lines)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"task file not found: {path} (run `polar ingest` first)")
    if path.suffix == ".parquet":
        frame = read_parquet(path, "a task file written by `polar ingest`")
    else:
        frame = pd.read_json(path, lines=True, dtype=False)
    return [Example.from_dict(row) for row in frame.to_dict(orient="records")]


def write_examples(path: Path, examples: list[Example]) -> None:
    """Examples as one Parquet file (written whole, then moved into place)."""
    tmp = path.with_name(f".{path.name}.tmp")
    columns = list(Example.__dataclass_fields__)
    if not any(e.choices for e in examples):  # files without multiple choice keep the columns they always had
        columns.remove("choices")
    pd.DataFrame([e.to_dict() for e in examples], columns=columns).to_parquet(tmp, index=False)
    tmp.replace(path)
