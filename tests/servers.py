"""Real servers on loopback for the tests: start one, wait until it answers, stop it afterwards."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_with_bin(**extra: str) -> dict:
    """This environment with the venv's scripts first on PATH, plus ``extra``."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def wait_until_up(server: subprocess.Popen, url: str, what: str, seconds: int = 180) -> None:
    """Poll ``url`` until the server answers; fail with its output if it exits or takes too long."""
    deadline = time.time() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            assert server.poll() is None, f"{what} exited:\n" + server.stdout.read().decode()[-3000:]
            assert time.time() < deadline, f"{what} did not start in {seconds} s"
            time.sleep(1)


@contextlib.contextmanager
def running(
    cmd: list[str],
    env: dict,
    health: str | None,
    what: str,
    log: Path | None = None,
    cwd: Path | None = None,
    group: bool = False,
) -> Iterator:
    """Start ``cmd`` (in ``cwd``; with ``group``, as the leader of its own process group, which a test can kill
    whole); wait until ``health`` answers (when given); terminate it on exit."""
    out = log.open("wb") if log else subprocess.PIPE
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=group)
    try:
        if health:
            wait_until_up(proc, health, what)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log:
            out.close()
