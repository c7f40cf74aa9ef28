"""Lineage: from a registered predictor version back to the exact data, labels and base model.

At registration the DVC hashes (from ``dvc.lock``) of everything the predictor came from are tagged
on the model version: base model weights, task files, label folder, predictor weights. ``polar
lineage MODEL_URI`` walks registry version -> run -> git commit -> those hashes, checks that each
hash is still present in the DVC cache or the default remote (a local folder, or the team stack's S3 store), so that ``dvc checkout`` /
``dvc pull`` can bring the inputs back, and whether the repository's ``dvc.lock`` still records the same
hash for each path (``matches``): since the stages' outputs reproduce byte for byte, a version whose
outputs all match is what re-running the pipeline on its inputs gives.
"""

from __future__ import annotations

import configparser
from collections.abc import Callable
from pathlib import Path

import yaml

__all__ = ["dvc_hashes", "lineage", "lineage_tags"]


def dvc_hashes(lock_path: str | Path = "dvc.lock") -> dict[str, str]:
    """Every output path recorded in ``dvc.lock`` -> its md5 (``.dir`` suffix for folders)."""
    lock_path = Path(lock_path)
    if not lock_path.exists():
        return {}
    lock = yaml.safe_load(lock_path.read_text()) or {}
    out: dict[str, str] = {}
    for stage in (lock.get("stages") or {}).values():
        for entry in stage.get("outs", []):
            if "md5" in entry:
                out[entry["path"]] = entry["md5"]
    return out


def lineage_tags(paths: dict[str, str | Path], lock_path: str | Path = "dvc.lock") -> dict[str, str]:
    """Tags ``dvc.<role>.path`` / ``dvc.<role>.md5`` for each role -> path found in ``dvc.lock``.

    A path inside a DVC output (a selector folder of the select stage's ``models/selectors/<model>``) is tagged
    with that output, the nearest folder above it that ``dvc.lock`` records."""
    hashes = dvc_hashes(lock_path)
    root = Path(lock_path).resolve().parent
    tags = {}
    for role, path in paths.items():
        path = Path(path)
        if path.is_absolute() and path.is_relative_to(root):
            path = path.relative_to(root)  # dvc.lock records paths relative to the repository
        key = str(path).rstrip("/")
        holder = next((str(p) for p in [path, *path.parents] if str(p) in hashes), None)
        tags[f"dvc.{role}.path"] = holder or key
        tags[f"dvc.{role}.md5"] = hashes[holder] if holder else "untracked"
    return tags


def _in_folder(root: Path) -> Callable[[str], bool]:
    return lambda md5: (root / md5[:2] / md5[2:]).exists()


def _places(repo: Path) -> list[tuple[str, Callable[[str], bool]]]:
    """Where DVC keeps objects for this checkout: its cache, and its default remote when local or on S3 (the
    team stack's object store, reached with the environment's key pair)."""
    places = [("cache", _in_folder(repo / ".dvc" / "cache" / "files" / "md5"))]
    config = configparser.ConfigParser()
    config.read([repo / ".dvc" / "config", repo / ".dvc" / "config.local"])
    default = config.get("core", "remote", fallback=None)
    if default and config.has_section(f"'remote \"{default}\"'"):
        url = config.get(f"'remote \"{default}\"'", "url")
        if url.startswith("s3://"):
            from polar.stack.client import remote_has

            places.append((f"remote {default}", lambda md5: remote_has(url, md5)))
        elif "://" not in url:  # a local remote; other clouds are checked by `dvc status -c`
            root = (repo / ".dvc" / url).resolve() if not Path(url).is_absolute() else Path(url)
            places.append((f"remote {default}", _in_folder(root / "files" / "md5")))
    from polar.stack.client import REMOTE, remote_has, store_url

    store = store_url()  # a checkout that has only the stack's settings in its environment
    if store and default != REMOTE:
        places.append((f"remote {REMOTE}", lambda md5: remote_has(f"{store}/dvc", md5)))
    return places


def lineage(model_uri: str, tracking_uri: str | None = None, repo: str | Path = ".") -> dict:
    """Walk a registered version back to its inputs and check that DVC still holds each of them.

    Args:
        model_uri: ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``.

    Returns:
        ``{"name", "version", "run_id", "git_commit", "inputs": [{role, path, md5, found_in}]}``.
    """
    import mlflow

    from polar.tracking import configure

    configure(tracking_uri)
    client = mlflow.MlflowClient()
    spec = model_uri.removeprefix("models:/")
    try:
        if "@" in spec:
            name, alias = spec.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, version = spec.rsplit("/", 1)
            mv = client.get_model_version(name, version)
    except (ValueError, mlflow.exceptions.MlflowException) as err:
        raise ValueError(
            f"{model_uri}: no such registered version ({err}); write models:/NAME/VERSION or @ALIAS"
        ) from err
    tags = mv.tags
    run = client.get_run(mv.run_id)
    places = _places(Path(repo))
    current = dvc_hashes(Path(repo) / "dvc.lock")
    inputs = []
    for key, md5 in sorted(tags.items()):
        if not (key.startswith("dvc.") and key.endswith(".md5")):
            continue
        role = key.removeprefix("dvc.").removesuffix(".md5")
        path = tags.get(f"dvc.{role}.path")
        found = [where for where, has in places if md5 != "untracked" and has(md5)]
        matches = None if md5 == "untracked" else current.get(path) == md5
        inputs.append({"role": role, "path": path, "md5": md5, "found_in": found, "matches": matches})
    return {
        "name": name,
        "version": str(mv.version),
        "aliases": list(mv.aliases),
        "run_id": mv.run_id,
        "run_name": run.info.run_name,
        "git_commit": tags.get("git_commit", run.data.tags.get("git_commit", "unknown")),
        "base_model": tags.get("base_model"),
        "labels_sha256": tags.get("labels_sha256"),
        "inputs": inputs,
    }
