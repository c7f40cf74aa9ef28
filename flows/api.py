"""The Prefect server in use."""

from __future__ import annotations

import os

from prefect.settings import PREFECT_API_URL

from polar.servers import check_reachable

__all__ = ["check_prefect"]


def check_prefect() -> str | None:
    """The Prefect API in use, checked to answer; None for Prefect's temporary local server."""
    url = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    if not url:
        return None
    check_reachable(
        url.rstrip("/") + "/health",
        "Prefect server",
        "start it (prefect server start), or unset PREFECT_API_URL (prefect config unset PREFECT_API_URL) "
        "to run on a temporary local server",
    )
    return url


def require_prefect(what: str) -> str:
    """The Prefect API that ``what`` (e.g. ``--pool gpu``) needs for workers on other processes or machines.

    Raises:
        ConnectionError: Prefect's temporary local server is in use (no worker can reach it), or the server
            does not answer.
    """
    url = check_prefect()
    if url is None:
        raise ConnectionError(
            f"{what} needs a Prefect server that workers also reach: `prefect server start`, then "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api` here and where the workers run"
        )
    return url
