"""Fail fast, with the fix, when a tracking or orchestration server is not there.

MLflow's and Prefect's clients retry a dead server for minutes (MLflow: 7 retries with backoff, about
4 minutes) before they give up with a connection traceback. One short probe of the server's health
endpoint first turns that into an error that names the server and how to start it.
"""

from __future__ import annotations

import httpx

__all__ = ["check_reachable"]


def check_reachable(url: str, what: str, fix: str, timeout: float = 5.0) -> None:
    """GET ``url`` (a health endpoint); raise :class:`ConnectionError` naming ``what`` and ``fix`` unless it answers.

    Any HTTP answer below 500 counts as reachable (an auth error is a different problem, reported by the
    client itself with its own message).
    """
    try:
        response = httpx.get(url, timeout=timeout, follow_redirects=True)
    except httpx.HTTPError as err:
        raise ConnectionError(f"{what} at {url} is unreachable ({type(err).__name__}: {err}); {fix}") from err
    if response.status_code >= 500:
        raise ConnectionError(f"{what} at {url} answered HTTP {response.status_code}; {fix}")
