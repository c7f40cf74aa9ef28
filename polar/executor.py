"""Run a frozen decoder-only model along programs of layers.

The executor batches *rows*: each row is one prompt run under one program. A batch of prompts under
one program and a batch of programs over one prompt are both just rows. At step ``j`` of the programs,
rows are grouped by the layer they visit; each group is one layer call on its rows, with its own KV
cache slot (:class:`~polar.hf.ProgramCache`), so a repeated layer keeps one history per visit.

Two paths produce the same tokens: cached decoding (prefill once, then one token per step over
preallocated state, :mod:`polar.decoding`) and the slow reference semantics (``use_cache=False``:
recompute the whole sequence at every step). Tests hold them equal, token for token, for skip and loop
programs on every supported architecture.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from polar.decoding import GREEDY, Sampling, decode, decode_recomputed, finish, run_plan
from polar.hf import Decoder, ProgramCache, SlotPool
from polar.plan import Plan
from polar.prefix import PrefixStore
from polar.programs import Program

__all__ = ["Executor", "Generation", "Sampling", "Score"]  # Sampling lives in polar.decoding


@dataclass(frozen=True)
class Generation:
    """What one row produced."""

    program: str  # canonical text form
    prompt_tokens: int
    tokens: list[int]  # new tokens, without padding, up to and including EOS
    text: str | None  # decoded new tokens (None without a tokenizer)
    finish_reason: str  # "stop" (EOS or a stop token, kept in tokens) or "length"
    layers_per_token: int  # layer calls per forward position: len(program)
    depth: int  # layers of the model
    seconds: float  # wall time of the whole batch this row ran in

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Score:
    """Teacher-forced score of a continuation under a program."""

    program: str
    logprob: float  # sum of log-probabilities of the continuation tokens
    n_tokens: int
    greedy: bool  # True when greedy decoding would produce exactly this continuation

    def to_dict(self) -> dict:
        return asdict(self)


class Executor:
    """Runs programs of layers on a frozen causal LM.

    Args:
        model: a supported transformers causal LM (see :data:`polar.hf.SUPPORTED_MODEL_TYPES`).
        tokenizer: optional; used to decode generated text and to find EOS and padding tokens.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
        self.decoder = Decoder.of(model)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.eos_token_ids = _eos_token_ids(model, tokenizer)
        pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
        if pad is None:
            pad = model.config.pad_token_id if getattr(model.config, "pad_token_id", None) is not None else None
        self.pad_token_id = pad if pad is not None else (min(self.eos_token_ids) if self.eos_token_ids else 0)
        self.slot_pool = SlotPool()  # cache buffers reused from one menu grid to the next (polar.grid)

    @property
    def depth(self) -> int:
        return self.decoder.depth

    @property
    def device(self) -> torch.device:
        return self.decoder.embed.weight.device

    # --------------------------------------------------------------------------------------- forward
    def plan(self, programs: Sequence[Program | str]) -> Plan:
        """Check programs against the model and group their layer calls (raises ProgramError)."""
        progs = [Program.coerce(p).validate(self.depth, max_visits=None) for p in programs]
        return Plan.build(progs, self.decoder.layer_kinds, self.device)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,  # (B, q)
        attention_mask: torch.Tensor,  # (B, past + q)
        plan: Plan,
        cache: ProgramCache | None = None,
        keep: int | None = None,
    ) -> torch.Tensor:
        """Logits (B, keep or q, V) of ``input_ids`` with each row run under its program.

        Left padding is supported: positions come from the attention mask.
        """
        hidden = self.hidden_states(input_ids, attention_mask, plan, cache)
        if keep is not None:
            hidden = hidden[:, -keep:]
        return self.decoder.logits(hidden)

    @torch.inference_mode()
    def hidden_states(
        self,
        input_ids: torch.Tensor,  # (B, q)
        attention_mask: torch.Tensor,  # (B, past + q)
        plan: Plan | None,
        cache: ProgramCache | None = None,
    ) -> torch.Tensor:
        """Hidden states (B, q, C) after each row's program, before the final norm (``plan=None``: the
        token embeddings, as the model scales them)."""
        if plan is None:
            return self.decoder.embed(input_ids)
        return run_plan(self.decoder, input_ids, attention_mask, plan, cache)

    # ------------------------------------------------------------------------------------- generation
    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        programs: Sequence[Program | str],
        max_new_tokens: int = 64,
        sampling: Sampling = GREEDY,
        use_cache: bool = True,
        stop_token_ids: Sequence[int] = (),
        prefix_store: PrefixStore | None = None,
    ) -> list[Generation]:
        """Generate from each prompt under each program.

        ``prompts`` and ``programs`` pair up row by row; a single prompt is run under every program and
        a single program over every prompt. A row ends at an EOS token or one of ``stop_token_ids``
        (kept in its tokens), or after ``max_new_tokens``. Finished rows stop costing work within a few
        steps (see :mod:`polar.decoding` for when they leave the batch); the others are unaffected. With
        ``use_cache=False`` the whole sequence is recomputed at every step (the slow reference semantics
        that cached decoding must reproduce). Programs over one shared prompt compute the prompt's
        hidden states and KV entries once per distinct prefix of layer visits; a ``prefix_store`` keeps
        them for later calls with the same prompt (see :mod:`polar.prefix`).
        """
        prompts, programs = _broadcast(prompts, programs)
        plan = self.plan(programs)
        start = time.perf_counter()
        ids, mask = self.pad_left(prompts)
        generator = None
        if not sampling.greedy:
            generator = torch.Generator(device=self.device).manual_seed(sampling.seed)
        stops = torch.tensor(sorted(self.eos_token_ids | set(stop_token_ids)) or [-1], device=self.device)
        run = (self.decoder, ids, mask, plan, max_new_tokens, sampling, stops, generator)
        if use_cache:
            shared = (len(prompts) > 1 or prefix_store is not None) and all(p == prompts[0] for p in prompts)
            tokens, steps = decode(*run, shared_prompt=shared, store=prefix_store)
        else:
            tokens, steps = decode_recomputed(*run)
        rows, stopped = finish(tokens, steps, stops)
        seconds = time.perf_counter() - start
        return [
            Generation(
                program=program.text,
                prompt_tokens=len(prompt),
                tokens=row,
                text=self.decode(row),
                finish_reason="stop" if stop else "length",
                layers_per_token=len(program),
                depth=self.depth,
                seconds=seconds,
            )
            for program, prompt, row, stop in zip(plan.programs, prompts, rows, stopped, strict=True)
        ]

    def decode(self, tokens: Sequence[int]) -> str | None:
        if self.tokenizer is None:
            return None
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    # ---------------------------------------------------------------------------------------- scoring
    @torch.inference_mode()
    def score(
        self,
        prompts: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[int]],
        programs: Sequence[Program | str],
    ) -> list[Score]:
        """Teacher-forced log-probability of each continuation after its prompt, under its program.

        Rows pair up as in :meth:`generate`; ``continuations`` has one entry per row (or one for all).
        """
        prompts, programs = _broadcast(prompts, programs)
        if len(continuations) == 1:
            continuations = list(continuations) * len(prompts)
        if len(continuations) != len(prompts):
            raise ValueError(f"{len(continuations)} continuations for {len(prompts)} rows")
        if any(len(c) == 0 for c in continuations):
            raise ValueError("an empty continuation has no score")
        plan = self.plan(programs)
        full = [list(p) + list(c) for p, c in zip(prompts, continuations, strict=True)]
        ids, mask = self.pad_left(full)
        longest = max(len(c) for c in continuations)
        logits = self.forward(ids, mask, plan, keep=longest + 1)  # (B, longest + 1, V)
        logp = torch.log_softmax(logits[:, :-1], dim=-1)  # position i predicts token i + 1
        target = ids[:, -longest:]  # (B, longest)
        picked = logp.gather(-1, target[..., None])[..., 0]
        agree = logp.argmax(-1) == target
        out = []
        for r, cont in enumerate(continuations):
            n = len(cont)
            out.append(
                Score(
                    program=plan.programs[r].text,
                    logprob=float(picked[r, -n:].sum()),
                    n_tokens=n,
                    greedy=bool(agree[r, -n:].all()),
                )
            )
        return out

    # ---------------------------------------------------------------------------------------- helpers
    def pad_left(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        if any(len(s) == 0 for s in seqs):
            raise ValueError("empty prompt: give at least one token")
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
            mask[r, width - len(s) :] = 1
        return ids.to(self.device), mask.to(self.device)


def _broadcast(prompts: Sequence[Sequence[int]], programs: Sequence) -> tuple[list, list]:
    prompts, programs = list(prompts), list(programs)
    if not prompts or not programs:
        raise ValueError("give at least one prompt and one program")
    if len(prompts) == 1:
        prompts = prompts * len(programs)
    elif len(programs) == 1:
        programs = programs * len(prompts)
    if len(prompts) != len(programs):
        raise ValueError(f"{len(prompts)} prompts and {len(programs)} programs: give one of either, or as many")
    return prompts, programs


def _eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None) -> set[int]:
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    for source in (getattr(gen, "eos_token_id", None), getattr(model.config, "eos_token_id", None)):
        if source is None:
            continue
        ids.update([source] if isinstance(source, int) else source)
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
