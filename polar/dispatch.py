"""Label on a Prefect work pool: split a task file into shards, one flow run each, then merge.

This is how labeling scales past one machine: ``prefect worker start --pool gpu --limit 1`` on every
GPU (one shard at a time each), and ``polar label --pool gpu`` submits the shards, follows them with a
progress bar and merges the labels when all are done. A shard run is an ordinary resumable
``polar label --shard K/N`` (flows/labeling.py), so a failed or killed shard loses at most the input it
was on: running the same command again re-submits only the shards with inputs left, and re-attaches
to shard runs still queued or running instead of starting them twice.
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tqdm import tqdm

from polar.label import LabelConfig, finish, prepare, read_examples, read_records
from polar.pipeline import check_prefect, load_flows

__all__ = ["label_on_pool", "online_workers"]

ACTIVE = ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING")


def online_workers(client, pool: str, within: float = 90.0) -> list[str]:
    """Names of the workers of ``pool`` that sent a heartbeat in the last ``within`` seconds."""
    recent = datetime.now(UTC) - timedelta(seconds=within)
    workers = client.read_workers_for_work_pool(work_pool_name=pool)
    return [w.name for w in workers if w.last_heartbeat_time and w.last_heartbeat_time >= recent]


def _ensure_pool(client, pool: str) -> None:
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    try:
        client.read_work_pool(pool)
    except ObjectNotFound:
        with contextlib.suppress(ObjectAlreadyExists):  # another dispatcher made it meanwhile
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))


def _active_runs(client, deployment_id, out: str) -> dict[tuple[int, int], object]:
    """Shard runs of this deployment for ``out`` still queued or running, keyed by (shard, shards)."""
    from prefect.client.schemas.filters import DeploymentFilter, FlowRunFilter, FlowRunFilterState
    from prefect.client.schemas.objects import StateType

    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id={"any_": [deployment_id]}),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type={"any_": [StateType(s) for s in ACTIVE]})),
    )
    return {(r.parameters["shard"], r.parameters["shards"]): r for r in runs if r.parameters.get("out") == out}


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
) -> Path:
    """Label ``tasks_path`` into ``out_dir`` as ``shards`` flow runs on the work pool ``pool``; merge them.

    ``shards=0`` makes one shard per online worker. Paths are passed to the workers as absolute paths:
    they must see the same files (this checkout, the task file and ``out_dir``).

    Raises:
        ConnectionError: no Prefect server (a temporary one cannot reach workers), it is unreachable, or
            no worker polls ``pool``.
        RuntimeError: some shard runs failed (their labels so far are kept).
    """
    from prefect import get_client
    from prefect.deployments import run_deployment

    if check_prefect() is None:
        raise ConnectionError(
            f"--pool {pool} needs a Prefect server that workers also reach: `prefect server start`, then "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api` here and where the workers run"
        )
    config = config or LabelConfig()
    model = str(Path(model).resolve()) if Path(model).exists() else model
    tasks_path, out_dir = Path(tasks_path).resolve(), Path(out_dir).resolve()
    examples = read_examples(tasks_path)[:limit]
    ids = [e.id for e in examples]
    prepare(model, tasks_path, out_dir, config, restart_on_change)  # once, before any worker writes

    with get_client(sync_client=True) as client:
        _ensure_pool(client, pool)
        workers = online_workers(client, pool)
        if not workers:
            raise ConnectionError(
                f"no worker polls the work pool {pool!r}: start one per GPU, e.g. "
                f"`CUDA_VISIBLE_DEVICES=0 prefect worker start --pool {pool} --type process --limit 1`"
            )
        shards = shards or len(workers)
        flows = load_flows("labeling")
        deployment_id = flows.shard_deployment(pool).apply(work_pool_name=pool)
        running = _active_runs(client, deployment_id, str(out_dir))
        done = {r["id"] for r in read_records(out_dir)}
        runs = {}
        for k in range(shards):
            if all(i in done for i in ids[k::shards]):
                continue  # labeled by an earlier run
            if (k, shards) in running:
                runs[k] = running[k, shards]
                continue
            runs[k] = run_deployment(
                f"{flows.DEPLOYMENT_FLOW}/{pool}",
                parameters={
                    "model": model,
                    "tasks": str(tasks_path),
                    "out": str(out_dir),
                    "config": config.to_dict(),
                    "shard": k,
                    "shards": shards,
                    "limit": limit,
                    "device": device,
                },
                timeout=0,
                as_subflow=False,
                tags=["polar", "label"],
            )
        failed = _follow(client, runs, poll, f"label {Path(model).name} on pool {pool!r} ({len(workers)} workers)")
    if failed:
        lines = [
            f"shard {k}/{shards}: flow run {run.name} ({run.id}) ended {run.state.type.value}" for k, run in failed
        ]
        raise RuntimeError(
            "some shards failed; labels made so far are kept, and the same command resumes them:\n  "
            + "\n  ".join(lines)
            + "\nsee `prefect flow-run logs ID` for each"
        )
    return finish(model, tasks_path, out_dir, config, ids)


def _follow(client, runs: dict, poll: float, desc: str) -> list:
    """Wait for every flow run in ``runs`` to end, with a progress bar; return the (shard, run) that failed."""
    pending, failed = dict(runs), []
    with tqdm(total=len(runs), desc=desc, unit="shard") as bar:
        while pending:
            for k, run in list(pending.items()):
                run = client.read_flow_run(run.id)
                if run.state and run.state.is_final():
                    del pending[k]
                    bar.update()
                    if not run.state.is_completed():
                        failed.append((k, run))
            if pending:
                time.sleep(poll)
    return failed
