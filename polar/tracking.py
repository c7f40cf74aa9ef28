"""MLflow set-up: which tracking server, the experiment, and the git commit that runs are tagged with.

The embedded default is a local SQLite store (``mlflow/mlflow.db``) with an artifact folder beside it
(``mlflow/artifacts``); ``MLFLOW_TRACKING_URI`` or ``--tracking-uri`` points elsewhere (``http://host:5000``
for a team server). The registry, lineage and the pipeline's run all start here.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from polar.servers import check_reachable

__all__ = ["EXPERIMENT", "PARENT_ENV", "configure", "default_tracking_uri", "git_commit"]

EXPERIMENT = "polar"
DEFAULT_STORE = Path("mlflow")
PARENT_ENV = "POLAR_PIPELINE_RUN_ID"  # the pipeline's MLflow run, set by flows/pipeline.py for its stages
_SERVER_FIX = (
    "start it (mlflow server --backend-store-uri sqlite:///mlflow/mlflow.db --port 5000), point "
    "MLFLOW_TRACKING_URI or --tracking-uri at a running one, or unset both for the local SQLite store"
)


def default_tracking_uri(root: str | Path = ".") -> str:
    """``$MLFLOW_TRACKING_URI``, else the SQLite store ``mlflow/mlflow.db`` of the project at ``root``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(root) / DEFAULT_STORE / 'mlflow.db').resolve()}"


def configure(tracking_uri: str | None = None, root: str | Path = ".") -> str:
    """Point MLflow at ``tracking_uri`` (default: the local SQLite store under ``root``), create the experiment once."""
    import mlflow

    uri = tracking_uri or default_tracking_uri(root)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if uri.startswith(("http://", "https://")):
        check_reachable(uri.rstrip("/") + "/health", "MLflow tracking server", _SERVER_FIX)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    try:
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            location = (
                (Path(root) / DEFAULT_STORE / "artifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
            )
            client.create_experiment(EXPERIMENT, artifact_location=location)
    except Exception as err:  # MlflowException, connection errors: say which server and how to fix it
        if "already exists" in str(err):
            return uri
        raise ConnectionError(
            f"MLflow tracking server {uri} is not usable ({type(err).__name__}: {str(err)[:200]}); {_SERVER_FIX}"
        ) from err
    mlflow.set_experiment(EXPERIMENT)
    return uri


def git_commit(cwd: str | Path = ".") -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True).stdout
        return out.stdout.strip() + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
