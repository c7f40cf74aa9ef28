"""The network fitter of the train stage: the PoLar program predictor on search labels.

Targets are the canonical compact forms of each input's valid programs (at most ``max_targets``
per input, shortest first); the full-depth program is down-weighted (``full_weight``) where a
shorter valid program exists, and each input's targets share one unit of weight. Inputs without a
valid program teach nothing and are left out. Train and validation sets are split by question text
(:mod:`polar.training.split`), so that no question (labeled under several search spaces, say) is on both sides.

Loss = BCE over the boundaries of layers 1..D-1 (layer 0 always starts a segment) + CE over the ops
at segment starts. The checkpoint with the best validation loss is kept.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm import tqdm

from polar.embedder import load_embedder
from polar.labeling.folder import read_labels
from polar.predictor import PredictorConfig, ProgramPredictor, compact_arrays, save
from polar.programs import DEFAULT_K_MAX, CompactProgram, Program, ProgramError
from polar.settings import TrainConfig
from polar.tasks.prompts import PromptMismatch, PromptSpec
from polar.training.provenance import TrainResult, label_source, predictor_meta
from polar.training.split import split_targets

__all__ = ["Target", "load_targets", "train_network"]

Vectors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # question -> its token vectors (T, E) and mask (T,)


@dataclass(frozen=True)
class Target:
    """One valid program of a question in compact form, as the loss reads it, with its share of the weight."""

    question: str
    boundaries: tuple[int, ...]  # (D,)
    ops: tuple[int, ...]  # (D,) op index at segment starts, -100 elsewhere (ignored by the loss)
    weight: float


def load_targets(label_files: Sequence[str | Path], config: TrainConfig) -> tuple[list[Target], dict]:
    """Training targets from merged label files (``labels.jsonl``).

    Returns:
        The targets and a summary: depth, model, inputs, inputs with targets, the labels' generation budget
        (``max_new_tokens``) and prompt spec (``prompt``).
    """
    source = label_source(label_files)
    targets, summary = _read_targets(label_files, config, source.prompt)
    return targets, summary | {"max_new_tokens": source.max_new_tokens, "prompt": source.prompt.to_dict()}


def _read_targets(
    label_files: Sequence[str | Path], config: TrainConfig, prompt: PromptSpec
) -> tuple[list[Target], dict]:
    """The targets of every record of ``label_files`` (one model, one depth, made with ``prompt``), and counts."""
    targets: list[Target] = []
    depth = model = None
    inputs = used = 0
    for path in label_files:
        for n, record in enumerate(read_labels(path), 1):
            d = record.depth
            if depth is not None and (d, record.model) != (depth, model):
                raise ValueError(f"{path}:{n}: labels of {record.model} ({d} layers) mixed with {model}")
            if record.prompt != prompt.id:
                raise PromptMismatch(
                    f"{path}:{n}: record made with the prompt {record.prompt}, but its folder's settings "
                    f"say {prompt.id}: label the folder again"
                )
            depth, model = d, record.model
            if config.levels and str(record.level) not in config.levels:
                continue
            inputs += 1
            valid = [v for v in record.valid if _in_space(v, d, config.space)]
            chosen = _targets_of(record.question, valid, d, config)
            used += bool(chosen)
            targets += chosen
    if not targets:
        raise ValueError(
            f"no input in the label files has a valid {config.space} program expressible in compact form"
            + (f" at levels {', '.join(config.levels)}" if config.levels else "")
        )
    return targets, {"depth": depth, "model": model, "inputs": inputs, "inputs_with_targets": used}


def _in_space(text: str, depth: int, space: str) -> bool:
    """Whether a program belongs to a search space: skip-only programs repeat nothing, loop-only skip nothing."""
    visits = Program.parse(text).visits()
    if space == "skip":
        return max(visits.values()) <= 1
    if space == "loop":
        return len(visits) == depth
    return True


def _targets_of(question: str, valid: Sequence[str], depth: int, config: TrainConfig) -> list[Target]:
    forms: dict[str, CompactProgram] = {}
    for text in sorted(valid, key=lambda t: (len(Program.parse(t)), t)):
        try:
            forms.setdefault(text, CompactProgram.from_program(Program.parse(text), depth, DEFAULT_K_MAX))
        except ProgramError:
            continue  # not expressible in compact form: the predictor cannot emit it
        if len(forms) == config.max_targets:
            break
    if not forms:
        return []
    identity = Program.identity(depth).text
    raw = {t: (config.full_weight if t == identity and len(forms) > 1 else 1.0) for t in forms}
    total = sum(raw.values())
    out = []
    for text, compact in forms.items():
        boundaries, ops = compact_arrays(compact)
        out.append(Target(question, tuple(boundaries), tuple(ops), raw[text] / total))
    return out


def _loss(model: ProgramPredictor, batch: dict) -> torch.Tensor:
    b_logits, o_logits = model(batch["x"], batch["mask"])  # (B, D), (B, D, 3)
    w = batch["weight"]  # (B,)
    bce = F.binary_cross_entropy_with_logits(b_logits[:, 1:], batch["boundaries"][:, 1:], reduction="none").mean(1)
    ce = F.cross_entropy(o_logits.transpose(1, 2), batch["ops"], ignore_index=-100, reduction="none")  # (B, D)
    ce = ce.sum(1) / (batch["ops"] != -100).sum(1).clamp(min=1)
    return ((bce + ce) * w).sum() / w.sum()


def _tensors(targets: list[Target], vectors: Vectors) -> dict:
    return {
        "x": torch.stack([vectors[t.question][0] for t in targets]),
        "mask": torch.stack([vectors[t.question][1] for t in targets]),
        "boundaries": torch.tensor([t.boundaries for t in targets], dtype=torch.float32),
        "ops": torch.tensor([t.ops for t in targets], dtype=torch.long),
        "weight": torch.tensor([t.weight for t in targets], dtype=torch.float32),
    }


def train_network(
    label_files: Sequence[str | Path],
    out_dir: str | Path,
    config: TrainConfig,
    base_model: str | None = None,
    device: str = "auto",
    backbone=None,
) -> TrainResult:
    """Train a predictor on ``label_files`` and save the best checkpoint into ``out_dir``.

    Args:
        label_files: merged label files of one base model (``labels.jsonl``).
        out_dir: folder for ``predictor.safetensors``, ``config.json`` and ``history.json``.
        config: training settings (``method`` network).
        base_model: model spec for ``backbone:N`` embedders (default: the model named in the labels).
        device: where the embedder and the network run.
        backbone: an already loaded base model (spares loading it again).

    Returns:
        The kept checkpoint (the epoch of lowest validation loss), as ``config.json`` records it too.
    """
    torch.manual_seed(config.seed)
    source = label_source(label_files)
    targets, summary = _read_targets(label_files, config, source.prompt)
    train_t, val_t = split_targets(targets, config.val_fraction, config.seed)
    spec = base_model or summary["model"]
    embed_dim, vectors, dev = _embed(targets, config, spec, device, backbone, source.numerics)
    data = {**summary, "train_targets": len(train_t), "val_targets": len(val_t)}
    meta = predictor_meta(
        config,
        base_model=spec,
        embedder=config.embedder,
        label_files=label_files,
        hashed=label_files,
        source=source,
        data=data,
    )
    model = ProgramPredictor(_predictor_config(config, summary["depth"], embed_dim, meta)).to(dev)
    files = tuple(str(p) for p in label_files)

    def keep(epoch: int, val_loss: float) -> None:
        result = TrainResult(Path(out_dir), "network", epoch, "epoch", config.epochs, "val_loss", val_loss, files, data)
        model.config.meta["best"] = {"epoch": epoch, "val_loss": val_loss}
        model.config.meta["result"] = result.to_dict()
        save(model, out_dir)

    history = _fit(model, train_t, val_t, vectors, config, dev, keep)
    Path(out_dir, "history.json").write_text(json.dumps(history, indent=2) + "\n")
    return TrainResult.from_dict(model.config.meta["result"], out_dir)


def _embed(
    targets: Sequence[Target], config: TrainConfig, spec: str, device: str, backbone, numerics: dict | None = None
) -> tuple[int, Vectors, torch.device]:
    """Each question's token vectors, by ``config.embedder`` (loading the base model ``spec`` if it needs it).

    Returns:
        The embedding width, the vectors by question, and the device they are on.
    """
    from polar.backbone import load_as_recorded, resolve_device

    if config.embedder.startswith("backbone") and backbone is None:
        backbone = load_as_recorded(spec, numerics, device)  # the labels' dtype
    dev = resolve_device(device)
    embedder = load_embedder(config.embedder, backbone=backbone, device=dev)
    questions = sorted({t.question for t in targets})
    x, mask = embedder(questions)  # (Q, T, E), (Q, T)
    return embedder.dim, {q: (x[i], mask[i]) for i, q in enumerate(questions)}, dev


def _predictor_config(config: TrainConfig, depth: int, embed_dim: int, meta: dict) -> PredictorConfig:
    return PredictorConfig(
        depth=depth,
        embed_dim=embed_dim,
        d_model=config.d_model,
        encoder_layers=config.encoder_layers,
        dropout=config.dropout,
        identity_rule=config.identity_rule,
        decoder=config.decoder,
        meta=meta,
    )


def _fit(
    model: ProgramPredictor,
    train_t: list[Target],
    val_t: list[Target],
    vectors: Vectors,
    config: TrainConfig,
    dev: torch.device,
    keep: Callable[[int, float], None],
) -> list[dict]:
    """AdamW with cosine decay for ``config.epochs``; ``keep(epoch, val_loss)`` after each new best epoch.

    Returns:
        One entry per epoch: its number, train loss and validation loss (the train loss without validation).
    """
    optim = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * math.ceil(len(train_t) / config.batch)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    data = {k: v.to(dev) for k, v in _tensors(train_t, vectors).items()}
    val = {k: v.to(dev) for k, v in _tensors(val_t, vectors).items()} if val_t else None
    gen = torch.Generator().manual_seed(config.seed)
    history, best = [], math.inf
    bar = tqdm(range(config.epochs), desc="train predictor", unit="epoch")
    for epoch in bar:
        model.train()
        order = torch.randperm(len(train_t), generator=gen).to(dev)
        train_loss = _epoch(model, optim, sched, data, order, config.batch)
        model.eval()
        with torch.no_grad():
            val_loss = _loss(model, val).item() if val is not None else train_loss
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss})
        bar.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}")
        if val_loss < best:
            best = val_loss
            keep(epoch + 1, val_loss)
    return history


def _epoch(model: ProgramPredictor, optim, sched, data: dict, order: torch.Tensor, batch: int) -> float:
    """One pass over the targets in ``order``; returns the mean train loss per target."""
    total = 0.0
    for i in range(0, len(order), batch):
        idx = order[i : i + batch]
        loss = _loss(model, {k: v[idx] for k, v in data.items()})
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()
        total += loss.item() * len(idx)
    return total / len(order)
