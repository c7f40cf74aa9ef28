"""GPU-scheduled labeling: one Prefect flow run per shard of a task file, on a work pool's workers.

``polar label --pool gpu`` (and the label stage with ``label.pool: gpu`` in params.yaml) registers the
deployment ``polar-label-shard/<pool>`` and submits one run of it per shard; each run labels inputs
``k, k+n, k+2n, ...`` into the shared label folder (resumable, like any ``polar label``) on the GPU of
the worker that picked it up, or its CPU where it has none. Start one worker per GPU, each taking one
shard at a time:

    CUDA_VISIBLE_DEVICES=0 prefect worker start --pool gpu --type process --limit 1
    CUDA_VISIBLE_DEVICES=1 prefect worker start --pool gpu --type process --limit 1

Workers need this checkout (same path) and the label folder on a file system they share.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

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
) -> dict:
    """Label shard ``shard`` of ``shards`` of ``tasks`` into ``out``; merges when it is the last to finish."""
    import torch

    from polar.label import LabelConfig, label

    where = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    get_run_logger().info("labeling shard %d/%d of %s on %s", shard, shards, tasks, where)
    merged = label(model, tasks, out, LabelConfig.from_dict(config), limit=limit, device=device, shard=(shard, shards))
    return {"shard": shard, "shards": shards, "device": where, "merged": str(merged) if merged else None}


def shard_deployment(pool: str):
    """The labeling deployment for ``pool``, run by process workers from this checkout."""
    deployment = label_shard.to_deployment(name=pool, description="One shard of `polar label` (flows/labeling.py).")
    deployment.entrypoint = f"{Path(__file__).resolve()}:{label_shard.fn.__name__}"  # from any working directory
    return deployment
