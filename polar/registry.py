"""MLflow tracking and model registry: register predictors, promote them through gates.

The embedded default is a local SQLite store (``mlflow/mlflow.db``) with an artifact folder beside it
(``mlflow/artifacts``); ``MLFLOW_TRACKING_URI`` or ``--tracking-uri`` points elsewhere (``http://host:5000``
for a team server). One registered model per base model (``polar-<base>``). Each version carries tags
for lineage (git commit, DVC hashes of its labels and data, the base model's hash) and starts with the
alias ``candidate``; ``champion`` moves only through :func:`promote`'s gates.

Registering is idempotent: a version carries the hash of what it registers (``polar.change``: the predictor's
files, its evaluation and the extra tags), and registering the same change again returns that version. Several
processes that register one change at once (pipelines in several clones, a retry after a crash) end with one
version: each creates its own, the lowest number wins, the others delete theirs and their runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from pathlib import Path

from polar.hashing import sha256_file
from polar.labeling.folder import SETTINGS, describe_numerics, read_settings
from polar.lineage import lineage_tags
from polar.settings import Gates
from polar.stats import paired_interval
from polar.tracking import PARENT_ENV, configure, git_commit

__all__ = [
    "CHANGE_TAG",
    "change_key",
    "model_name",
    "promote",
    "publish",
    "publish_study",
    "register",
    "registry_status",
]

CHANGE_TAG = "polar.change"


def model_name(base_model: str) -> str:
    return "polar-" + Path(base_model.rstrip("/")).name.removesuffix(".gguf").replace("/", "-")


def register(
    predictor_dir: str | Path,
    metrics_path: str | Path,
    tracking_uri: str | None = None,
    lineage: dict[str, str] | None = None,
    artifacts: list[str | Path] = (),
    lock_path: str | Path = "dvc.lock",
    extra_metrics: dict[str, float] | None = None,
) -> dict:
    """Log a trained predictor (or a study's selector) and its evaluation as one MLflow run and register a version.

    Args:
        predictor_dir: folder written by ``polar train``, or a selector folder written by ``polar select``.
        metrics_path: ``metrics.json`` written by ``polar evaluate`` for this predictor.
        lineage: extra version tags.
        artifacts: more files to attach to the run (reports, plots).
        lock_path: ``dvc.lock`` whose hashes of the base model, task files, labels and predictor are
            tagged on the version (``dvc.<role>.md5``; ``untracked`` for paths DVC does not track).

    Returns:
        ``{"name", "version", "run_id", "model_uri", "reused"}`` of the version (alias ``candidate``);
        ``reused`` is true when this change was registered before and no new version was made.
    """
    import mlflow

    from polar.selection.selector import artifact_meta

    configure(tracking_uri)
    predictor_dir = Path(predictor_dir)
    config, meta = artifact_meta(predictor_dir)
    metrics = json.loads(Path(metrics_path).read_text())
    name = model_name(meta["base_model"])
    flat = _run_metrics(metrics, Path(metrics_path), extra_metrics)
    prompt, kind = _checked(meta, metrics, predictor_dir, metrics_path)
    tags = _version_tags(meta, metrics, predictor_dir, prompt, lineage, lock_path)
    change = change_key(predictor_dir, metrics_path, lineage or {})
    client = mlflow.MlflowClient()
    done = _versions_of(client, name, change)
    if done:  # registered before (or by a run that crashed after making the version): complete it, add nothing
        return _settle(client, name, done[0], reused=True)
    # Inside `polar pipeline`, this run is nested under the pipeline's run (polar.tracking).
    with mlflow.start_run(run_name=f"register {name}", parent_run_id=os.environ.get(PARENT_ENV) or None) as run:
        mlflow.log_params({f"train.{k}": _param(v) for k, v in _flat(meta.get("train", {})).items()})
        mlflow.log_params({f"predictor.{k}": _param(v) for k, v in config.items()})
        mlflow.log_metrics(flat)
        mlflow.set_tags({**tags, CHANGE_TAG: change})
        for path in [metrics_path, *artifacts]:
            mlflow.log_artifact(str(path))
        mlflow.log_dict(prompt, "prompt.json")  # the prompt the version was searched, evaluated and is served with
        info = mlflow.pyfunc.log_model(
            name="predictor",
            python_model=str(Path(__file__).with_name("serving.py")),
            artifacts={"predictor": str(predictor_dir)},
            model_config={
                "base_model": meta["base_model"],
                "max_new_tokens": metrics["config"]["max_new_tokens"],
                "answer_kind": kind,
                "rule": metrics["config"].get("rule", "sum"),  # multiple choice by likelihood: the study's rule
            },
            pip_requirements=["polar"],
            signature=_signature(),
        )
    # The version is made with all its tags in one request: a crash leaves either no version or a whole one.
    version_tags = {**{k: str(v) for k, v in tags.items()}, "run_id": run.info.run_id, CHANGE_TAG: change}
    mine = _create_version(info.model_uri, name, version_tags)
    winner = _versions_of(client, name, change)[0]
    if str(winner.version) != str(mine.version):  # another process registered the same change first: keep one version
        client.delete_model_version(name, mine.version)
        client.delete_run(run.info.run_id)
        return _settle(client, name, winner, reused=True)
    return _settle(client, name, mine, reused=False)


def _run_metrics(metrics: dict, metrics_path: Path, extra: dict[str, float] | None) -> dict[str, float]:
    """What the version's run logs as metrics: the evaluation's figures, the paired test, the timings."""
    methods = metrics["methods"]
    flat = {
        "pass1": methods["predictor"]["pass@1"],
        "base_pass1": methods["base greedy"]["pass@1"],
        "layers_ratio": methods["predictor"]["layers_ratio"],
        "identity_share": metrics["identity_share"],
        **{f"pass{k + 1}_at_k": v for k, v in enumerate(metrics["pass_at_k"]["predictor"])},
        **_paired(metrics),
        **(extra or {}),
    }
    timings = metrics_path.with_name("timings.json")  # written by evaluate; not a DVC output
    if timings.exists():
        flat |= {k: v for k, v in json.loads(timings.read_text()).items() if isinstance(v, int | float)}
    return flat


def _checked(meta: dict, metrics: dict, predictor_dir: Path, metrics_path) -> tuple[dict, str]:
    """The prompt the version serves and its answer kind, after checking the evaluation measured them."""
    prompt = meta.get("prompt")
    if prompt is None:
        raise ValueError(f"{predictor_dir} records no prompt spec (trained before prompts were recorded): train again")
    if metrics.get("prompt") != _prompt_id(prompt):
        raise ValueError(
            f"{metrics_path} was measured with the prompt {metrics.get('prompt')}, but {predictor_dir} serves "
            f"{_prompt_id(prompt)}: evaluate this predictor again before registering it"
        )
    kinds = metrics.get("answer_kinds") or ["number"]
    if len(kinds) > 1:
        raise ValueError(f"{metrics_path} mixes answer kinds {kinds}: register a predictor evaluated on one kind")
    return prompt, kinds[0]


def _version_tags(meta: dict, metrics: dict, predictor_dir: Path, prompt: dict, lineage, lock_path) -> dict:
    """Lineage (the DVC hashes of every input), the commit, and what the version was made from."""
    label_dir = Path(meta["label_files"][0]).parent
    roles = {
        "base_model": meta["base_model"],
        "labels": label_dir,
        "test_tasks": metrics["tasks"],
        "predictor": predictor_dir,
    }
    if (label_dir / SETTINGS).exists():
        roles["train_tasks"] = read_settings(label_dir)["tasks"]
    return {
        **lineage_tags(roles, lock_path),
        "git_commit": git_commit(),
        "base_model": meta["base_model"],
        "embedder": meta["embedder"],
        "labels_sha256": meta["labels_sha256"],
        "prompt": _prompt_id(prompt),
        # the dtype, device and threads its labels were computed with, which serving loads the model with
        "numerics": describe_numerics(meta.get("numerics")).removeprefix("in "),
        **(lineage or {}),
    }


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _param(value) -> str:
    """A parameter value as MLflow keeps it (text of at most 6,000 characters)."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 6000 else text[:5990] + " [...]"


def change_key(predictor_dir: str | Path, metrics_path: str | Path, tags: dict[str, str]) -> str:
    """What a registration registers, as one hash: the predictor's files, its evaluation and the extra tags."""
    digest = hashlib.sha256()
    folder = Path(predictor_dir)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{sha256_file(path)}\n".encode())
    digest.update(f"metrics\0{sha256_file(metrics_path)}\n".encode())
    digest.update(json.dumps({k: str(v) for k, v in tags.items()}, sort_keys=True).encode())
    return digest.hexdigest()


def _versions_of(client, name: str, change: str) -> list:
    """Versions of ``name`` registered for ``change``, lowest number first."""
    import mlflow

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except mlflow.exceptions.MlflowException as err:
        if "RESOURCE_DOES_NOT_EXIST" in str(err.error_code):
            return []
        raise
    return sorted((v for v in versions if v.tags.get(CHANGE_TAG) == change), key=lambda v: int(v.version))


def _create_version(model_uri: str, name: str, tags: dict[str, str], attempts: int = 6):
    """``mlflow.register_model``, again after a short random wait when concurrent registrations took the number
    it tried (the tracking store gives up after 3 clashes)."""
    import mlflow

    for attempt in range(attempts):
        try:
            return mlflow.register_model(model_uri, name, tags=tags)
        except mlflow.exceptions.MlflowException as err:
            if "Model Version creation error" not in str(err) or attempt == attempts - 1:
                raise
            time.sleep(random.uniform(0.2, 1.0) * (attempt + 1))
    raise AssertionError("unreachable")


def _settle(client, name: str, version, reused: bool) -> dict:
    """Point ``candidate`` at ``version`` and describe it."""
    client.set_registered_model_alias(name, "candidate", version.version)
    return {
        "name": name,
        "version": str(version.version),
        "run_id": version.tags.get("run_id") or version.run_id,
        "model_uri": f"models:/{name}/{version.version}",
        "reused": reused,
    }


def _prompt_id(data: dict) -> str:
    from polar.tasks.prompts import PromptSpec

    return PromptSpec.from_dict(data).id


def _signature():
    """What the served model takes and answers (polar/serving.py), so that `mlflow models serve` checks requests."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Array

    inputs = Schema(
        [
            ColSpec("string", "question"),
            ColSpec("string", "level", required=False),
            ColSpec(Array(DataType.string), "choices", required=False),  # multiple choice scored by likelihood
        ]
    )
    outputs = Schema(
        [ColSpec("string", c) for c in ("text", "answer", "program")]
        + [ColSpec("long", c) for c in ("layers", "depth")]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def _paired(metrics: dict) -> dict:
    """The paired comparison with base greedy the gates need: McNemar p and the difference's 95% interval."""
    predictor, base, n = metrics["methods"]["predictor"], metrics["methods"]["base greedy"], metrics.get("inputs")
    if "p_vs_base" not in predictor or "discordant" not in metrics or not n:
        return {}
    low, high = paired_interval(predictor["correct"], base["correct"], metrics["discordant"], n)
    return {"p_vs_base": predictor["p_vs_base"], "diff_low": low, "diff_high": high}


def _paired_again(client, run_id: str) -> dict:
    """The paired comparison recomputed from the evaluation the version was registered with (its logged
    ``metrics.json``): versions registered before the interval counted how many inputs change hands logged a
    narrower one. Empty when the run holds no such file."""
    import mlflow

    for item in client.list_artifacts(run_id):
        if item.is_dir or not item.path.endswith(".json") or item.path == "prompt.json":
            continue
        try:
            logged = mlflow.artifacts.load_dict(f"runs:/{run_id}/{item.path}")
        except (mlflow.exceptions.MlflowException, OSError, ValueError):
            continue
        if isinstance(logged, dict) and "methods" in logged and "discordant" in logged:
            return _paired(logged)
    return {}


def promote(name: str, version: str | None = None, gates: Gates = Gates(), tracking_uri: str | None = None) -> dict:
    """Move ``champion`` to ``version`` (default: the ``candidate``) if it passes the gates.

    Gates: better than base greedy on the same held-out inputs, either more accurate (exact McNemar
    p < ``alpha``) or leaner at no loss (layers / D below 1 and the 95% interval of the pass@1 difference
    above ``-margin``); not below the current champion's pass@1 by more than ``tolerance``; average
    layers / D within ``layer_budget``. The decision and its reasons are tagged on the version either way.

    Returns:
        ``{"promoted": bool, "version", "reasons": [...]}``.
    """
    import mlflow

    configure(tracking_uri)
    client = mlflow.MlflowClient()
    try:
        mv = (
            client.get_model_version(name, version) if version else client.get_model_version_by_alias(name, "candidate")
        )
    except mlflow.exceptions.MlflowException as err:
        raise ValueError(f"no version {version or '@candidate'} of registered model {name!r}: {err.message}") from err
    metrics = client.get_run(mv.run_id).data.metrics | _paired_again(client, mv.run_id)
    reasons = []
    if "p_vs_base" not in metrics or "diff_low" not in metrics:
        reasons.append("registered without a paired test against base greedy: evaluate it and register it again")
    else:
        better = metrics["pass1"] > metrics["base_pass1"] and metrics["p_vs_base"] < gates.alpha
        leaner = metrics["layers_ratio"] < 1 and metrics["diff_low"] >= -gates.margin
        if not (better or leaner):
            reasons.append(
                f"pass@1 {metrics['pass1']:.3f} against base greedy {metrics['base_pass1']:.3f} (McNemar p "
                f"{metrics['p_vs_base']:.3g}, needs < {gates.alpha:g}) at layers / D {metrics['layers_ratio']:.3f}: "
                f"neither more accurate nor leaner at no loss (difference down to {metrics['diff_low']:+.3f}, "
                f"allowed {-gates.margin:+.3f})"
            )
    if metrics["layers_ratio"] > gates.layer_budget:
        reasons.append(f"layers / D {metrics['layers_ratio']:.3f} above the budget {gates.layer_budget}")
    try:
        champion = client.get_model_version_by_alias(name, "champion")
    except mlflow.exceptions.MlflowException:
        champion = None
    if champion is not None and champion.version != mv.version:
        best = client.get_run(champion.run_id).data.metrics["pass1"]
        if metrics["pass1"] < best - gates.tolerance:
            reasons.append(
                f"pass@1 {metrics['pass1']:.3f} below champion v{champion.version} ({best:.3f}) by more than "
                f"{gates.tolerance}"
            )
    promoted = not reasons
    if promoted:
        client.set_registered_model_alias(name, "champion", mv.version)
    client.set_model_version_tag(name, mv.version, "promotion", "champion" if promoted else "; ".join(reasons))
    return {"promoted": promoted, "name": name, "version": str(mv.version), "reasons": reasons}


def publish(
    predictor_dir: str | Path,
    metrics_path: str | Path,
    gates: Gates | None = None,
    out: str | Path | None = None,
    tracking_uri: str | None = None,
    tags: dict[str, str] | None = None,
    artifacts: list[str | Path] = (),
) -> dict:
    """The register stage: register a new version, promote it through ``gates`` (if given), and write ``out``.

    ``out`` (``registry.json``, a DVC output) holds the name, version, model URI and the promotion decision:
    what a fresh registry gives for the same inputs (the run id lives in MLflow only).
    """
    info = register(predictor_dir, metrics_path, tracking_uri, tags, artifacts)
    if gates is not None:
        info["promotion"] = promote(info["name"], info["version"], gates, tracking_uri)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        kept = {k: v for k, v in info.items() if k not in ("run_id", "reused")}  # what a fresh registry gives too
        Path(out).write_text(json.dumps(kept, indent=2) + "\n")
    return info


def publish_study(
    selectors_dir: str | Path,
    selection_dir: str | Path,
    evaluation_dir: str | Path,
    gates: Gates = Gates(),
    out: str | Path | None = None,
    tracking_uri: str | None = None,
    artifacts: list[str | Path] = (),
) -> dict:
    """The menu chain's register stage: a champion that always answers, replaced only through the gates.

    The baseline (the full-depth program, ``selectors_dir/baseline``) is registered and becomes champion when the
    model has none, so ``models:/polar-<model>@champion`` always resolves and serves. Each servable winner of the
    study is then registered as a candidate and promoted only if it passes :func:`promote`'s gates on its served
    test evaluation. Every version's run logs each candidate's validation score (``val.<candidate>``), and every
    version carries the study's one-sentence summary (tag ``polar.summary``).

    Returns:
        ``{"name", "champion", "versions": {role: {version, method, promotion}}, "summary"}``, also written to ``out``.
    """
    import mlflow

    from polar.selection.files import FROZEN, ROLES, TEST, VERSIONS

    selectors_dir, selection_dir, evaluation_dir = Path(selectors_dir), Path(selection_dir), Path(evaluation_dir)
    evaluation = json.loads((evaluation_dir / "metrics.json").read_text())
    frozen = json.loads((selection_dir / FROZEN).read_text())
    scores = _candidate_metrics(frozen, evaluation)
    report = [
        evaluation_dir / "report.md",
        evaluation_dir / "accuracy_vs_layers.png",
        selection_dir / FROZEN,
        selection_dir / TEST,
        *artifacts,
    ]
    versions: dict[str, dict] = {}
    for role in ROLES:
        metrics_path = evaluation_dir / VERSIONS / f"{role}.json"
        if not metrics_path.exists():
            continue
        method = json.loads(metrics_path.read_text())["method"]
        tags = {"polar.role": role, "polar.method": method, "polar.summary": evaluation["summary"]}
        info = register(selectors_dir / role, metrics_path, tracking_uri, tags, report, extra_metrics=scores)
        versions[role] = {"version": info["version"], "method": method, "model_uri": info["model_uri"]}
        if role == "baseline":
            versions[role]["promotion"] = _champion_if_none(info["name"], info["version"], tracking_uri)
        else:
            versions[role]["promotion"] = promote(info["name"], info["version"], gates, tracking_uri)
    if "baseline" not in versions:
        raise FileNotFoundError(f"{evaluation_dir / VERSIONS} has no baseline.json: run the evaluate stage first")
    name = model_name(json.loads((evaluation_dir / VERSIONS / "baseline.json").read_text())["model"])
    configure(tracking_uri)
    champion = mlflow.MlflowClient().get_model_version_by_alias(name, "champion")
    method = champion.tags.get("polar.method", "a version registered before this study")
    info = {
        "name": name,
        "champion": str(champion.version),
        "champion_method": method,
        "versions": versions,
        "summary": f"{evaluation['summary']} Champion: v{champion.version}, {method}.",
    }
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(info, indent=2) + "\n")
    return info


def _candidate_metrics(frozen: dict, evaluation: dict) -> dict[str, float]:
    """Every candidate's validation score (``val.<candidate>.pass1``, where the choice was made: an auditor sees
    how many were tried) and test score (``test.<candidate>.pass1``), with layers / D, as run metrics."""
    out = {"candidates": float(frozen["candidates"])}
    for split, rows in (("val", frozen["validation_scores"]), ("test", evaluation["scores"])):
        for name, row in rows.items():
            key = re.sub(r"[^\w\-./ ]", "_", name)[:200]
            out[f"{split}.{key}.pass1"] = row["pass1"]
            out[f"{split}.{key}.layers_ratio"] = row["layers_ratio"]
    return out


def _champion_if_none(name: str, version: str, tracking_uri: str | None) -> dict:
    """Make ``version`` (the baseline) champion when ``name`` has no champion yet."""
    import mlflow

    configure(tracking_uri)
    client = mlflow.MlflowClient()
    try:
        current = client.get_model_version_by_alias(name, "champion")
    except mlflow.exceptions.MlflowException:
        current = None
    if current is None:
        client.set_registered_model_alias(name, "champion", version)
        client.set_model_version_tag(name, version, "promotion", "champion: the baseline, until a selector passes")
        return {"promoted": True, "name": name, "version": str(version), "reasons": []}
    if str(current.version) == str(version):  # registered again: it already is the champion
        return {"promoted": True, "name": name, "version": str(version), "reasons": []}
    reason = f"champion stays v{current.version} (the baseline is champion only while the model has none)"
    return {"promoted": False, "name": name, "version": str(version), "reasons": [reason]}


def registry_status(info: dict) -> str:
    """One line for a registration (``registry.json``): the version and what the gates decided; for a study's
    registration, the champion and each version registered."""
    if "champion" in info:
        parts = [
            f"{role} v{v['version']} ({v['method']}"
            + ("" if v["promotion"]["promoted"] else ": " + "; ".join(v["promotion"]["reasons"]))
            + ")"
            for role, v in info["versions"].items()
        ]
        return f"{info['name']}@champion is v{info['champion']} ({info['champion_method']}); " + ", ".join(parts)
    decision = info.get("promotion", {})
    if decision.get("promoted"):
        return f"{info['name']} v{info['version']} @champion"
    return (
        f"{info['name']} v{info['version']} @candidate (not champion: " + "; ".join(decision.get("reasons", [])) + ")"
    )
