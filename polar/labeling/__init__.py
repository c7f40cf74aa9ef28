"""Labeling: run a labeler over every input of a task file into a resumable, sharded label folder.

- :mod:`polar.labeling.folder`: what a label folder holds (records, shards, settings, manifest).
- :mod:`polar.labeling.reward_matrix`: a menu folder's reward matrix (``rewards.parquet``, ``inputs.parquet``),
  whole or for one finished shard.
- :mod:`polar.labeling.run`: the one loop (:func:`run_labeling`) over a :class:`Labeler`, :func:`labeler_for`
  (the one place the kind of labels is chosen) and :func:`label` (both, from a task file).
- :mod:`polar.labeling.search`: :class:`SearchLabeler`, MCTS program search per input (``labels.jsonl``).
- :mod:`polar.labeling.menu`: :class:`MenuLabeler`, every program of a fixed menu on every input (``menu.jsonl``).

The names below load their module on first use, so that readers of label folders (``folder``) do not import
the model stack.
"""

from __future__ import annotations

import importlib

__all__ = ["Labeler", "MenuLabeler", "SearchLabeler", "label", "labeler_for", "run_labeling"]

_HOMES = {
    "Labeler": "run",
    "label": "run",
    "labeler_for": "run",
    "run_labeling": "run",
    "SearchLabeler": "search",
    "MenuLabeler": "menu",
}


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
