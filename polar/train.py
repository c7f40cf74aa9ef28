"""The train stage: fit a program predictor on label files.

Targets are the canonical compact forms of each input's valid programs (at most ``max_targets``
per input, shortest first); the full-depth program is down-weighted (``full_weight``) where a
shorter valid program exists, and each input's targets share one unit of weight. Inputs without a
valid program teach nothing and are left out. Train and validation sets are split by question text,
so that no question (labeled under several search spaces, say) is on both sides.

Loss = BCE over the boundaries of layers 1..D-1 (layer 0 always starts a segment) + CE over the ops
at segment starts. The checkpoint with the best validation loss is kept.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm import tqdm

from polar.embedder import load_embedder
from polar.labeling.folder import label_prompt, read_labels, read_settings
from polar.predictor import PredictorConfig, ProgramPredictor, compact_arrays, save
from polar.programs import DEFAULT_K_MAX, CompactProgram, Program, ProgramError
from polar.settings import TrainConfig
from polar.tasks.prompts import PromptMismatch, PromptSpec

__all__ = ["Target", "load_targets", "split_by_question", "train"]


@dataclass(frozen=True)
class Target:
    question: str
    boundaries: tuple[int, ...]  # (D,)
    ops: tuple[int, ...]  # (D,) op index at segment starts, -100 elsewhere (ignored by the loss)
    weight: float


def file_sha256(paths: Sequence[str | Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def labels_prompt(label_files: Sequence[str | Path]) -> PromptSpec:
    """The one prompt all ``label_files`` were made with (from their folders' settings); refuses a mixture."""
    specs = {}
    for path in label_files:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"label file not found: {path} (run `polar label` first)")
        spec = label_prompt(path.parent)
        specs.setdefault(spec.id, (spec, path))
    if len(specs) > 1:
        made = "; ".join(f"{p} with {i}" for i, (_, p) in specs.items())
        raise PromptMismatch(
            f"the label files were made with different prompts ({made}): a predictor must be trained on labels "
            "of one prompt, the one it will be evaluated and served with; label them again with the same settings"
        )
    return next(iter(specs.values()))[0]


def load_targets(label_files: Sequence[str | Path], config: TrainConfig) -> tuple[list[Target], dict]:
    """Training targets from merged label files (``labels.jsonl``); returns them and a summary."""
    targets: list[Target] = []
    depth = model = None
    inputs = used = 0
    prompt = labels_prompt(label_files)
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
    budgets = {read_settings(Path(p).parent).get("config", {}).get("max_new_tokens") for p in label_files}
    if len(budgets) > 1:
        raise ValueError(f"the label files were made with different generation budgets {sorted(budgets, key=str)}")
    summary = {"depth": depth, "model": model, "inputs": inputs, "inputs_with_targets": used}
    summary["max_new_tokens"] = budgets.pop()
    return targets, summary | {"prompt": prompt.to_dict()}


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


def split_by_question(targets: list[Target], val_fraction: float, seed: int) -> tuple[list[Target], list[Target]]:
    """Validation gets whole questions (by a seeded hash of the text), never part of one."""
    questions = sorted({t.question for t in targets})
    random.Random(seed).shuffle(questions)
    n_val = round(len(questions) * val_fraction) if len(questions) > 1 else 0
    val_q = set(questions[:n_val])
    return [t for t in targets if t.question not in val_q], [t for t in targets if t.question in val_q]


def _loss(model: ProgramPredictor, batch: dict) -> torch.Tensor:
    b_logits, o_logits = model(batch["x"], batch["mask"])  # (B, D), (B, D, 3)
    w = batch["weight"]  # (B,)
    bce = F.binary_cross_entropy_with_logits(b_logits[:, 1:], batch["boundaries"][:, 1:], reduction="none").mean(1)
    ce = F.cross_entropy(o_logits.transpose(1, 2), batch["ops"], ignore_index=-100, reduction="none")  # (B, D)
    ce = ce.sum(1) / (batch["ops"] != -100).sum(1).clamp(min=1)
    return ((bce + ce) * w).sum() / w.sum()


def _tensors(targets: list[Target], vectors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict:
    return {
        "x": torch.stack([vectors[t.question][0] for t in targets]),
        "mask": torch.stack([vectors[t.question][1] for t in targets]),
        "boundaries": torch.tensor([t.boundaries for t in targets], dtype=torch.float32),
        "ops": torch.tensor([t.ops for t in targets], dtype=torch.long),
        "weight": torch.tensor([t.weight for t in targets], dtype=torch.float32),
    }


def train(
    label_files: Sequence[str | Path],
    out_dir: str | Path,
    config: TrainConfig = TrainConfig(),
    base_model: str | None = None,
    device: str = "auto",
    backbone=None,
) -> Path:
    """Train a predictor on ``label_files`` and save the best checkpoint into ``out_dir``.

    Args:
        label_files: merged label files of one base model (``labels.jsonl``); with ``config.method == "menu"``,
            menu run folders (:func:`polar.menu_network.train_menu`).
        out_dir: folder for ``predictor.safetensors``, ``config.json`` and ``history.json``.
        config: training settings.
        base_model: model spec for ``backbone:N`` embedders (default: the model named in the labels).
        backbone: an already loaded base model (spares loading it again).

    Returns:
        ``out_dir``.
    """
    from polar.backbone import load, resolve_device

    if config.method == "menu":
        from polar.selection.menu_network import train_menu

        return train_menu(label_files, out_dir, config, base_model)
    torch.manual_seed(config.seed)
    targets, summary = load_targets(label_files, config)
    train_t, val_t = split_by_question(targets, config.val_fraction, config.seed)
    spec = base_model or summary["model"]
    if config.embedder.startswith("backbone") and backbone is None:
        backbone = load(spec, device=device)
    dev = resolve_device(device)
    embedder = load_embedder(config.embedder, backbone=backbone, device=dev)
    questions = sorted({t.question for t in targets})
    x, mask = embedder(questions)  # (Q, T, E), (Q, T)
    vectors = {q: (x[i], mask[i]) for i, q in enumerate(questions)}
    pconfig = PredictorConfig(
        depth=summary["depth"],
        embed_dim=embedder.dim,
        d_model=config.d_model,
        encoder_layers=config.encoder_layers,
        dropout=config.dropout,
        identity_rule=config.identity_rule,
        decoder=config.decoder,
        meta={
            "base_model": spec,
            "embedder": config.embedder,
            "label_files": [str(p) for p in label_files],
            "labels_sha256": file_sha256(label_files),
            "prompt": summary.pop("prompt"),  # evaluation and serving prompt exactly as labeling did
            "max_new_tokens": summary.pop("max_new_tokens"),  # and the same generation budget
            "train": config.to_dict(),
            "data": {**summary, "train_targets": len(train_t), "val_targets": len(val_t)},
        },
    )
    model = ProgramPredictor(pconfig).to(dev)
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
        total = 0.0
        for i in range(0, len(order), config.batch):
            idx = order[i : i + config.batch]
            loss = _loss(model, {k: v[idx] for k, v in data.items()})
            optim.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            sched.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            val_loss = _loss(model, val).item() if val is not None else total / len(order)
        history.append({"epoch": epoch + 1, "train_loss": total / len(order), "val_loss": val_loss})
        bar.set_postfix(train=f"{total / len(order):.3f}", val=f"{val_loss:.3f}")
        if val_loss < best:
            best = val_loss
            model.config.meta["best"] = {"epoch": epoch + 1, "val_loss": val_loss}
            save(model, out_dir)
    Path(out_dir, "history.json").write_text(json.dumps(history, indent=2) + "\n")
    return Path(out_dir)
