"""Content hashes of files, read in blocks (model weights do not fit in memory twice). Imports nothing heavy."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

__all__ = ["sha256_file", "sha256_files"]


def sha256_file(path: str | Path) -> str:
    return sha256_files([path])


def sha256_files(paths: Iterable[str | Path]) -> str:
    """One digest of the files' contents read one after the other, in the order given (as if concatenated).

    Args:
        paths: the files, e.g. a predictor's label files.

    Returns:
        The hex SHA-256 of their bytes.
    """
    digest = hashlib.sha256()
    for path in paths:
        with Path(path).open("rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
