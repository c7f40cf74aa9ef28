"""The ``polar`` command: one sub-command per task, in groups (engine, stages, registry, pipeline, stack).

Thin shells: each command builds its settings, calls one library function and prints.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Each group adds its commands, in the order that `polar --help` lists them.
from polar.cli import engine, stages, study, harness, registry, pipeline, stack  # noqa: E402, F401, I001
from polar.cli.options import app  # noqa: E402

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover - entry point
    sys.exit(app())
