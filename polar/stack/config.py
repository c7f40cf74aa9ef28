"""Where the team stack lives, what it listens on, its credentials, and the URLs that users and workers get.

One folder holds everything the stack keeps (``stack/`` by default, or ``$POLAR_STACK_DIR``)::

    stack/
      stack.json        host, ports and bucket, fixed at the first `polar stack up`
      credentials.env   the PostgreSQL password and the object store's key pair (mode 600; git ignores stack/)
      postgres/         PostgreSQL's data directory (Prefect's and MLflow's databases)
      s3/               SeaweedFS's volumes and filer (the object store: MLflow artifacts, the DVC remote)
      prefect/          the Prefect server's home
      logs/             each service's log

Credentials come from the environment when set (``POLAR_STACK_POSTGRES_PASSWORD``,
``POLAR_STACK_S3_ACCESS_KEY``, ``POLAR_STACK_S3_SECRET_KEY``), else from ``credentials.env``, which the first
``up`` writes with random values. They are never read from the repository.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

__all__ = [
    "CREDENTIAL_KEYS",
    "DEFAULT_PORTS",
    "Credentials",
    "Stack",
    "free_port",
    "load_stack",
    "stack_dir",
]

DIR_ENV = "POLAR_STACK_DIR"
DEFAULT_DIR = Path("stack")
STATE_FILE = "stack.json"
CREDENTIALS_FILE = "credentials.env"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# The ports users know for each server. SeaweedFS's internal ports (master, volume, filer, their gRPC and the
# admin UI) are picked free at the first `up` and kept.
DEFAULT_PORTS = {"postgres": 5432, "s3": 8333, "prefect": 4200, "mlflow": 5000}
INTERNAL_PORTS = (
    "weed_master",
    "weed_master_grpc",
    "weed_volume",
    "weed_volume_grpc",
    "weed_filer",
    "weed_filer_grpc",
    "weed_s3_grpc",
    "weed_admin",
    "weed_admin_grpc",
)
CREDENTIAL_KEYS = {
    "postgres_password": "POLAR_STACK_POSTGRES_PASSWORD",
    "s3_access_key": "POLAR_STACK_S3_ACCESS_KEY",
    "s3_secret_key": "POLAR_STACK_S3_SECRET_KEY",
}


def stack_dir(path: str | Path | None = None) -> Path:
    """``path``, else ``$POLAR_STACK_DIR``, else ``./stack``; absolute."""
    return Path(path or os.environ.get(DIR_ENV) or DEFAULT_DIR).resolve()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host if host in LOOPBACK else "0.0.0.0", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Credentials:
    postgres_password: str
    s3_access_key: str
    s3_secret_key: str

    @classmethod
    def load(cls, root: Path, create: bool = False) -> Credentials:
        """The environment's values over ``credentials.env``'s; with ``create``, random ones written there first.

        Raises:
            FileNotFoundError: no credentials file and ``create`` is false (the stack was never started here).
            ValueError: the file is malformed, or the environment disagrees with the stack's own credentials.
        """
        path = root / CREDENTIALS_FILE
        stored: dict[str, str] = {}
        if path.exists():
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                key, sep, value = line.partition("=")
                if not sep:
                    raise ValueError(f"{path}:{n}: expected NAME=VALUE, got {line!r}")
                stored[key.strip()] = value.strip()
        elif not create:
            raise FileNotFoundError(f"{path} does not exist: start the stack once with `polar stack up --dir {root}`")
        values = {}
        for name, env in CREDENTIAL_KEYS.items():
            given, kept = os.environ.get(env), stored.get(env)
            if given and kept and given != kept:
                raise ValueError(
                    f"{env} differs from the value the stack was created with ({path}); unset it, or change the "
                    "credential in the servers first"
                )
            values[name] = given or kept or ""
        if not all(values.values()):
            if path.exists():
                missing = [CREDENTIAL_KEYS[k] for k, v in values.items() if not v]
                raise ValueError(f"{path} lacks {', '.join(missing)}")
            values = {
                k: v or (secrets.token_hex(10) if k == "s3_access_key" else secrets.token_urlsafe(24))
                for k, v in values.items()
            }
        if not path.exists():
            root.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write("# polar team stack credentials: keep this file private, back it up with the stack folder\n")
                f.writelines(f"{CREDENTIAL_KEYS[k]}={v}\n" for k, v in values.items())
        return cls(**values)


@dataclass(frozen=True)
class Stack:
    """The stack's fixed settings (``stack.json``) and the paths and URLs that follow from them."""

    root: Path
    host: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=dict)
    bucket: str = "polar"

    # ------------------------------------------------------------------ paths
    @property
    def pgdata(self) -> Path:
        return self.root / "postgres"

    @property
    def s3_dir(self) -> Path:
        return self.root / "s3"

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def credentials(self) -> Credentials:
        return Credentials.load(self.root)

    # ------------------------------------------------------------------ URLs
    @property
    def advertised(self) -> str:
        """The host name that clients use: the bound address, or this machine's name when bound to all."""
        return socket.gethostname() if self.host in ("0.0.0.0", "::") else self.host

    def url(self, service: str, host: str | None = None) -> str:
        host = host or self.advertised
        port = self.ports[service]
        return {
            "postgres": f"postgresql://{host}:{port}",
            "s3": f"http://{host}:{port}",
            "prefect": f"http://{host}:{port}/api",
            "mlflow": f"http://{host}:{port}",
        }[service]

    def database_url(self, database: str, driver: str, host: str = "127.0.0.1") -> str:
        """SQLAlchemy URL of one database, for the servers that run beside PostgreSQL (``host``: loopback)."""
        from urllib.parse import quote

        password = quote(self.credentials().postgres_password, safe="")
        return f"postgresql+{driver}://polar:{password}@{host}:{self.ports['postgres']}/{database}"

    @property
    def store_url(self) -> str:
        return f"s3://{self.bucket}"

    def client_env(self) -> dict[str, str]:
        """What users and workers export to use the stack (``polar stack env``): URLs and the store's key pair."""
        creds = self.credentials()
        return {
            "PREFECT_API_URL": self.url("prefect"),
            "MLFLOW_TRACKING_URI": self.url("mlflow"),
            "POLAR_STORE_URL": self.store_url,
            "AWS_ENDPOINT_URL_S3": self.url("s3"),
            "AWS_ACCESS_KEY_ID": creds.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": creds.s3_secret_key,
        }

    # ------------------------------------------------------------------ state
    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        data = {k: v for k, v in asdict(self).items() if k != "root"}
        (self.root / STATE_FILE).write_text(json.dumps(data, indent=2) + "\n")


def load_stack(
    root: str | Path | None = None,
    host: str | None = None,
    ports: dict[str, int | None] | None = None,
    create: bool = False,
) -> Stack:
    """The stack in ``root`` (see :func:`stack_dir`), as its first ``up`` fixed it.

    With ``create``, a stack not made yet gets ``host`` (default loopback), the given ``ports`` over the
    defaults, free internal ports and credentials. Asking an existing stack for a different host or port is
    an error: its servers and clients already know the old ones.

    Raises:
        FileNotFoundError: no stack in ``root`` and not ``create``.
        ValueError: ``host`` or ``ports`` differ from the stack's, or ``stack.json`` is broken.
    """
    root = stack_dir(root)
    given = {k: v for k, v in (ports or {}).items() if v}
    unknown = set(given) - set(DEFAULT_PORTS)
    if unknown:
        raise ValueError(f"unknown service(s) {sorted(unknown)}; the stack has {sorted(DEFAULT_PORTS)}")
    path = root / STATE_FILE
    if path.exists():
        try:
            data = json.loads(path.read_text())
            stack = Stack(root=root, host=data["host"], ports=dict(data["ports"]), bucket=data["bucket"])
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path} is not a stack file ({err}); move it away and run `polar stack up`") from err
        changed = {k: (stack.ports[k], v) for k, v in given.items() if stack.ports.get(k) != v}
        if host and host != stack.host:
            changed["host"] = (stack.host, host)
        if changed:
            what = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
            raise ValueError(
                f"the stack in {root} was created with other settings ({what}): leave the options out, or give "
                f"the new stack its own folder (--dir)"
            )
        return stack
    if not create:
        raise FileNotFoundError(f"no stack in {root}: start one with `polar stack up` (or give --dir / ${DIR_ENV})")
    host = host or "127.0.0.1"
    chosen = {**DEFAULT_PORTS, **given}
    for name in INTERNAL_PORTS:
        port = free_port(host)
        while port in chosen.values():
            port = free_port(host)
        chosen[name] = port
    stack = replace(Stack(root=root, host=host), ports=chosen)
    Credentials.load(root, create=True)
    stack.save()
    return stack
