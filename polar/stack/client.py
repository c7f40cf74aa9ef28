"""The client side of the team stack: what a checkout needs, from URLs and a key pair in its environment alone.

``polar stack env`` prints the variables (``PREFECT_API_URL``, ``MLFLOW_TRACKING_URI``, ``POLAR_STORE_URL``,
``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``). Prefect and MLflow read theirs
themselves; this module checks the object store and makes it this checkout's DVC remote.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

__all__ = ["STORE_ENV", "REMOTE", "check_store", "store_url", "use_store_remote"]

STORE_ENV = "POLAR_STORE_URL"
REMOTE = "stack"  # the DVC remote's name in .dvc/config.local
_FIX = 'export the stack\'s settings (eval "$(polar stack env)" where the stack runs, or ask its admin)'


def store_url() -> str | None:
    """``$POLAR_STORE_URL`` (``s3://BUCKET``), or None when this checkout does not use a stack."""
    url = os.environ.get(STORE_ENV, "").strip().rstrip("/")
    if not url:
        return None
    if urlparse(url).scheme != "s3" or not urlparse(url).netloc:
        raise ValueError(f"{STORE_ENV}={url!r}: expected s3://BUCKET[/PREFIX]")
    return url


def s3_client(endpoint: str | None = None, access_key: str | None = None, secret_key: str | None = None):
    """A boto3 S3 client that fails within seconds, not after minutes of retries. What is not given comes from
    the environment (AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), read afresh: boto3's default
    session keeps the first credentials it found."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        config=Config(connect_timeout=3, read_timeout=30, retries={"max_attempts": 2}),
    )


def check_store(url: str | None = None) -> str:
    """Check within seconds that the object store answers and accepts this environment's key pair.

    Raises:
        ValueError: no store is configured.
        ConnectionError: the store is unreachable, rejects the credentials, or lacks the bucket; the message
            names the endpoint and the fix.
    """
    import botocore.exceptions

    url = url or store_url()
    if url is None:
        raise ValueError(f"no object store: set {STORE_ENV} and the rest of `polar stack env`")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
    bucket = urlparse(url).netloc
    client = s3_client()
    try:
        try:
            client.head_bucket(Bucket=bucket)
        except botocore.exceptions.ClientError:
            # A HEAD answer has no body: some stores (SeaweedFS) say 403 for a missing bucket. Listing the
            # buckets tells a missing bucket (listed fine, not there) from rejected credentials (raises).
            if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
                raise ConnectionError(f"object store {endpoint} has no bucket {bucket!r} ({STORE_ENV}={url})") from None
            raise
    except botocore.exceptions.NoCredentialsError as err:
        raise ConnectionError(f"object store {endpoint}: no credentials in the environment; {_FIX}") from err
    except botocore.exceptions.ClientError as err:
        code = err.response.get("Error", {}).get("Code", "?")
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        raise ConnectionError(
            f"object store {endpoint} rejected the credentials for {url} ({code}, HTTP {status}): check "
            f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; {_FIX}"
        ) from err
    except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError) as err:
        raise ConnectionError(
            f"object store {endpoint} is unreachable ({type(err).__name__}); start the stack (polar stack up) or "
            f"check AWS_ENDPOINT_URL_S3; {_FIX}"
        ) from err
    return url


def _dvc() -> str:
    return str(Path(sys.executable).parent / "dvc")


def use_store_remote(repo: str | Path = ".") -> str | None:
    """Make ``$POLAR_STORE_URL/dvc`` this checkout's default DVC remote (``stack``, in ``.dvc/config.local``,
    which git ignores); None, and nothing changed, when no store is configured.

    DVC reads the endpoint and the key pair from the same environment.
    """
    url = store_url()
    if url is None:
        return None
    for args in (
        ["remote", "add", "--local", "--force", REMOTE, f"{url}/dvc"],
        ["remote", "default", "--local", REMOTE],
    ):
        proc = subprocess.run([_dvc(), *args], cwd=repo, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"dvc {' '.join(args)} failed in {repo}: {proc.stderr.strip() or proc.stdout.strip()}")
    return f"{url}/dvc"


def remote_has(url: str, md5: str) -> bool:
    """Whether the DVC remote at ``url`` (``s3://...``) holds the object ``md5`` (``.dir`` suffix for folders)."""
    parsed = urlparse(url)
    key = "/".join(p for p in (parsed.path.strip("/"), "files", "md5", md5[:2], md5[2:]) if p)
    import botocore.exceptions

    try:
        s3_client().head_object(Bucket=parsed.netloc, Key=key)
    except botocore.exceptions.ClientError as err:
        if err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            return False
        raise
    return True
