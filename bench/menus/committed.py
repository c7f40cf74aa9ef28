"""Whether a committed menu matrix already holds a split (or one shard of it), so that a study need not label it.

A study's splits can be labeled in different sessions or on different machines, and only the exported matrices
under ``bench/menus/`` travel. This checks a matrix folder (``rewards.parquet``, ``inputs.parquet``,
``settings.json``) against what labeling it again would make: the same model, the same menu (the menu file's
programs, the full depth first), the same prompt (the one labeling builds from the task folder's shots file,
:meth:`polar.tasks.prompts.PromptSpec.from_pool`) and exactly the task file's inputs (or those of shard ``K/N``).
Exit status 0 when it does; 1, with the reason on stderr, when it does not (missing, partial, or made with
something else, which a study must not mix in).

    python bench/menus/committed.py bench/menus/gemma3-270m-mmlu-pro-math/validation \
        --tasks data/mc/mmlu-pro-math/validation.parquet --menu bench/menus/gemma3-270m-mmlu-pro-math/menu.txt \
        --model models/gemma3-270m
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from polar.labeling.folder import parse_shard
from polar.labeling.menu import resolve_menu
from polar.programs import Program
from polar.selection.matrix import Matrix
from polar.tasks.files import read_examples
from polar.tasks.prompts import PromptSpec

MAX_VISITS = 64  # the menu file's own programs are what is compared: no bound on loops here


def mismatch(folder: Path, tasks: Path, menu: Path, model: str, shard: tuple[int, int] | None) -> str:
    """Why ``folder`` is not the matrix labeling ``tasks`` (or its shard) with ``menu`` on ``model`` would make;
    the empty string when it is."""
    if not (folder / "rewards.parquet").exists():
        return f"{folder}: no matrix"
    settings = json.loads((folder / "settings.json").read_text())
    if settings.get("model") != model:
        return f"{folder}: labeled on {settings.get('model')}, not {model}"
    matrix = Matrix.load(folder)
    depth = matrix.depth
    if matrix.programs[0] != Program.identity(depth).text:
        return f"{folder}: its first program {matrix.programs[0]} is not the full depth"
    try:
        wanted = tuple(p.text for p in resolve_menu(str(menu), depth, max_visits=MAX_VISITS))
    except ValueError as err:  # the menu is for another model
        return f"{folder}: not labeled with {menu} ({err})"
    if matrix.programs != wanted:
        return f"{folder}: labeled with another menu than {menu}"
    if "prompt" not in settings:
        return f"{folder}: its settings record no prompt"
    stored = PromptSpec.from_dict(settings["prompt"])
    shots = tasks.parent / "shots.parquet"
    if stored.shots and shots.exists():
        fresh = PromptSpec.from_pool(shots, stored.style, stored.shots, stored.format)
        if fresh.id != stored.id:
            return f"{folder}: its prompt {stored.id} is not the one {shots} makes ({fresh.id}): other shots"
    ids = [e.id for e in read_examples(tasks)]
    if shard is not None:
        ids = ids[shard[0] :: shard[1]]
    if sorted(matrix.ids) != sorted(ids):
        which = f"{tasks}" + (f" shard {shard[0]}/{shard[1]}" if shard else "")
        if len(matrix.ids) == len(ids):
            return f"{folder}: holds other inputs than the {len(ids)} of {which}"
        return f"{folder}: holds {len(matrix.ids)} inputs, not the {len(ids)} of {which}"
    return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="the committed matrix folder")
    ap.add_argument("--tasks", type=Path, required=True, help="the task file the split is labeled from")
    ap.add_argument("--menu", type=Path, required=True, help="the menu file")
    ap.add_argument("--model", required=True, help="the model, as the study names it")
    ap.add_argument("--shard", help="K/N: only every N-th input from K")
    args = ap.parse_args()
    try:
        shard = parse_shard(args.shard) if args.shard else None
    except ValueError as err:
        raise SystemExit(str(err)) from None
    why = mismatch(args.folder, args.tasks, args.menu, args.model, shard)
    if why:
        print(why, file=sys.stderr)
        raise SystemExit(1)
    print(f"{args.folder}: committed, {args.tasks}" + (f" shard {args.shard}" if shard else ""))


if __name__ == "__main__":
    main()
