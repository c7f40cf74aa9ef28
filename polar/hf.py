"""The one seam between polar and transformers' model internals.

Everything the executor needs from a decoder-only model goes through this module: the embedding,
the list of decoder layers and each layer's attention kind, the masks and rotary embeddings, the
call of one layer, and the final norm, head and logit soft-capping. It uses the public module
interfaces of the current transformers release (``masking_utils``, ``Cache``, the modules' own
``forward``) and never copies or patches modeling code. Tests run it on one tiny random model per
supported architecture, against the stock model.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer, StaticLayer
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

__all__ = [
    "FULL",
    "SLIDING",
    "VOCAB_CHUNK",
    "SUPPORTED_MODEL_TYPES",
    "Decoder",
    "Picked",
    "ProgramCache",
    "SlotPool",
    "UnsupportedModelError",
    "check_model_type",
]

FULL, SLIDING = "full_attention", "sliding_attention"

# Vocabulary entries whose logits :meth:`Decoder.pick` computes at a time. On 2 CPU cores, the greedy token and its
# log-probability for 288 rows of Gemma-3 (262k entries) took 0.89 s in chunks of 2,048 against 1.38 s from the
# whole (288, V) logits, 0.12 s against 0.22 s for 16 rows; SmolLM2 (49k) 0.13 s against 0.20 s for 288 rows.
VOCAB_CHUNK = 2048
# On an accelerator each chunk costs kernel launches, so chunks there hold up to this many logits (rows x
# entries) instead: the whole vocabulary for up to 256 rows of Gemma-3 (not measured: no GPU was lent yet).
ACCELERATOR_CHUNK_LOGITS = 2**26

# model_type -> family name, for the architectures the equivalence tests cover.
SUPPORTED_MODEL_TYPES = {
    "llama": "Llama (SmolLM2, Llama 2/3)",
    "qwen2": "Qwen2 / Qwen2.5",
    "qwen3": "Qwen3",
    "mistral": "Mistral",
    "gemma2": "Gemma 2",
    "gemma3_text": "Gemma 3 (text)",
    "phi3": "Phi-3",
}


class UnsupportedModelError(ValueError):
    """A model whose architecture the executor does not (yet) run."""


def check_model_type(model_type: str | None, what: str) -> None:
    """Raise UnsupportedModelError, naming the supported architectures, unless ``model_type`` is one."""
    if model_type not in SUPPORTED_MODEL_TYPES:
        supported = ", ".join(f"{k} ({v})" for k, v in SUPPORTED_MODEL_TYPES.items())
        raise UnsupportedModelError(
            f"{what}: model type {model_type!r} is not supported; supported decoder-only architectures: {supported}"
        )


class ProgramCache(Cache):
    """A KV cache with one slot per *visit* of a program, not per layer.

    The executor calls :meth:`select` before each layer call; the layer's attention then calls
    ``update(k, v, layer_idx)`` as usual and the keys land in the selected slot, whatever the layer's
    own ``layer_idx`` is. A layer visited twice therefore keeps two independent histories. Every slot
    sees every token, so all slots have the same length and masks can be sized from slot 0.

    Without ``capacity`` the slots grow by concatenation (prefill, scoring). With it, each slot is a
    transformers ``StaticLayer``: keys and values preallocated for ``capacity`` positions and written in
    place at the next index. The layers then attend over all ``capacity`` positions, and the mask, sized
    by the cache (``get_mask_sizes``), must hide the positions not yet written: the causal rule does
    (they lie after the query), and the decoder's full-width padding mask does too.
    """

    def __init__(self, n_slots: int, capacity: int | None = None) -> None:
        layers = [DynamicLayer() if capacity is None else StaticLayer(capacity) for _ in range(n_slots)]
        super().__init__(layers=layers)
        self.capacity = capacity
        self._slot = 0

    def select(self, slot: int) -> ProgramCache:
        self._slot = slot
        return self

    @classmethod
    def from_states(cls, states: list[tuple[torch.Tensor, torch.Tensor]], capacity: int | None = None) -> ProgramCache:
        """A cache whose slot ``i`` holds keys and values ``states[i]`` (each (b, heads, T, head_dim)),
        static slots of ``capacity`` positions if given."""
        cache = cls(len(states), capacity)
        for layer, (keys, values) in zip(cache.layers, states, strict=True):
            layer.update(keys, values)
        return cache

    @classmethod
    def from_buffers(cls, buffers: list[tuple[torch.Tensor, torch.Tensor]], length: int) -> ProgramCache:
        """A static cache whose slot ``i`` is keys and values ``buffers[i]`` (each (b, heads, capacity, head_dim),
        used in place), of which the first ``length`` positions are written; the caller zeroes the rest."""
        cache = cls(len(buffers), buffers[0][0].shape[2])
        for layer, (keys, values) in zip(cache.layers, buffers, strict=True):
            layer.lazy_initialization(keys[:0], values[:0])  # transformers sets the layer's dtype, device, heads
            layer.keys, layer.values, layer.batch_size = keys, values, keys.shape[0]
            layer.cumulative_length.fill_(length)
        return cache

    def buffers(self) -> list[torch.Tensor]:
        """The key and value tensors of every slot (to give back to a :class:`SlotPool`)."""
        return [t for layer in self.layers if layer.is_initialized for t in (layer.keys, layer.values)]

    def gather(self, sources: list[list[tuple[int, int]]], length: int | None = None) -> ProgramCache:
        """A new cache whose slot ``i`` stacks, per member, row ``pos`` of old slot ``slot`` for each
        ``(slot, pos)`` in ``sources[i]``. A static cache needs ``length``, the positions written so far
        (only those are copied); the new cache has the same capacity."""
        if self.capacity is not None and length is None:
            raise ValueError("gathering a static cache needs the number of positions written")
        end = length if self.capacity is not None else None
        states = []
        for members in sources:
            slots = {s for s, _ in members}
            if len(slots) == 1:  # the common case: one old slot, some of its rows
                layer = self.layers[members[0][0]]
                idx = torch.tensor([p for _, p in members], device=layer.keys.device)
                states.append((layer.keys[idx, :, :end], layer.values[idx, :, :end]))
            else:
                states.append(
                    (
                        torch.cat([self.layers[s].keys[p : p + 1, :, :end] for s, p in members]),
                        torch.cat([self.layers[s].values[p : p + 1, :, :end] for s, p in members]),
                    )
                )
        return ProgramCache.from_states(states, self.capacity)

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):  # noqa: ARG002 - layer_idx ignored on purpose
        return self.layers[self._slot].update(key_states, value_states, *args, **kwargs)


class SlotPool:
    """Cache buffers kept for reuse from one batch to the next.

    A grid of menu labeling allocates gigabytes of static cache slots, and a fresh allocation costs its page
    faults: zeroing 3.8 GB of new memory took 1.5-3.2 s on 2 CPU cores, re-zeroing the same memory 0.2-0.3 s.
    Grids of one level have the same shapes up to a few positions, so buffers given back after one grid serve
    the next. A buffer serves a request of at least half its size. The pool keeps at most ``share`` times the
    largest cache given back, the oldest buffers going first, and makes room before it allocates, so that what
    it holds and what it lends stay within about that much.
    """

    def __init__(self, share: float = 1.25, slack: float = 0.125) -> None:
        self.share, self.slack = share, slack
        self._free: list[torch.Tensor] = []  # flat buffers, oldest first
        self._lent: dict[int, tuple[int, torch.Tensor]] = {}  # data pointer of a lent view -> (gives then, buffer)
        self._gives = 0
        self.limit = 0  # bytes
        self.hits = self.misses = 0

    @property
    def bytes(self) -> int:
        return sum(t.nbytes for t in self._free)

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A tensor of ``shape`` with arbitrary contents."""
        need = math.prod(shape)
        fits = [
            (flat.numel(), i)
            for i, flat in enumerate(self._free)
            if flat.dtype == dtype and flat.device == device and need <= flat.numel() <= 2 * need
        ]
        if fits:
            flat = self._free.pop(min(fits)[1])
            self.hits += 1
        else:  # a little larger than asked, so that the next batch's slightly longer prompts fit
            size = math.ceil(need * (1 + self.slack))
            self._trim(self.limit - size * dtype.itemsize)  # room first
            flat = torch.empty(size, dtype=dtype, device=device)
            self.misses += 1
        view = flat[:need].view(shape)
        self._lent[view.data_ptr()] = (self._gives, flat)
        return view

    def give(self, cache: ProgramCache) -> None:
        """Take back the buffers of ``cache`` (which must not be used after)."""
        self._gives += 1
        given = [self._lent.pop(t.data_ptr())[1] for t in cache.buffers() if t.data_ptr() in self._lent]
        self.limit = max(self.limit, int(self.share * sum(t.nbytes for t in given)))
        self._free.extend(given)
        self._trim(self.limit)
        for ptr, (when, _) in list(self._lent.items()):  # lent to a batch that failed: forget it
            if when < self._gives - 64:
                del self._lent[ptr]

    def _trim(self, limit: int) -> None:
        while self._free and self.bytes > limit:
            self._free.pop(0)


@dataclass(frozen=True)
class Picked:
    """What :meth:`Decoder.pick` chose for each row."""

    token: torch.Tensor  # (b,) the highest logit's entry
    logprob: torch.Tensor  # (b,) its log-probability
    logits: torch.Tensor | None  # (k, V) float32 logits of the kept rows


@dataclass
class Decoder:
    """The parts of a causal LM that a program of layers is built from."""

    model: PreTrainedModel
    embed: nn.Module
    layers: nn.ModuleList
    norm: nn.Module
    head: nn.Module
    rotary: nn.Module
    layer_kinds: tuple[str, ...]  # attention kind of each layer: FULL or SLIDING
    softcap: float | None  # final logit soft-capping (Gemma 2)
    rotary_by_kind: bool  # Gemma 3: one rotary base frequency per attention kind

    @classmethod
    def of(cls, model: PreTrainedModel) -> Decoder:
        """Find the decoder parts of ``model``.

        Raises:
            UnsupportedModelError: the architecture is not one the executor supports.
        """
        config = model.config
        check_model_type(getattr(config, "model_type", None), type(model).__name__)
        if getattr(config, "use_bidirectional_attention", False) or not getattr(config, "is_causal", True):
            raise UnsupportedModelError(f"{type(model).__name__} is configured with bidirectional attention")
        base = model.get_decoder()
        missing = [a for a in ("embed_tokens", "layers", "norm", "rotary_emb") if not hasattr(base, a)]
        head = model.get_output_embeddings()
        if missing or head is None:
            raise UnsupportedModelError(f"{type(model).__name__} has no {', '.join(missing) or 'lm_head'}")
        depth = len(base.layers)
        kinds = getattr(config, "layer_types", None)
        if kinds is None:  # Mistral, Phi-3: one kind for every layer
            kinds = [SLIDING if getattr(config, "sliding_window", None) else FULL] * depth
        unknown = sorted(set(kinds) - {FULL, SLIDING})
        if unknown:
            raise UnsupportedModelError(f"{type(model).__name__} has layers of kind {unknown}")
        return cls(
            model=model,
            embed=base.embed_tokens,
            layers=base.layers,
            norm=base.norm,
            head=head,
            rotary=base.rotary_emb,
            layer_kinds=tuple(kinds[:depth]),
            softcap=getattr(config, "final_logit_softcapping", None),
            rotary_by_kind="layer_type" in inspect.signature(base.rotary_emb.forward).parameters,
        )

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def config(self):
        return self.model.config

    @property
    def sliding_window(self) -> int | None:
        """Positions a sliding-window layer attends to (None: the model has no such layers)."""
        return getattr(self.config, "sliding_window", None) if SLIDING in self.layer_kinds else None

    # ----------------------------------------------------------------------------------- per forward
    def masks(
        self,
        inputs_embeds: torch.Tensor,  # (B, q, C)
        attention_mask: torch.Tensor,  # (B, kv) 1 = real token
        cache: ProgramCache | None,
        position_ids: torch.Tensor,  # (B, q)
        kinds: set[str],
    ) -> dict[str, torch.Tensor | None]:
        """One attention mask per attention kind in use, built once per forward as the stock model does."""
        args = dict(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=cache,
            position_ids=position_ids,
        )
        out: dict[str, torch.Tensor | None] = {}
        if FULL in kinds:
            out[FULL] = create_causal_mask(**args)
        if SLIDING in kinds:
            out[SLIDING] = create_sliding_window_causal_mask(**args)
        return out

    def position_embeddings(
        self, hidden: torch.Tensor, position_ids: torch.Tensor, kinds: set[str]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Rotary (cos, sin) per attention kind; Gemma 3 has a different base frequency per kind."""
        if self.rotary_by_kind:
            return {k: self.rotary(hidden, position_ids, k) for k in kinds}
        shared = self.rotary(hidden, position_ids)
        return {k: shared for k in kinds}

    def run_layer(
        self,
        layer_idx: int,
        hidden: torch.Tensor,  # (b, q, C)
        mask: torch.Tensor | None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        position_ids: torch.Tensor,
        cache: ProgramCache | None,
    ) -> torch.Tensor:
        out = self.layers[layer_idx](
            hidden,
            attention_mask=mask,
            position_embeddings=position_embeddings,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=cache is not None,
        )
        return out[0] if isinstance(out, tuple) else out

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm, LM head and soft-capping: (b, q, C) -> (b, q, V) in float32."""
        return self._capped(self.head(self.norm(hidden)).float())

    def _capped(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.softcap is None else torch.tanh(logits / self.softcap) * self.softcap

    def pick(self, hidden: torch.Tensor, keep: torch.Tensor | None = None) -> Picked:
        """The greedy next token of each row from its last hidden state (b, C), with its log-probability.

        The head runs over the vocabulary in chunks (:data:`VOCAB_CHUNK` entries on CPU), keeping each row's
        running maximum and sum of exponentials, so the (b, V) logits never exist at once: the same tokens as
        ``logits(hidden).argmax(-1)`` (each chunk's logits are those numbers; ties go to the first entry), the
        log-probability as ``log_softmax`` gives it up to rounding, and far less memory traffic. ``keep`` (k,)
        names rows whose whole logits (k, V) are also returned (to sample from, or to read their distribution).
        """
        x = self.norm(hidden)
        if not isinstance(self.head, nn.Linear):  # a head of another kind: the whole logits at once
            logits = self._capped(self.head(x).float())
            return Picked(
                logits.argmax(-1), torch.log_softmax(logits, -1).amax(-1), None if keep is None else logits[keep]
            )
        weight, bias = self.head.weight, self.head.bias
        b, vocab = x.shape[0], weight.shape[0]
        best = torch.full((b,), -math.inf, device=x.device)
        total = torch.zeros(b, device=x.device)
        token = torch.zeros(b, dtype=torch.long, device=x.device)
        kept = None if keep is None else torch.empty((len(keep), vocab), device=x.device)
        size = VOCAB_CHUNK if x.device.type == "cpu" else max(VOCAB_CHUNK, ACCELERATOR_CHUNK_LOGITS // max(b, 1))
        for c in range(0, vocab, size):
            part = nn.functional.linear(x, weight[c : c + size], None if bias is None else bias[c : c + size])
            part = self._capped(part.float())
            if kept is not None:
                kept[:, c : c + size] = part[keep]
            top, at = part.max(-1)
            high = torch.maximum(best, top)
            total = total * torch.exp(best - high) + torch.exp(part - high[:, None]).sum(-1)
            token = torch.where(top > best, at + c, token)  # an equal maximum later keeps the first
            best = high
        return Picked(token, -torch.log(total), kept)
