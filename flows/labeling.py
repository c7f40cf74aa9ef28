"""GPU-scheduled labeling: one Prefect flow run per shard of a task file, on a work pool's workers.

``polar label --pool gpu`` (and the label stage with ``label_pool: {pool: gpu}`` in params.yaml) registers the
deployment ``polar-label-shard/<pool>`` and submits one run of it per shard; each run labels inputs
``k, k+n, k+2n, ...`` into the shared label folder (resumable, like any ``polar label``) on the GPU of
the worker that picked it up, or its CPU where it has none. Start one worker per GPU, each taking one
shard at a time:

    CUDA_VISIBLE_DEVICES=0 prefect worker start --pool gpu --type process --limit 1
    CUDA_VISIBLE_DEVICES=1 prefect worker start --pool gpu --type process --limit 1

Workers import this flow from their own installation of polar (the deployment names a module, not a file),
so their checkouts may live anywhere. Where they find inputs and leave records:

* **Through the team stack's object store** (``$POLAR_STORE_URL`` set, see ``polar stack env``): the dispatcher
  sends the task file, the model folder (when it is one; a bundled name or hub id travels as is), the
  few-shot pool and the menu by content, and workers fetch them into their cache (``$POLAR_CACHE_DIR``). Each
  worker pulls its job's shards, labels what is left of its shard and sends its shard file after every
  record; the dispatcher pulls every shard and merges. Workers need only the stack's URLs and key pair.
* **Otherwise**, every path is absolute and the workers need this checkout's files and the label folder on a
  file system they share.

Dense menu labeling (``polar label --menu ... --pool gpu``) goes the same way, through the same code (one
:class:`polar.labeling.run.Labeler` chosen once): the dispatcher resolves the menu once and leaves it in the label
folder as ``menu.txt``, which every shard run labels with.

A shard run is an ordinary resumable ``polar label --shard K/N``, so a failed or killed shard loses at
most the input it was on: running the same command again re-submits only the shards with inputs left,
and re-attaches to shard runs still queued or running (same settings) instead of starting them twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import flow, get_client, get_run_logger
from prefect.deployments import run_deployment
from tqdm import tqdm

from flows.api import require_prefect
from polar.backbone import check_spec
from polar.labeling.folder import MENU_FILE, read_records
from polar.labeling.run import Labeler, label, labeler_for
from polar.settings import EngineConfig, LabelConfig, MenuConfig
from polar.stack.client import check_store, store_url
from polar.tasks.files import SHOTS_FILE, read_examples

if TYPE_CHECKING:
    from polar.stack.transfer import Store

DEPLOYMENT_FLOW = "polar-label-shard"


@flow(name=DEPLOYMENT_FLOW, log_prints=True, flow_run_name="label shard {shard}/{shards} of {out}")
def label_shard(
    model: str,
    tasks: str,
    out: str,
    config: dict,
    shard: int,
    shards: int,
    limit: int | None = None,
    device: str = "auto",
    menu: dict | None = None,
    store: str | None = None,
    refs: dict | None = None,
    engine: dict | None = None,
) -> dict:
    """Label shard ``shard`` of ``shards`` of ``tasks`` into ``out`` (MCTS, or the dense ``menu`` settings);
    merges when it is the last to finish.

    With ``store`` (an object store URL), ``out`` names the job there, ``refs`` the inputs sent by content
    (``tasks``, and ``model``, ``shots``, ``menu`` when they are files): the shard is labeled in this
    worker's cache, its records sent to the store after each one, and the dispatcher merges."""
    import torch

    where = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    settings, part = LabelConfig.from_dict(config), (shard, shards)
    numerics = EngineConfig(**(engine or {}))
    after_write, merge, backbone = None, True, None
    if store:
        from polar.stack.transfer import Store, cache_dir

        remote, job, refs = Store(store), out, refs or {}
        tasks = str(remote.get(refs["tasks"]))
        if "model" in refs:  # records name the model as the dispatcher does; the weights come from the cache
            from polar.backbone import load

            backbone = load(str(remote.get(refs["model"])), device, numerics.dtype, threads=numerics.threads)
            backbone.spec = model  # what the records say: the model as the dispatcher names it
        if "shots" in refs:
            settings = replace(settings, shots_from=str(remote.get(refs["shots"])))
        if menu and "menu" in refs:
            menu = {**menu, "menu": str(remote.get(refs["menu"]))}
        local = cache_dir() / "jobs" / job
        owner = f"{shard}of{shards}"
        token = remote.claim(job, owner)  # before pulling: an older run of this shard stops at its next record
        remote.pull_files(job, local)  # where any machine left this job: resume from there

        def after_write(path: Path) -> None:
            remote.check(job, owner, token)
            remote.push_files([path], job)

        out, merge = str(local), False
    get_run_logger().info("labeling shard %d/%d of %s on %s", shard, shards, tasks, where)
    dense = MenuConfig(**menu) if menu else None
    merged = label(
        model,
        tasks,
        out,
        settings,
        dense,
        limit=limit,
        device=device,
        backbone=backbone,
        engine=numerics,
        shard=part,
        after_write=after_write,
        merge=merge,
    )
    return {"shard": shard, "shards": shards, "device": where, "merged": str(merged) if merged else None}


def shard_deployment(pool: str):
    """The labeling deployment for ``pool``: workers import the flow from their own installation of polar."""
    from prefect.deployments.runner import EntrypointType

    return label_shard.to_deployment(
        name=pool,
        description="One shard of `polar label` (flows/labeling.py).",
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def _send_inputs(store: str, model: str, tasks_path: Path, out_dir: Path, config: LabelConfig, menu: dict | None):
    """Send the job's inputs to the store by content; (the job's name there, the refs, the model's name)."""
    from polar.stack.transfer import Store

    remote = Store(store)
    refs = {"tasks": remote.put(tasks_path)}
    if Path(model).exists():
        refs["model"] = remote.put(model)
    pool = Path(config.shots_from) if config.shots_from else tasks_path.with_name(SHOTS_FILE)  # as prompt_spec
    if pool.exists():
        refs["shots"] = remote.put(pool)
    if menu:
        refs["menu"] = remote.put(out_dir / MENU_FILE)
    # The job's name: what the records depend on, by content (not the local paths of the model, pool or menu).
    config_key = {k: v for k, v in config.to_dict().items() if k != "shots_from"}
    menu_key = {**menu, "menu": ""} if menu else None
    key = {"refs": refs, "model": "" if "model" in refs else model, "config": config_key, "menu": menu_key}
    job = "label-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    remote.push_files(sorted(out_dir.glob("shard-*.jsonl")), job)  # what this folder has already labeled
    return remote, job, refs


# ------------------------------------------------------------------------------------- dispatching
ACTIVE = ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING")
STALL_SECONDS = float(os.environ.get("POLAR_POOL_STALL_SECONDS", 300))  # no worker online this long: give up
# A running shard with no heartbeat this long is lost. Flow runs send one every PREFECT_FLOWS_HEARTBEAT_FREQUENCY
# seconds (Prefect's default 180, at least 30): the default allows three to go missing.
LOST_SECONDS = float(os.environ.get("POLAR_POOL_LOST_SECONDS", 600))
RETRIES = 3  # resubmissions of one lost shard before it counts as failed


def online_workers(client, pool: str) -> list[str]:
    """Names of the workers of ``pool`` whose last heartbeat is at most three of their intervals old."""
    now = datetime.now(UTC)
    return [
        w.name
        for w in client.read_workers_for_work_pool(work_pool_name=pool)
        if w.last_heartbeat_time
        and now - w.last_heartbeat_time <= timedelta(seconds=3 * (w.heartbeat_interval_seconds or 30))
    ]


def _worker_hint(pool: str) -> str:
    return f"`CUDA_VISIBLE_DEVICES=0 prefect worker start --pool {pool} --type process --limit 1`"


def _ensure_pool(client, pool: str) -> None:
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    try:
        client.read_work_pool(pool)
    except ObjectNotFound:
        with contextlib.suppress(ObjectAlreadyExists):  # another dispatcher made it meanwhile
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))


def _active_runs(client, deployment_id, parameters: dict) -> dict[tuple[int, int], object]:
    """Shard runs of this deployment still queued or running with these ``parameters`` (but for the shard
    itself), keyed by (shard, shards)."""
    from prefect.client.schemas.filters import DeploymentFilter, FlowRunFilter, FlowRunFilterState
    from prefect.client.schemas.objects import StateType

    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id={"any_": [deployment_id]}),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type={"any_": [StateType(s) for s in ACTIVE]})),
    )
    same = [r for r in runs if all(r.parameters.get(k) == v for k, v in parameters.items())]
    return {(r.parameters["shard"], r.parameters["shards"]): r for r in same}


def _require_workers(client, pool: str) -> list:
    """The workers polling ``pool`` (made if missing); ConnectionError when there are none."""
    _ensure_pool(client, pool)
    workers = online_workers(client, pool)
    if not workers:
        raise ConnectionError(f"no worker polls the work pool {pool!r}: start one per GPU, e.g. {_worker_hint(pool)}")
    return workers


def label_on_pool(
    model: str,
    tasks_path: str | Path,
    out_dir: str | Path,
    config: LabelConfig | None = None,
    pool: str = "gpu",
    shards: int = 0,
    limit: int | None = None,
    device: str = "auto",
    restart_on_change: bool = False,
    poll: float = 3.0,
    dense: MenuConfig | None = None,
    engine: EngineConfig | None = None,
) -> Path:
    """Label ``tasks_path`` into ``out_dir`` as ``shards`` flow runs on the work pool ``pool``; merge them.

    Search labels, or with ``dense`` (a menu) a reward matrix. ``shards=0`` makes one shard per online worker.
    With ``$POLAR_STORE_URL`` (the team stack), inputs and records travel through the object store and the
    workers share no folder with this machine; otherwise paths are passed to the workers as absolute paths and
    they must see the same files (the task file, the model and ``out_dir``).

    Raises:
        ModelSpecError: ``model`` names nothing loadable (checked before any server is asked or shard sent).
        ConnectionError: no Prefect server (a temporary one cannot reach workers), it is unreachable, or
            no worker polls ``pool``.
        RuntimeError: some shard runs failed (their labels so far are kept).
    """
    check_spec(model)
    require_prefect(f"--pool {pool}")
    with get_client(sync_client=True) as client:  # before anything is written: a pool nobody polls is an error
        _require_workers(client, pool)
    config = config or LabelConfig()
    if config.shots_from:  # workers start elsewhere: every path they get is absolute
        config = replace(config, shots_from=str(Path(config.shots_from).resolve()))
    model = str(Path(model).resolve()) if Path(model).exists() else model
    tasks_path, out_dir = Path(tasks_path).resolve(), Path(out_dir).resolve()
    ids = [e.id for e in read_examples(tasks_path)[:limit]]
    engine = engine or EngineConfig()
    # The folder records the numerics of ``device`` and ``engine``: a worker that would compute otherwise (another
    # dtype, a GPU where --device says cpu) refuses its shard instead of mixing its labels in.
    labeler = labeler_for(config, dense or MenuConfig(), model, tasks_path, device, engine=engine)
    labeler.prepare(out_dir, restart_on_change)  # once, before any worker writes (a menu is resolved here)
    common, remote = _dispatch_inputs(labeler, out_dir, config, dense, limit, device)
    common["engine"] = engine.to_dict()
    with get_client(sync_client=True) as client:
        shards = shards or len(_require_workers(client, pool))
        submit, runs = _submit_missing(client, pool, common, shards, ids, labeler, out_dir)
        failed, stalled = _follow(client, runs, pool, poll, f"label {Path(model).name} on pool {pool!r}", submit)
    return _collect(labeler, out_dir, ids, remote, common["out"], pool, shards, failed, stalled)


def _dispatch_inputs(
    labeler: Labeler, out_dir: Path, config: LabelConfig, dense: MenuConfig | None, limit: int | None, device: str
) -> tuple[dict, Store | None]:
    """The parameters every shard run gets, but for its shard; with a store, the job's inputs are sent there.

    Returns:
        The parameters, and the store (None when the workers share this machine's files).
    """
    # The workers label with the menu file that prepare left, as it is (no discovery run needed).
    menu = asdict(replace(dense, menu=str(out_dir / MENU_FILE), discovery="")) if dense and dense.menu else None
    common = {
        "model": labeler.model,
        "tasks": str(labeler.tasks),
        "out": str(out_dir),
        "config": json.loads(json.dumps(config.to_dict())),  # as the server gives it back
        "limit": limit,
        "device": device,
        "menu": menu,
    }
    if (url := store_url()) is None:
        return common, None
    check_store(url)  # workers elsewhere: inputs and records go through the store
    store = f"{url}/labels"
    remote, job, refs = _send_inputs(store, labeler.model, Path(labeler.tasks), out_dir, config, menu)
    remote.pull_files(job, out_dir)  # what workers of an earlier run of this command labeled
    common |= {"out": job, "store": store, "refs": refs, "tasks": Path(labeler.tasks).name}
    if menu:
        common["menu"] = {**menu, "menu": MENU_FILE}
    return common, remote


def _submit_missing(
    client, pool: str, common: dict, shards: int, ids: list[str], labeler: Labeler, out_dir: Path
) -> tuple[Callable[[int], object], dict]:
    """Submit a run for every shard with inputs left, re-attaching to runs of it still queued or running.

    Returns:
        ``submit(shard)``, which submits one shard's run again, and the runs by shard.
    """
    deployment_id = shard_deployment(pool).apply(work_pool_name=pool)
    running = _active_runs(client, deployment_id, common)

    def submit(k: int):
        return run_deployment(
            f"{DEPLOYMENT_FLOW}/{pool}",
            parameters={**common, "shard": k, "shards": shards},
            timeout=0,
            as_subflow=False,
            tags=["polar", "label"],
        )

    done = {r.id for r in read_records(out_dir, labeler.record_kind)}
    runs = {}
    for k in range(shards):
        if all(i in done for i in ids[k::shards]):
            continue  # labeled by an earlier run
        runs[k] = running[k, shards] if (k, shards) in running else submit(k)
    return submit, runs


def _collect(
    labeler: Labeler,
    out_dir: Path,
    ids: list[str],
    remote: Store | None,
    job: str,
    pool: str,
    shards: int,
    failed: list,
    stalled: list,
) -> Path:
    """Bring every worker's records here, say which shards stalled or failed, else merge them.

    Returns:
        The merged file.
    """
    if remote is not None:
        remote.pull_files(job, out_dir)  # every worker's records, kept here whatever happens next
    if stalled:
        raise RuntimeError(
            f"no worker has polled the work pool {pool!r} for {STALL_SECONDS:.0f} s while shards "
            f"{', '.join(f'{k}/{shards}' for k in stalled)} were not done; labels made so far are kept: start "
            f"workers ({_worker_hint(pool)}) and run the same command again"
        )
    if failed:
        lines = [
            f"shard {k}/{shards}: flow run {run.name} ({run.id}) ended {run.state.type.value}" for k, run in failed
        ]
        raise RuntimeError(
            "some shards failed; labels made so far are kept, and the same command resumes them:\n  "
            + "\n  ".join(lines)
            + "\nsee `prefect flow-run logs ID` for each"
        )
    merged = labeler.finish(out_dir, ids)
    if remote is not None:
        remote.drop_job(job)  # merged here; the job's shards in the store are spent
    return merged


def _last_heartbeat(client, run) -> datetime | None:
    """When the flow run last said it was alive: its latest heartbeat event, else its start."""
    from prefect.events.filters import (
        EventFilter,
        EventNameFilter,
        EventOccurredFilter,
        EventOrder,
        EventResourceFilter,
    )

    since = run.start_time or datetime.now(UTC) - timedelta(days=1)
    page = client.read_events(
        EventFilter(
            occurred=EventOccurredFilter(since=since),
            event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
            resource=EventResourceFilter(id=[f"prefect.flow-run.{run.id}"]),
            order=EventOrder.DESC,
        ),
        limit=1,
    )
    return page.events[0].occurred if page.events else run.start_time


def _lost(client, run) -> bool:
    """A running shard whose process has sent no heartbeat for ``LOST_SECONDS`` (its machine died, its worker
    was killed): Prefect keeps it "running" for ever."""
    if not run.state or run.state.type.value != "RUNNING":
        return False
    last = _last_heartbeat(client, run)
    return last is not None and (datetime.now(UTC) - last).total_seconds() > LOST_SECONDS


def _follow(client, runs: dict, pool: str, poll: float, desc: str, resubmit) -> tuple[list, list]:
    """Wait for every flow run in ``runs`` to end, with a progress bar.

    A run that crashed (its process died), or that was lost with its worker (no heartbeat for ``LOST_SECONDS``:
    it is then marked crashed), has its shard submitted again (``resubmit(shard)``), up to ``RETRIES`` times;
    the new run resumes from the records already made. A run that failed (labeling raised) is not retried.

    Returns the (shard, run) pairs that failed, and the shards left waiting when no worker of ``pool``
    has been online for ``STALL_SECONDS``.
    """
    from prefect.states import Crashed

    pending, failed, retries = dict(runs), [], dict.fromkeys(runs, 0)
    last_seen = checked = time.monotonic()
    with tqdm(total=len(runs), desc=desc, unit="shard") as bar:
        while pending:
            check_lost = time.monotonic() - checked > min(30.0, LOST_SECONDS / 4)
            for k, run in list(pending.items()):
                run = client.read_flow_run(run.id)
                why = None
                if run.state and run.state.is_crashed():  # its process or machine died, not the labeling
                    why = f"crashed: {run.state.message or 'its process ended'}"
                elif run.state and run.state.is_final():
                    del pending[k]
                    bar.update()
                    if not run.state.is_completed():
                        failed.append((k, run))
                elif check_lost and _lost(client, run):
                    why = f"lost: no heartbeat for {LOST_SECONDS:.0f} s, its worker is gone"
                    client.set_flow_run_state(run.id, Crashed(message=why), force=True)
                if why is None:
                    continue
                if retries[k] < RETRIES:
                    retries[k] += 1
                    tqdm.write(f"shard {k}: flow run {run.name} {why}; submitted again (it resumes)", file=sys.stderr)
                    pending[k] = resubmit(k)
                else:
                    del pending[k]
                    bar.update()
                    failed.append((k, client.read_flow_run(run.id)))
            if check_lost:
                checked = time.monotonic()
            if not pending:
                break
            if online_workers(client, pool):
                last_seen = time.monotonic()
            elif time.monotonic() - last_seen > STALL_SECONDS:
                return failed, sorted(pending)
            time.sleep(poll)
    return failed, []
