"""The ``polar`` model of lm-evaluation-harness: any task, run under a program of layers or a predictor's choice.

Model args (``--model_args`` on lm-eval's command line, or keyword arguments):

- ``model=``: any polar model spec (a bundled name such as ``smollm2-135m``, a model folder, a ``.gguf`` file or a
  hub id); with ``predictor=`` it defaults to the base model the predictor records;
- ``program=`` (see :func:`polar.harness.choice.parse_program` for the comma-free spellings), ``program_file=``, or
  ``predictor=`` (a predictor folder or ``models:/polar-<model>@champion``); none of them: the full depth;
- ``batch_size`` (continuation rows or prompts per forward), ``dtype``, ``device``, ``max_length``,
  ``add_bos_token``, ``programs_out`` (a JSONL file of the program and layers run per document), ``tracking_uri``.

Tokenization, truncation, stop strings and the empty-context rule are the harness's ``hf`` model's (lm-eval 0.4.13,
``models/huggingface.py``), so that with the full-depth program both give the same log-likelihoods and the same
greedy text (``tests/test_harness.py`` holds them equal). The program of every document, and the layers it ran per
token, are recorded: in ``results["config"]["polar"]`` (a summary per task) and in ``programs_out``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import (
    _add_special_kwargs,
    configure_pad_token,
    handle_stop_sequences,
    has_bos_prefix,
    normalize_gen_kwargs,
    postprocess_generated_text,
    resolve_max_length,
)
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from polar.decoding import Sampling
from polar.harness import runner
from polar.harness.choice import (
    ProgramChoice,
    base_model_of,
    load_choice,
    parse_program,
    predictor_folder,
    read_program_file,
)
from polar.programs import Program

__all__ = ["PolarLM"]

DEFAULT_MAX_LENGTH = 2048  # the hf model's default when neither the config nor the tokenizer gives a length
AUTO_BATCH = 32  # rows per forward for batch_size=auto: the executor does not probe memory
_SAMPLING_KEYS = {"do_sample", "temperature", "top_p", "top_k", "seed"}


class PolarLM(TemplateLM):
    """lm-eval's model interface over :class:`polar.executor.Executor` (see the module docstring for the args)."""

    backend = "causal"

    def __init__(
        self,
        model: str | None = None,
        program: str | int | list | None = None,
        program_file: str | None = None,
        predictor: str | None = None,
        batch_size: int | str | None = 1,
        max_batch_size: int | None = None,
        device: str | None = "auto",
        dtype: str | None = "auto",
        max_length: int | None = None,
        add_bos_token: bool | None = None,
        programs_out: str | None = None,
        tracking_uri: str | None = None,
        pretrained: str | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise TypeError(
                f"polar model: unknown model_args {', '.join(sorted(unknown))}; accepted: model (or pretrained), "
                "program, program_file, predictor, batch_size, dtype, device, max_length, add_bos_token, programs_out, "
                "tracking_uri"
            )
        choices = (("program", program), ("program_file", program_file), ("predictor", predictor))
        given = [n for n, v in choices if v is not None and v != ""]  # program=0 is a program
        if len(given) > 1:
            raise ValueError(f"polar model: give one of program, program_file and predictor, not {' and '.join(given)}")
        from polar.backbone import load

        folder = predictor_folder(str(predictor), tracking_uri) if predictor else None
        spec = model or pretrained or (base_model_of(folder) if folder is not None else None)
        if not spec:
            raise ValueError(
                "polar model: model= is required (a bundled name, a model folder, a .gguf file or a hub id)"
            )
        self.backbone = load(str(spec), device=_device(device), dtype=dtype or "auto")
        self.executor = self.backbone.executor
        self.tokenizer = configure_pad_token(self.backbone.tokenizer, model_config=self.backbone.model.config)
        self._device = self.executor.device
        self.batch_size_per_gpu = _batch_size(batch_size, max_batch_size)
        self.add_bos_token = add_bos_token
        self._max_length = int(max_length) if max_length else None
        self.programs_out = Path(programs_out) if programs_out else None
        self.records: dict[tuple[str, int], str] = {}  # (task, doc_id) -> program text
        if folder is not None:
            self.source = f"predictor {predictor}"
            self.choose_program: ProgramChoice = load_choice(folder, self.backbone)
        else:
            depth = self.backbone.depth
            if program_file:
                fixed = read_program_file(program_file, depth)
            elif "program" in given:
                fixed = parse_program(program, depth)
            else:
                fixed = Program.identity(depth)
            self.use_program(fixed)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> PolarLM:
        """lm-eval's constructor hook. Its command line always passes ``batch_size`` and ``device`` (from
        ``--batch_size`` and ``--device``, defaults included) beside the model args; here ``batch_size=``, ``device=``
        written in ``--model_args`` win instead of clashing with them."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> PolarLM:
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    def use_program(self, program: Program | str) -> None:
        """Run every context under ``program`` from now on, with a fresh record (a sweep reuses one loaded model)."""
        fixed = parse_program(program.text if isinstance(program, Program) else program, self.backbone.depth)
        self.source = f"program {fixed.text}"
        self.choose_program = lambda _context: fixed
        self.records = {}

    # ------------------------------------------------------------------------------------ lm-eval's interface
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        if self._max_length:
            return self._max_length
        return resolve_max_length(self.backbone.model.config, self.tokenizer, default=DEFAULT_MAX_LENGTH)

    @property
    def max_gen_toks(self) -> int:
        return 256

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(
        self,
        string: str,
        add_special_tokens: bool | None = None,
        left_truncate_len: int | None = None,
        **kwargs,  # noqa: ARG002 - lm-eval's signature
    ) -> list[int]:
        special = _add_special_kwargs(add_special_tokens, self.add_bos_token)
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            special["add_special_tokens"] = False  # the text already starts with BOS
        encoding = self.tokenizer.encode(string, **special)
        return encoding[-left_truncate_len:] if left_truncate_len else encoding

    def tok_decode(self, tokens: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
        )

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        self._record(requests, [self._context_text(r.args[0]) for r in requests])
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:  # noqa: ARG002
        rows = []
        for (context, _), context_enc, continuation_enc in requests:
            rows.append(
                (*self._truncated(context_enc, continuation_enc), self.choose_program(self._context_text(context)))
            )
        results = self._score(rows, disable_tqdm)
        for (request, _, _), answer in zip(requests, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", request, answer)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        strings = [r.args[0] for r in requests]
        self._record(requests, strings)
        rows, owners = [], []
        for i, string in enumerate(strings):
            program = self.choose_program(string)
            windows = get_rolling_token_windows(self.tok_encode(string), self.prefix_token_id, self.max_length, 1)
            for context, continuation in map(make_disjoint_window, windows):
                rows.append((context, continuation, program))
                owners.append(i)
        totals = [0.0] * len(strings)
        for i, (logprob, _) in zip(owners, self._score(rows, disable_tqdm), strict=True):
            totals[i] += logprob
        for string, total in zip(strings, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        contexts = [r.args[0] for r in requests]
        programs = self._record(requests, contexts)
        out: list[str | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="Running generate_until requests (polar)")
        by_kwargs: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            by_kwargs.setdefault(json.dumps(r.args[1], sort_keys=True, default=str), []).append(i)
        for members in by_kwargs.values():
            kwargs = normalize_gen_kwargs(requests[members[0]].args[1], self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=self.tok_decode([self.eot_token_id], False))
            max_gen_toks = int(kwargs.pop("max_gen_toks"))
            sampling = _sampling(kwargs)
            room = self.max_length - max_gen_toks
            if room <= 0:
                raise ValueError(
                    f"max_gen_toks {max_gen_toks} leaves no room for a prompt in the model's {self.max_length} "
                    "positions: lower max_gen_toks (--gen_kwargs) or raise max_length"
                )
            encoded = {i: self._encode_context(contexts[i])[-room:] for i in members}
            members = sorted(members, key=lambda i: -len(encoded[i]))  # longest first: batches pad little
            for start in range(0, len(members), self.batch_size):
                batch = members[start : start + self.batch_size]
                tokens = runner.generate(
                    self.executor, [encoded[i] for i in batch], [programs[i] for i in batch], max_gen_toks, until,
                    self.tok_decode, sampling,
                )  # fmt: skip
                for i, row in zip(batch, tokens, strict=True):
                    out[i] = postprocess_generated_text(self.tok_decode(row), until, None)
                    self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
                bar.update(len(batch))
        bar.close()
        return out  # type: ignore[return-value]

    def get_model_info(self) -> dict:
        """Logged by lm-eval under ``results["config"]``: the model, the program source, and per task the
        documents, their mean layers per token and layers / D, and the programs run."""
        return {"polar": self.summary()}

    # ------------------------------------------------------------------------------------------- helpers
    def summary(self) -> dict:
        """What ran: the model, the program source and, per task, layers per token and the programs' counts."""
        depth = self.backbone.depth
        tasks: dict[str, dict] = {}
        for (task, _), program in sorted(self.records.items()):
            tasks.setdefault(task, Counter())[program] += 1
        per_task = {}
        for task, counts in tasks.items():
            docs = sum(counts.values())
            layers = sum(len(Program.parse(p)) * n for p, n in counts.items()) / docs
            per_task[task] = {
                "documents": docs,
                "layers": layers,
                "layers_ratio": layers / depth,
                "programs": dict(counts.most_common()),
            }
        return {"model": self.backbone.spec, "depth": depth, "source": self.source, "tasks": per_task}

    def _context_text(self, context: str) -> str:
        """The text a program is chosen for: the context, or for an empty one the prefix token it stands for."""
        return context or self.tok_decode([self.prefix_token_id], skip_special_tokens=False)

    def _record(self, requests, texts: Sequence[str]) -> list[Program]:
        """Choose each request's program, note it per document, and rewrite ``programs_out``."""
        programs = [self.choose_program(self._context_text(t)) for t in texts]
        for r, program in zip(requests, programs, strict=True):
            self.records[(r.task_name or "", r.doc_id if r.doc_id is not None else r.idx)] = program.text
        if self.programs_out is not None:
            self._write_records()
        return programs

    def _write_records(self) -> None:
        depth = self.backbone.depth
        lines = [
            json.dumps({"task": task, "doc_id": doc, "program": p, "layers": len(Program.parse(p)), "depth": depth})
            for (task, doc), p in sorted(self.records.items())
        ]
        self.programs_out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.programs_out.with_name(f".{self.programs_out.name}.{os.getpid()}.tmp")
        tmp.write_text("".join(line + "\n" for line in lines))
        tmp.replace(self.programs_out)

    def _truncated(self, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
        """The hf model's left truncation: context and continuation within ``max_length + 1`` tokens."""
        if len(continuation) > self.max_length:
            raise ValueError(
                f"a continuation of {len(continuation)} tokens does not fit the model's {self.max_length} positions"
            )
        whole = (context + continuation)[-(self.max_length + 1) :]
        return whole[: len(whole) - len(continuation)], continuation

    def _encode_context(self, context: str) -> list[int]:
        """A generation prompt's tokens, as the hf model's batch encoding gives them."""
        if has_bos_prefix(context, getattr(self.tokenizer, "bos_token", None)):
            return self.tokenizer(context, add_special_tokens=False)["input_ids"]
        if self.add_bos_token is not None:
            return self.tokenizer(context, add_special_tokens=self.add_bos_token)["input_ids"]
        return self.tokenizer(context)["input_ids"]

    def _score(self, rows, disable_tqdm: bool) -> list[tuple[float, bool]]:
        bar = tqdm(total=len(rows), disable=disable_tqdm, desc="Running loglikelihood requests (polar)")
        try:
            return runner.score(self.executor, rows, self.batch_size, bar.update)
        finally:
            bar.close()


def _device(device: str | None) -> str:
    """The device to load on. lm-eval's command line defaults to ``cuda:0``; as its hf model does, a machine without
    CUDA then runs on the CPU."""
    import torch

    if not device or (str(device).startswith("cuda") and not torch.cuda.is_available()):
        return "auto"
    return str(device)


def _batch_size(batch_size: int | str | None, max_batch_size: int | None) -> int:
    if batch_size in (None, ""):
        return 1
    if str(batch_size).startswith("auto"):
        return int(max_batch_size or AUTO_BATCH)
    try:
        size = int(batch_size)
    except ValueError:
        raise ValueError(f"batch_size={batch_size!r}: give a number of rows per forward, or auto") from None
    if size < 1:
        raise ValueError(f"batch_size={batch_size!r}: give at least 1")
    return size


def _sampling(kwargs: dict) -> Sampling:
    """The executor's sampling settings for normalised lm-eval generation kwargs (greedy unless do_sample)."""
    unsupported = sorted(set(kwargs) - _SAMPLING_KEYS)
    if unsupported:
        raise ValueError(
            f"generation kwargs {', '.join(unsupported)} are not supported by the polar model; supported: until, "
            f"max_gen_toks, {', '.join(sorted(_SAMPLING_KEYS))}"
        )
    if not kwargs.get("do_sample"):
        return Sampling()
    return Sampling(
        temperature=float(kwargs.get("temperature") or 1.0),
        top_p=float(kwargs.get("top_p") or 1.0),
        top_k=int(kwargs.get("top_k") or 0),
        seed=int(kwargs.get("seed") or 0),
    )
