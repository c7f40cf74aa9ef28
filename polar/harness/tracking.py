"""Harness results as MLflow metrics of a registered version's run (``polar lm-eval --log-to models:/NAME@ALIAS``).

The version's run (the one :func:`polar.registry.register` made) gets one metric per task and metric,
``harness.<task>.<metric>`` (and ``..._stderr``), the layers / D the documents ran, and the results themselves as
the artifact ``harness/<tasks>.json``; a sweep logs one set per program, ``.../program:<program>``.
"""

from __future__ import annotations

import re
import time

from polar.harness.sweep import SweepRow, metrics_of

__all__ = ["flat_metrics", "log_to_version", "resolve_version", "sweep_metrics"]

_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))")


def _key(text: str) -> str:
    """A metric name MLflow accepts (letters, digits, ``_ - . / :`` and spaces)."""
    return re.sub(r"[^\w\-./: ]", "_", text)


def flat_metrics(results: dict, suffix: str = "") -> dict[str, float]:
    """``harness.<task>.<metric>[_stderr]`` and ``harness.<task>.layers_ratio`` for every task of lm-eval's results."""
    flat = {}
    tasks = results.get("config", {}).get("polar", {}).get("tasks", {})
    for task in results.get("results", {}):
        for name, (value, stderr) in metrics_of(results, task).items():
            flat[_key(f"harness.{task}.{name}{suffix}")] = value
            if stderr is not None:
                flat[_key(f"harness.{task}.{name}_stderr{suffix}")] = stderr
        if task in tasks:
            flat[_key(f"harness.{task}.layers_ratio{suffix}")] = tasks[task]["layers_ratio"]
    return flat


def sweep_metrics(rows: list[SweepRow], task: str) -> dict[str, float]:
    """One set of metrics per program of a sweep: ``harness.<task>.<metric>/program:<program>``."""
    flat = {}
    for row in rows:
        suffix = f"/program:{row.program.replace(',', '_')}"
        for name, (value, stderr) in row.metrics.items():
            flat[_key(f"harness.{task}.{name}{suffix}")] = value
            if stderr is not None:
                flat[_key(f"harness.{task}.{name}_stderr{suffix}")] = stderr
        flat[_key(f"harness.{task}.layers_ratio{suffix}")] = row.layers_ratio
    return flat


def resolve_version(model_uri: str, tracking_uri: str | None = None):
    """The registered model version named by ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.

    Raises:
        ValueError: the URI is of another form, or the registry has no such version.
    """
    import mlflow

    from polar.tracking import configure

    match = _URI.fullmatch(model_uri)
    if match is None:
        raise ValueError(f"--log-to {model_uri!r}: write models:/NAME@ALIAS or models:/NAME/VERSION")
    configure(tracking_uri)
    client = mlflow.MlflowClient()
    try:
        if match["alias"]:
            return client.get_model_version_by_alias(match["name"], match["alias"])
        return client.get_model_version(match["name"], match["version"])
    except mlflow.exceptions.MlflowException as err:
        raise ValueError(
            f"{model_uri}: no such registered version at {mlflow.get_tracking_uri()} ({err.message})"
        ) from err


def log_to_version(
    model_uri: str, metrics: dict[str, float], artifact: dict | None = None, name: str = "results",
    tracking_uri: str | None = None,
) -> str:  # fmt: skip
    """Log ``metrics`` (and ``artifact`` as ``harness/<name>.json``) to the run of the registered version.

    Returns:
        The run id.
    """
    import mlflow
    from mlflow.entities import Metric

    version = resolve_version(model_uri, tracking_uri)
    run_id = version.tags.get("run_id") or version.run_id
    if not run_id:
        raise ValueError(f"{model_uri} (version {version.version}) has no run to log to")
    client = mlflow.MlflowClient()
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())])
    if artifact is not None:
        client.log_dict(run_id, artifact, f"harness/{_key(name).replace('/', '_')}.json")
    return run_id
