"""Files through the team stack's object store, for workers that share no folder with the dispatcher.

* **Inputs by content.** A file goes to ``blobs/sha256/<hash>`` once (uploading the same bytes again is a
  no-op); a folder (a model) is a manifest of its files' hashes, itself a blob. A reference
  (``{"kind", "name", "sha256"}``) names either, and :meth:`Store.get` materialises it in a local cache keyed
  by the hash, once, atomically (a crash never leaves half a file under a final name).
* **Records by job.** A labeling job's shard files live under ``jobs/<job>/``: each worker uploads its own
  shard after every record (a killed worker loses at most the input it was on), pulls the job's shards
  before it starts (resuming where any machine left off), and the dispatcher pulls them all to merge.
* **One owner per shard.** A shard run claims its shard (``jobs/<job>/owner-<shard>``: the newest claim wins) and
  checks the claim before each upload. A run the dispatcher gave up for lost (no heartbeat: a partition, not a
  death) that comes back finds its shard taken over by the run submitted again, and stops instead of labeling
  the same inputs twice.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlparse

from polar.hashing import sha256_file

__all__ = ["Store", "Superseded", "cache_dir"]

CACHE_ENV = "POLAR_CACHE_DIR"


def cache_dir() -> Path:
    """Where a worker keeps what it fetched from the store: ``$POLAR_CACHE_DIR``, else ``~/.cache/polar``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "polar").resolve()


class Superseded(RuntimeError):
    """This run's shard was submitted again and claimed by another run."""


class Store:
    """The object store at ``url`` (``s3://BUCKET[/PREFIX]``), reached with the environment's endpoint and key pair."""

    def __init__(self, url: str) -> None:
        from polar.stack.client import s3_client

        parsed = urlparse(url)
        self.url = url.rstrip("/")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self._s3 = s3_client()

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p)

    # ------------------------------------------------------------------ raw objects
    def exists(self, key: str) -> bool:
        import botocore.exceptions

        try:
            self._s3.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as err:
            if err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise
        return True

    def upload(self, path: Path, key: str) -> None:
        self._s3.upload_file(str(path), self.bucket, key)

    def download(self, key: str, path: Path) -> Path:
        """``key`` to ``path``, through a temporary file in the same folder (atomic)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.close(fd)
        try:
            self._s3.download_file(self.bucket, key, tmp)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return path

    def list(self, prefix: str) -> list[str]:
        keys, token = [], None
        while True:
            page = self._s3.list_objects_v2(
                Bucket=self.bucket, Prefix=prefix, **({"ContinuationToken": token} if token else {})
            )
            keys += [o["Key"] for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return keys
            token = page["NextContinuationToken"]

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": k} for k in keys[start : start + 1000]]
            if chunk:
                self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True})

    # ------------------------------------------------------------------ content-addressed inputs
    def _put_blob(self, path: Path) -> str:
        sha = sha256_file(path)
        key = self.key("blobs", "sha256", sha)
        if not self.exists(key):
            self.upload(path, key)
        return sha

    def put(self, path: str | Path) -> dict:
        """Upload a file or a folder by content; the reference that :meth:`get` takes."""
        path = Path(path)
        if path.is_file():
            return {"kind": "file", "name": path.name, "sha256": self._put_blob(path)}
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such file or folder to send to the store")
        files = {str(p.relative_to(path)): self._put_blob(p) for p in sorted(path.rglob("*")) if p.is_file()}
        with tempfile.TemporaryDirectory() as tmp:
            manifest = Path(tmp) / "manifest.json"
            manifest.write_text(json.dumps(files, sort_keys=True))
            sha = self._put_blob(manifest)
        return {"kind": "dir", "name": path.name, "sha256": sha}

    def get(self, ref: dict, cache: Path | None = None) -> Path:
        """The local copy of ``ref`` under ``cache`` (fetched once; later calls find it)."""
        root = (cache or cache_dir()) / "store" / ref["sha256"]
        target = root / ref["name"]
        done = root / ".complete"
        if done.exists():
            return target
        blob = self.key("blobs", "sha256", ref["sha256"])
        if ref["kind"] == "file":
            self.download(blob, target)
        else:
            manifest = json.loads(self.download(blob, root / ".manifest.json").read_text())
            for rel, sha in manifest.items():
                self.download(self.key("blobs", "sha256", sha), target / rel)
        done.write_text("")
        return target

    # ------------------------------------------------------------------ job records
    def push_files(self, paths: list[Path], job: str) -> None:
        for path in paths:
            self.upload(path, self.key("jobs", job, path.name))

    def pull_files(self, job: str, folder: Path, pattern: str = "shard-") -> list[Path]:
        """Download the job's files whose names start with ``pattern`` into ``folder``."""
        got = []
        for key in self.list(self.key("jobs", job) + "/"):
            name = key.rsplit("/", 1)[-1]
            if name.startswith(pattern):
                got.append(self.download(key, folder / name))
        return got

    def drop_job(self, job: str) -> None:
        self.delete(self.list(self.key("jobs", job) + "/"))

    def claim(self, job: str, shard: str) -> str:
        """Make the calling run the owner of ``shard`` of ``job``; returns its token for :meth:`check`."""
        token = uuid.uuid4().hex
        self._s3.put_object(Bucket=self.bucket, Key=self.key("jobs", job, f"owner-{shard}"), Body=token.encode())
        return token

    def check(self, job: str, shard: str, token: str) -> None:
        """Raise :class:`Superseded` unless ``token`` still owns ``shard`` of ``job``."""
        body = self._s3.get_object(Bucket=self.bucket, Key=self.key("jobs", job, f"owner-{shard}"))["Body"]
        if body.read().decode() != token:
            raise Superseded(
                f"shard {shard} of job {job} was submitted again and another run took it over (this run was given "
                "up for lost): this run stops; its records are in the store and the other run goes on from them"
            )
