"""The labeling loop: one resumable, sharded run of a :class:`Labeler` over the inputs of a task file.

:func:`run_labeling` is the same for every labeler: it checks the folder's settings (``prepare``), takes the
worker's shard lock, skips the inputs already labeled, writes each new record to the worker's shard the moment it
is made (:class:`~polar.labeling.folder.ShardWriter`), and when every input is labeled merges the shards in input
order (``finish``). So a run killed at any point loses at most the inputs in progress, the next run repairs a
torn last line and goes on, and ``shard=(k, n)`` splits the inputs among ``n`` workers sharing the folder, in
processes or on a work pool's machines (``flows/labeling.py``): a finished folder holds the same bytes however
the work was split or interrupted.

:func:`labeler_for` is where the kind of labels is chosen, once: a menu in the settings labels every input with
every menu program (:class:`~polar.labeling.menu.MenuLabeler`), otherwise each input is searched
(:class:`~polar.labeling.search.SearchLabeler`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from polar.backbone import Backbone
from polar.labeling.folder import Record, ShardWriter, check_shard, read_records, worker_lock
from polar.labeling.menu import MenuLabeler
from polar.labeling.search import SearchLabeler
from polar.settings import EngineConfig, LabelConfig, MenuConfig
from polar.tasks.files import read_examples
from polar.tasks.schema import Example

__all__ = ["Labeler", "label", "labeler_for", "run_labeling"]


class Labeler(Protocol):
    """One way to label inputs: what :func:`run_labeling` needs of it.

    Attributes:
        model: the base model's spec, as the folder's settings name it.
        tasks: the task file the inputs come from.
        name: what its labels are called (the search space, or ``menu``): the default label folder's name.
        record_kind: the record class it writes (:class:`~polar.labeling.folder.LabelRecord` or ``MenuRecord``).
    """

    model: str
    tasks: str | Path
    name: str
    record_kind: type

    def prepare(self, out_dir: Path, restart_on_change: bool = False) -> None:
        """Create ``out_dir`` for these settings, or check that it holds labels made with them (else refuse, or
        with ``restart_on_change`` remove them)."""
        ...

    def label_batch(self, examples: Sequence[Example]) -> Iterator[tuple[Record, float]]:
        """Label ``examples``, yielding each record (in any order) with its seconds as soon as it is made."""
        ...

    def finish(self, out_dir: Path, ids: Sequence[str]) -> Path:
        """Merge the shards of ``out_dir`` in the order of ``ids``, write what goes beside; the merged file."""
        ...


def labeler_for(
    config: LabelConfig,
    dense: MenuConfig,
    model: str,
    tasks: str | Path,
    device: str = "auto",
    backbone: Backbone | None = None,
    engine: EngineConfig | None = None,
) -> Labeler:
    """The labeler of these settings: the menu labeler when ``dense`` names a menu, else the search labeler.

    Args:
        config: the label settings (params.yaml ``label``).
        dense: the menu settings (params.yaml ``menu``); an empty ``menu`` means search.
        model: the base model's spec.
        tasks: the task file.
        device: where the model is loaded when it is needed.
        backbone: the model already loaded (its ``spec`` is what the records name, its dtype and device what the
            folder's settings record).
        engine: the dtype and threads the model is loaded with when it is not given (params.yaml ``engine``).

    Returns:
        A :class:`Labeler`.
    """
    engine = engine or EngineConfig()
    if dense.menu:
        return MenuLabeler(model, tasks, config, dense, device, backbone, engine)
    return SearchLabeler(model, tasks, config, device, backbone, engine)


def run_labeling(
    labeler: Labeler,
    examples: Sequence[Example],
    out_dir: str | Path,
    shard: tuple[int, int] | None = None,
    worker: str = "0",
    after_write: Callable[[Path], None] | None = None,
    merge: bool = True,
    restart_on_change: bool = False,
) -> Path | None:
    """Label every input of ``examples`` not yet in ``out_dir``, then merge the folder's shards.

    Args:
        labeler: how to label (:func:`labeler_for`).
        examples: the inputs, in the order the merged file keeps.
        out_dir: the label folder (made when missing, resumed when it holds labels of the same settings).
        shard: ``(k, n)``: label only inputs ``k, k+n, k+2n, ...`` (one worker of ``n`` sharing ``out_dir``); the
            merge happens when every input is labeled, by whichever run finds them all done.
        worker: the name of this worker's shards (``KofN`` by default with ``shard``).
        after_write: runs with the shard file after each record is written (a pool worker sends it to the store).
        merge: without it the shards stay as they are (a pool worker's caller merges elsewhere).
        restart_on_change: remove labels made with other settings instead of refusing them.

    Returns:
        The merged file, or None when other shards still have inputs to label (or not ``merge``).
    """
    if shard is not None:
        check_shard(shard)
    ids = [e.id for e in examples]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{labeler.tasks}: duplicate example ids; re-run `polar ingest`")
    out_dir = Path(out_dir)
    labeler.prepare(out_dir, restart_on_change)
    if shard is not None and worker == "0":
        worker = f"{shard[0]}of{shard[1]}"
    lock = worker_lock(out_dir, worker)
    try:
        writer = ShardWriter(out_dir, worker, after_write)  # repairs this worker's torn shards before reading them
        done = {r.id for r in read_records(out_dir, labeler.record_kind)}
        mine = examples if shard is None else examples[shard[0] :: shard[1]]
        todo = [e for e in mine if e.id not in done]
        try:
            if todo:
                desc = f"label {labeler.model} [{labeler.name}]" + (f" shard {shard[0]}/{shard[1]}" if shard else "")
                bar = tqdm(desc=desc, unit="input", initial=len(mine) - len(todo), total=len(mine))
                _write_all(labeler, todo, writer, bar)
        finally:
            writer.close()
    finally:
        lock.release()
    if not merge or (shard is not None and not set(ids) <= {r.id for r in read_records(out_dir, labeler.record_kind)}):
        return None  # other shards are still at work (the last one to finish merges), or the caller merges
    return labeler.finish(out_dir, ids)


def _write_all(labeler: Labeler, todo: Sequence[Example], writer: ShardWriter, bar: tqdm) -> None:
    """Label ``todo``, each record on disk before the next, with ``bar`` counting them (closed at the end)."""
    right = 0
    try:
        for n, (record, seconds) in enumerate(labeler.label_batch(todo), 1):
            writer.write(record, seconds)
            right += bool(record.base_correct)
            bar.update()
            bar.set_postfix(base=f"{right}/{n}")
    finally:
        bar.close()


def label(
    model: str,
    tasks: str | Path,
    out_dir: str | Path,
    config: LabelConfig | None = None,
    dense: MenuConfig | None = None,
    *,
    limit: int | None = None,
    worker: str = "0",
    device: str = "auto",
    backbone: Backbone | None = None,
    engine: EngineConfig | None = None,
    restart_on_change: bool = False,
    shard: tuple[int, int] | None = None,
    after_write: Callable[[Path], None] | None = None,
    merge: bool = True,
) -> Path | None:
    """Label the first ``limit`` inputs of ``tasks`` into ``out_dir``: :func:`labeler_for` then :func:`run_labeling`.

    Args:
        model: the base model's spec.
        tasks: the task file (``polar ingest``'s train split).
        out_dir: the label folder.
        config: the label settings (default: :class:`~polar.settings.LabelConfig`).
        dense: the menu settings; None or an empty ``menu``: search.
        limit: label only the first ``limit`` inputs.
        worker, shard, after_write, merge, restart_on_change: as :func:`run_labeling` takes them.
        device, backbone, engine: as :func:`labeler_for` takes them.

    Returns:
        The merged file, or None when other shards still have inputs to label (or not ``merge``).
    """
    labeler = labeler_for(config or LabelConfig(), dense or MenuConfig(), model, tasks, device, backbone, engine)
    examples = read_examples(tasks)[:limit]
    return run_labeling(labeler, examples, out_dir, shard, worker, after_write, merge, restart_on_change)
