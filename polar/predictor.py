"""The program predictor: from an input's token vectors to a ranked list of compact programs.

Network (DESIGN §3): the frozen embedder's token vectors are projected to ``d``; ``D`` learned layer
queries cross-attend over them; a Transformer encoder mixes information along the layer axis; two
heads give, per layer, a boundary logit (a segment starts here) and three op logits (skip, keep,
repeat; read at segment starts). Together they give every compact program a log-probability
(:func:`program_logprob`: the boundary of each layer after the first, and the op at each segment start).

Decoding (``decoder``) turns them into a ranked list of distinct programs:

- ``"search"`` (the default): a beam over segmentations and ops, scored by that log-probability, so that any
  admissible program can come out, one-layer edits included.
- ``"threshold"`` (predictors saved before ``decoder`` existed, which were evaluated that way): segments start
  where a boundary's probability passes ``threshold``, are split at ``k_max``, and a beam runs over their
  ops. When no boundary passes, every segment is ``k_max`` long and no one-layer edit can be emitted.

A predictor with a ``menu`` (M2, :mod:`polar.selection.menu_network`) is not decoded:
it ranks the menu's programs by :func:`menu_softmax`, and runs the one of highest gain over the full depth
(its probability minus the full depth's) only when that gain passes ``menu_threshold``.

Weights are saved as safetensors with a JSON config beside them (:func:`save`, :func:`load`).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from polar.gain import gain_choice
from polar.programs import DEFAULT_K_MAX, CompactProgram, Op, Program, ProgramError, Segment
from polar.settings import DECODERS, IDENTITY_RULES

__all__ = [
    "IDENTITY_RULES",
    "OPS",
    "PredictorConfig",
    "ProgramPredictor",
    "check_identity_rule",
    "compact_arrays",
    "decode",
    "load",
    "menu_softmax",
    "predict",
    "program_logprob",
    "program_targets",
    "prompt_spec",
    "save",
]

OPS = (Op.SKIP, Op.KEEP, Op.REPEAT)  # index order of the op head
WEIGHTS, CONFIG = "predictor.safetensors", "config.json"


def check_identity_rule(rule: str) -> None:
    if rule not in IDENTITY_RULES:
        raise ValueError(f"identity_rule must be one of {IDENTITY_RULES}, got {rule!r}")


@dataclass(frozen=True)
class PredictorConfig:
    """Shape of the network (the paper's sizes by default) and the decoding settings."""

    depth: int  # layers of the base model
    embed_dim: int  # width of the embedder's vectors
    d_model: int = 256
    heads: int = 4
    encoder_layers: int = 2
    ff: int = 1024
    dropout: float = 0.1
    k_max: int = DEFAULT_K_MAX
    decoder: str = "search"  # see the module's docstring; load() reads configs without it as "threshold"
    threshold: float = 0.5  # decoder "threshold": boundary probability above which a segment starts
    beam: int = 5  # decoder "search": at least 16 partial programs are kept per layer
    ops_per_segment: int = 2  # decoder "threshold": the beam tries the top ops of each segment
    min_length_ratio: float = 0.55  # decoded programs stay within the search's length bounds
    max_length_ratio: float = 1.2
    # Where the identity ranks. "mass": first only when the model gives it at least half the probability
    # (the product of the segments' keep probabilities); otherwise the best edited program goes first.
    # "marginal": the plain beam order, in which a mixture of different edits still ranks the identity first.
    identity_rule: str = "mass"
    menu: tuple[str, ...] = ()  # a menu predictor's programs, the full depth first (empty: decode)
    menu_threshold: float = 0.0  # its gain over the full depth that a program must pass to run
    meta: dict = field(default_factory=dict)  # provenance: base model, embedder, label hashes, training

    def __post_init__(self) -> None:
        check_identity_rule(self.identity_rule)
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        object.__setattr__(self, "menu", tuple(self.menu))  # a list when read from config.json
        if self.menu and Program.parse(self.menu[0]) != Program.identity(self.depth):
            raise ValueError(f"a menu predictor's first program must be the full depth 0-{self.depth - 1}")

    def to_dict(self) -> dict:
        return asdict(self)


class ProgramPredictor(nn.Module):
    def __init__(self, config: PredictorConfig) -> None:
        super().__init__()
        self.config = c = config
        self.proj = nn.Linear(c.embed_dim, c.d_model)
        self.queries = nn.Parameter(torch.randn(c.depth, c.d_model) * 0.02)  # one query per layer
        self.cross = nn.MultiheadAttention(c.d_model, c.heads, dropout=c.dropout, batch_first=True)
        self.norm = nn.LayerNorm(c.d_model)
        block = nn.TransformerEncoderLayer(
            c.d_model, c.heads, c.ff, c.dropout, batch_first=True, norm_first=True, activation="gelu"
        )
        self.encoder = nn.TransformerEncoder(block, c.encoder_layers, enable_nested_tensor=False)
        self.boundary_head = nn.Linear(c.d_model, 1)
        self.op_head = nn.Linear(c.d_model, len(OPS))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Boundary logits (B, D) and op logits (B, D, 3) from token vectors (B, T, E) and mask (B, T)."""
        keys = self.proj(tokens)  # (B, T, d)
        q = self.queries.expand(tokens.shape[0], -1, -1)  # (B, D, d)
        h, _ = self.cross(q, keys, keys, key_padding_mask=mask == 0, need_weights=False)  # (B, D, d)
        h = self.encoder(self.norm(q + h))  # (B, D, d)
        return self.boundary_head(h).squeeze(-1), self.op_head(h)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ------------------------------------------------------------------------------------------ decoding
def decode(boundary_logits: torch.Tensor, op_logits: torch.Tensor, config: PredictorConfig, k: int) -> list[Program]:
    """The ``k`` best distinct programs for one input, best first, within the length bounds.

    Args:
        boundary_logits: (D,) logits of "a segment starts at this layer".
        op_logits: (D, 3) op logits; those at segment starts are read.
        config: the decoder, ``k_max``, beam width and length bounds (and the threshold decoder's settings).
        k: programs wanted. Fewer come back only when fewer admissible ones exist; the full depth when none.
    """
    if config.menu:
        return _decode_menu(boundary_logits, op_logits, config, k)
    if config.decoder == "threshold":
        return _decode_threshold(boundary_logits, op_logits, config, k)
    depth, k_max = config.depth, config.k_max
    on = torch.nn.functional.logsigmoid(boundary_logits.double()).tolist()  # log P(a segment starts at i)
    off = torch.nn.functional.logsigmoid(-boundary_logits.double()).tolist()
    logp = torch.log_softmax(op_logits.double(), dim=-1).tolist()  # (D, 3)
    lo, hi = math.ceil(config.min_length_ratio * depth), math.floor(config.max_length_ratio * depth)
    width = max(16, config.beam, 2 * k)  # 16: a one-off check (D = 30, random logits) found the top 5 nearly
    # always equal to a 400-wide beam's; not a committed measurement
    # at[i]: partial programs covering layers 0..i-1, keyed by the layers they run (segmentations that run
    # the same layers are one program: the best one stands for it, as the rest of the program scores alike)
    at: list[dict[tuple[int, ...], float]] = [{} for _ in range(depth + 1)]  # layers run -> log-probability
    at[0][()] = 0.0
    for start in range(depth):
        partials = sorted(at[start].items(), key=lambda kv: -kv[1])[:width]
        begin = on[start] if start else 0.0
        for n in range(1, min(k_max, depth - start) + 1):
            inside = begin + sum(off[start + 1 : start + n])
            end, block = start + n, tuple(range(start, start + n))
            for o, op in enumerate(OPS):
                for layers, score in partials:
                    grown = layers + block * op.times
                    if len(grown) > hi or len(grown) + 2 * (depth - end) < lo:
                        continue
                    value = score + inside + logp[start][o]
                    if value > at[end].get(grown, -math.inf):
                        at[end][grown] = value
    # every segment skipped runs no layer: not a program
    done = sorted(((v, layers) for layers, v in at[depth].items() if layers and lo <= len(layers)), reverse=True)
    out = [Program(layers) for _, layers in done[: max(k, 2)]]
    identity = Program.identity(depth)
    if not out:
        return [identity]  # nothing admissible decoded: fall back to the full model
    if config.identity_rule == "mass" and out[0] == identity and len(out) > 1 and done[0][0] < math.log(0.5):
        out[0], out[1] = out[1], out[0]  # an edit is more likely than none: the most likely edit first
    return out[:k]


def menu_softmax(
    boundary_logits: torch.Tensor, op_logits: torch.Tensor, targets: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """(B, M) how much the network prefers each of a menu's programs: the softmax of their log-probabilities
    over the programs it can emit (the others get 0). ``targets``: :func:`program_targets` of the menu."""
    boundaries, ops, usable = targets
    scores = program_logprob(boundary_logits, op_logits, boundaries, ops).masked_fill(~usable, -math.inf)
    return torch.softmax(scores, dim=-1)


@functools.lru_cache(maxsize=8)
def _menu_targets(menu: tuple[str, ...], depth: int, k_max: int):
    return program_targets(menu, depth, k_max)


def _decode_menu(boundary_logits: torch.Tensor, op_logits: torch.Tensor, config: PredictorConfig, k: int):
    """The menu's program of highest gain first when its gain passes the threshold (else the full depth), then
    the others the network can emit, by preference: :func:`polar.gain.gain_choice`."""
    p = menu_softmax(boundary_logits[None], op_logits[None], _menu_targets(config.menu, config.depth, config.k_max))
    p = p[0].detach().double().numpy()
    first = int(gain_choice(p[None], config.menu_threshold)[0])
    rest = [int(j) for j in np.argsort(-p, kind="stable") if j != first and p[j] > 0]
    return [Program.parse(config.menu[j]) for j in [first, *rest][:k]]


def _decode_threshold(
    boundary_logits: torch.Tensor, op_logits: torch.Tensor, config: PredictorConfig, k: int
) -> list[Program]:
    depth = config.depth
    starts = [0] + [i for i in range(1, depth) if torch.sigmoid(boundary_logits[i]) > config.threshold]
    spans = []
    for a, b in zip(starts, [*starts[1:], depth], strict=True):
        spans += [(s, min(config.k_max, b - s)) for s in range(a, b, config.k_max)]  # split long segments
    logp = torch.log_softmax(op_logits.float(), dim=-1)  # (D, 3)
    lo, hi = math.ceil(config.min_length_ratio * depth), math.floor(config.max_length_ratio * depth)
    width = max(config.beam, k)
    beams: list[tuple[float, tuple[int, ...]]] = [(0.0, ())]
    for i, (start, _) in enumerate(spans):
        top = torch.topk(logp[start], config.ops_per_segment).indices.tolist()
        grown = [(score + logp[start, o].item(), ops + (o,)) for score, ops in beams for o in top]
        remaining_max = sum(2 * n for _, n in spans[i + 1 :])
        grown = [b for b in grown if lo <= _length(spans, b[1]) + remaining_max and _length(spans, b[1]) <= hi]
        beams = sorted(grown, key=lambda b: -b[0])[:width] or beams
    out: list[Program] = []
    for _, ops in sorted(beams, key=lambda b: -b[0]):
        if not lo <= _length(spans, ops) <= hi:
            continue
        try:
            compact = CompactProgram(tuple(Segment(s, n, OPS[o]) for (s, n), o in zip(spans, ops, strict=True)))
        except ProgramError:
            continue  # every segment skipped
        out.append(compact.to_program())
    identity = Program.identity(depth)
    if not out:
        out.append(identity)  # nothing admissible decoded: fall back to the full model
    if config.identity_rule == "mass" and out[0] == identity and len(out) > 1:
        keep = OPS.index(Op.KEEP)
        if sum(logp[start, keep].item() for start, _ in spans) < math.log(0.5):  # P(identity) < 1/2
            out[0], out[1] = out[1], out[0]  # an edit is more likely than none: the most likely edit first
    return out[:k]


def predict(model: ProgramPredictor, embedder, questions: Sequence[str], k: int) -> list[list[Program]]:
    """The ``k`` best programs for each question, best first: what evaluation runs and what is served.

    Each question is embedded and scored alone, so that its programs do not depend on the other questions
    of a batch (padding changes the float sums): the served model answers a question exactly as the
    evaluation did, whatever else a request holds.
    """
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for question in questions:
            x, mask = embedder([question])  # (1, T, E), (1, T)
            b, o = model(x.to(device), mask.to(device))  # (1, D), (1, D, 3)
            out.append(decode(b[0].cpu(), o[0].cpu(), model.config, k))
    return out


def prompt_spec(model: ProgramPredictor):
    """The prompt of the labels the predictor was trained on (:class:`polar.tasks.prompts.PromptSpec`)."""
    from polar.tasks.prompts import PromptSpec

    data = model.config.meta.get("prompt")
    if data is None:
        raise ValueError("this predictor records no prompt spec (trained before prompts were recorded): train it again")
    return PromptSpec.from_dict(data)


def compact_arrays(compact: CompactProgram) -> tuple[list[int], list[int]]:
    """A compact program as the network's targets: boundaries (D,) and op indices at segment starts (-100
    elsewhere, which the loss ignores)."""
    return compact.boundaries(), [OPS.index(op) if op is not None else -100 for op in compact.ops()]


def program_targets(programs: Sequence[Program | str], depth: int, k_max: int = DEFAULT_K_MAX):
    """The canonical compact forms of ``programs`` as the network's arrays: boundaries (M, D) float, ops (M, D)
    long (the op index at segment starts, -100 elsewhere), and which programs have a compact form (M,) bool
    (the others get the full depth's arrays and must be masked out)."""
    identity = CompactProgram.from_program(Program.identity(depth), depth, k_max)
    bounds, ops, ok = [], [], []
    for p in programs:
        try:
            c = CompactProgram.from_program(Program.coerce(p), depth, k_max)
        except ProgramError:
            c = None
        ok.append(c is not None)
        z, o = compact_arrays(c or identity)
        bounds.append(z)
        ops.append(o)
    return torch.tensor(bounds, dtype=torch.float32), torch.tensor(ops, dtype=torch.long), torch.tensor(ok)


def program_logprob(
    boundary_logits: torch.Tensor, op_logits: torch.Tensor, boundaries: torch.Tensor, ops: torch.Tensor
) -> torch.Tensor:
    """Log-probability (B, M) of M compact programs for each of B inputs under the network's outputs.

    Args:
        boundary_logits: (B, D); op_logits: (B, D, 3): the network's outputs.
        boundaries: (M, D) 0/1; ops: (M, D) op index at segment starts, -100 elsewhere (:func:`program_targets`).

    The boundary of every layer after the first counts (a segment starts there or not), and the op of every
    segment start: the factorisation the training loss fits.
    """
    z = boundaries[:, 1:].to(boundary_logits.dtype)
    b = boundary_logits[:, 1:]
    score = torch.nn.functional.logsigmoid(b) @ z.T + torch.nn.functional.logsigmoid(-b) @ (1 - z).T  # (B, M)
    logp = torch.log_softmax(op_logits, dim=-1)  # (B, D, 3)
    chosen = torch.nn.functional.one_hot(ops.clamp(min=0), len(OPS)).to(logp.dtype) * (ops != -100)[..., None]
    return score + torch.einsum("bdk,mdk->bm", logp, chosen)


def _length(spans: list[tuple[int, int]], ops: tuple[int, ...]) -> int:
    return sum(n * OPS[o].times for (_, n), o in zip(spans, ops, strict=False))


# ------------------------------------------------------------------------------------------ save/load
def save(model: ProgramPredictor, out_dir: str | Path) -> Path:
    """Write ``predictor.safetensors`` and ``config.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, out_dir / WEIGHTS)
    (out_dir / CONFIG).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    return out_dir


def load(path: str | Path, device: str | torch.device = "cpu") -> ProgramPredictor:
    """Load a predictor saved by :func:`save` (a folder with its two files)."""
    path = Path(path)
    missing = [f for f in (WEIGHTS, CONFIG) if not (path / f).exists()]
    if missing:
        raise FileNotFoundError(f"{path} is not a predictor folder: {', '.join(missing)} missing (run `polar train`)")
    data = json.loads((path / CONFIG).read_text())
    data.setdefault("decoder", "threshold")  # saved before the search decoder: decode as it was evaluated
    config = PredictorConfig(**data)
    model = ProgramPredictor(config)
    model.load_state_dict(load_file(path / WEIGHTS))
    return model.to(device).eval()
