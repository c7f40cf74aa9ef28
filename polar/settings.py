"""Every stage's settings, declared once: each class is a section of params.yaml and the options of its command.

A field's default and help (:func:`polar.config.setting`) make its ``polar <stage>`` option and its params.yaml
key (``SECTION``); tests hold params.yaml, the commands and dvc.yaml to these classes. This module imports
nothing heavy, so that ``polar --help`` is quick.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from polar.config import Flat, fields_of, names, setting
from polar.programs import DEFAULT_K_MAX, DEFAULT_MAX_VISITS
from polar.tasks.synthetic import TASK as SYNTHETIC_TASK

if TYPE_CHECKING:
    from polar.tasks.benchmarks import Fields
    from polar.tasks.prompts import PromptSpec

__all__ = [
    "DEFAULT_EMBEDDER",
    "DEFAULT_THREADS",
    "EFFICIENCY_MARGIN",
    "DECODERS",
    "METHODS",
    "IDENTITY_RULES",
    "SCORINGS",
    "SPACES",
    "SPLIT_RULES",
    "SYNTHETIC_SIZES",
    "STAGE_SETTINGS",
    "TRAIN_SETTINGS",
    "TRAIN_SHARED",
    "DTYPES",
    "EngineConfig",
    "recorded_threads",
    "EvalConfig",
    "Gates",
    "IngestConfig",
    "LabelConfig",
    "MenuConfig",
    "MenuNetworkConfig",
    "PoolConfig",
    "SearchConfig",
    "SelectConfig",
    "TrainConfig",
    "ValidateConfig",
]

SCORINGS = ("generate", "likelihood")  # how a menu program answers (polar/labeling/menu.py)
SPLIT_RULES = ("hash", "files", "sizes")  # how `polar ingest` splits a source (polar/ingest.py)
SPACES = ("skip", "loop", "joint")  # search spaces: skip actions only, repeat actions only, both
IDENTITY_RULES = ("mass", "marginal")  # where the predictor's decoding ranks the full-depth program
DECODERS = ("search", "threshold")  # how the predictor's outputs become programs (polar/predictor.py)
METHODS = ("network", "menu")  # what `polar train` fits (polar/training/network.py, polar/training/menu.py)
DEFAULT_EMBEDDER = "minilm"
EFFICIENCY_MARGIN = 0.01  # efficiency mode: the most pass@1 a choice may lose against base greedy (1 point)

DTYPES = ("auto", "float32", "bfloat16", "float16")  # auto: bfloat16 on CUDA, float32 on a CPU
DEFAULT_THREADS = 2  # fixed, not "all cores": float results follow the thread count (see EngineConfig)


def recorded_threads(numerics: dict | None) -> int:
    """The CPU threads labels were computed with (their ``settings.json`` ``engine``), else the default: what the
    stages after labeling compute their own floats with."""
    return (numerics or {}).get("threads", DEFAULT_THREADS)


SYNTHETIC_SIZES = {"train": 40, "validation": 10, "test": 20}  # questions per level unless given


@dataclass(frozen=True)
class IngestConfig:
    """Which questions, and how many per split (params.yaml ``ingest``)."""

    SECTION: ClassVar[str] = "ingest"

    task: str = setting(
        SYNTHETIC_TASK,
        "arith (synthetic levels), a benchmark (gsm8k, mawps, asdiv, math, math500, mmlu-pro-math, arc), "
        "or any name for a file of your own (with --question-field and --answer-field).",
    )
    levels: str = setting("1-5", "Synthetic levels, e.g. 1-5 or 1,3.")
    splits: str = setting(
        "hash",
        "How questions are split: hash (each question's split by a hash of its text; the sizes below cap each level), "
        "files (--source is a folder of train, validation or dev, and test files, each its own split: ARC's), or "
        "sizes (one source, the sizes below taken in all, in hash order: test first, then validation, the few-shot "
        "pool, train). Under files and sizes a question in two files stays in the first of test, validation, train.",
    )
    train: int | None = setting(None, "Train questions per level (synthetic: 40; else default all).")
    validation: int | None = setting(None, "Validation questions per level (synthetic: 10; else default all).")
    test: int | None = setting(None, "Test questions per level (synthetic: 20; else default all).")
    shots: int = setting(8, "Few-shot pool per level under the files and sizes rules (taken before train).")
    seed: int = setting(0, "Seed of the synthetic draw (splits do not depend on it).")
    source: str | None = setting(None, "Benchmark or own file, folder or hub id.")
    source_split: str = setting("test", "Split to read from a folder or hub id.")
    limit: int | None = setting(None, "Read at most this many usable records of the source.")
    question_field: str | None = setting(None, "Own file: the question's field.")
    answer_field: str = setting("answer", "Own file: the reference answer's field.")
    level_field: str | None = setting(None, "Own file: a level's field (default: none).")
    answer_kind: str = setting("number", "Own file: number, math or choice.")

    def __post_init__(self) -> None:
        if self.splits not in SPLIT_RULES:
            raise ValueError(f"ingest splits must be one of {', '.join(SPLIT_RULES)}, got {self.splits!r}")

    def level_numbers(self) -> list[int]:
        try:
            return sorted({int(x) for x in names(self.levels)})
        except ValueError:
            raise ValueError(f"levels must look like '1-5' or '1,3', got {self.levels!r}") from None

    def sizes(self) -> dict[str, int | None]:
        """Questions per level by split; the synthetic levels default to 40 / 10 / 20."""
        given = {"train": self.train, "validation": self.validation, "test": self.test}
        if self.task != SYNTHETIC_TASK:
            return given
        return {s: SYNTHETIC_SIZES[s] if n is None else n for s, n in given.items()}

    def fields(self) -> Fields | None:
        from polar.tasks.benchmarks import Fields

        if self.question_field is None:
            return None
        return Fields(self.question_field, self.answer_field, self.level_field, self.answer_kind)


@dataclass(frozen=True)
class EngineConfig:
    """How the base model computes (params.yaml ``engine``): its floating-point type and its CPU threads.

    Both change the floats a model computes, and so its texts and verdicts: in bfloat16 a program's greedy text can
    differ between a batch and a run alone, and on a CPU a reduction's order follows the intra-op thread count (a
    SmolLM2 menu folder labeled on 1 and on 2 threads differs in the fourth decimal of its log-probabilities:
    bench/README.md). So both are fixed settings,
    never read from the machine: a label folder records them with the device (``settings.json``) and refuses to
    resume, join or be compared with labels made otherwise; the same thread count on a loaded or an idle machine
    gives the same bytes.
    """

    SECTION: ClassVar[str] = "engine"

    dtype: str = setting(
        "auto",
        "Floating-point type of the base model: auto (bfloat16 on CUDA, float32 on a CPU), float32, bfloat16 or "
        "float16. Recorded with every label; labels of two dtypes never mix.",
    )
    threads: int = setting(
        DEFAULT_THREADS,
        "CPU threads of the model's arithmetic (torch intra-op threads; children get OMP_NUM_THREADS). Fixed rather "
        "than taken from the machine, because float results follow the thread count: raise it on a bigger machine, "
        "and label again (it is part of a label folder's settings).",
    )

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"engine dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.threads < 1:
            raise ValueError(f"engine threads must be at least 1, got {self.threads}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SearchConfig:
    """Search settings; defaults are the reference settings of the public code."""

    space: str = setting("joint", "Search space: skip (skip actions only), loop (repeat actions only) or joint.")
    simulations: int = setting(100, "MCTS simulations per input.")
    length_penalty: float = setting(
        5.0, "Selection penalty: UCB minus length_penalty * program length / depth (favours shorter programs)."
    )
    exploration: float = setting(2.0, "UCT exploration constant.")
    random_select: float = setting(0.1, "Chance of a uniformly random child at each selection step.")
    min_length_ratio: float = setting(0.55, "Shortest program searched, as a share of the depth.")
    max_length_ratio: float = setting(1.2, "Longest program searched, as a share of the depth.")
    max_visits: int = setting(DEFAULT_MAX_VISITS, "Most times one layer may run in a program.")
    root_block: int = setting(4, "Root edits span 1..root_block positions.")
    widen_c: float = setting(2.0, "Progressive widening: children <= widen_c * visits ** widen_alpha.")
    widen_alpha: float = setting(0.5, "Progressive widening exponent.")
    batch: int = setting(
        16,
        "Programs evaluated together. In float32 the rewards are those of each program run alone (tested); in "
        "bfloat16 or float16 a batch can change a program's text and verdict (bench/bench_noise.py: 4 of 97 SmolLM2 "
        "verdicts changed between a menu grid and alone), so there rewards depend on it.",
    )
    seed: int = setting(0, "Seed of the search.")

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ValueError(f"search space must be one of {SPACES}, got {self.space!r}")
        if self.simulations < 0 or self.batch < 1:
            raise ValueError("simulations must be >= 0 and batch >= 1")
        if not 0 < self.min_length_ratio <= 1 <= self.max_length_ratio:
            raise ValueError("length bounds must satisfy 0 < min_length_ratio <= 1 <= max_length_ratio")

    def bounds(self, depth: int) -> tuple[int, int]:
        return math.ceil(self.min_length_ratio * depth), math.floor(self.max_length_ratio * depth)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LabelConfig:
    """What labels are made with (params.yaml ``label``): the prompt, the generation budget and the search."""

    SECTION: ClassVar[str] = "label"

    shots: int = setting(3, "Few-shot examples per prompt.")
    prompt: str = setting("plain", "Prompt style: plain (Question/Answer blocks) or chat (the model's chat template).")
    max_new_tokens: int = setting(50, "Generation budget of each program's answer (the reward's).")
    k_max: int = setting(DEFAULT_K_MAX, "Longest segment of the compact form of the shortest program.")
    prefix_store_mb: int = setting(1024, "Memory for reusing prompt states across search rounds (speed only).")
    shots_from: str = setting("", "Few-shot pool (default: shots.parquet beside the task file, from `polar ingest`).")
    search: SearchConfig = setting(factory=SearchConfig)

    def prompt_spec(self, tasks_path: str | Path, format: str = "qa") -> PromptSpec:
        """The prompt of these settings for the inputs of ``tasks_path`` (``format``: see PROMPT_FORMATS)."""
        from polar.tasks.files import SHOTS_FILE
        from polar.tasks.prompts import PromptSpec

        pool = Path(self.shots_from) if self.shots_from else Path(tasks_path).with_name(SHOTS_FILE)
        return PromptSpec.from_pool(pool, self.prompt, self.shots, format)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LabelConfig:
        """The inverse of :meth:`to_dict` (a shard run on a worker gets its settings this way)."""
        return cls(**{**data, "search": SearchConfig(**data.get("search", {}))})


@dataclass(frozen=True)
class PoolConfig:
    """Where labeling runs (params.yaml ``label_pool``): it never changes the labels."""

    SECTION: ClassVar[str] = "label_pool"

    pool: str = setting(
        "",
        "Prefect work pool to label on, one flow run per shard (e.g. gpu; needs PREFECT_API_URL and workers: "
        "prefect worker start --pool gpu --limit 1). Empty: label in this process.",
    )
    shards: int = setting(0, "With a pool: shards to split the inputs into (0: one per online worker).")


@dataclass(frozen=True)
class ValidateConfig:
    """The gate's bounds (params.yaml ``validate``)."""

    SECTION: ClassVar[str] = "validate"

    min_valid_share: float = setting(0.2, "Least share of inputs with a valid program.")
    max_kl: float = setting(0.5, "Drift bound (KL, nats) of the op and length distributions against the reference.")
    holdout: float = setting(
        0.05, "Weight given to values the reference never saw, so that they do not make the KL infinite."
    )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MenuNetworkConfig:
    """M2, the PoLar network scored over a menu (:mod:`polar.selection.menu_network`): its shape and training.

    Nested in :class:`TrainConfig` (``polar train --method menu``: params.yaml ``train.m2_*``) and in
    :class:`SelectConfig` (the selection study: ``select.m2_*``).
    """

    m2_steps: int = setting(
        2000, "M2: optimisation steps; a checkpoint is chosen every m2_eval_every steps by its validation decision."
    )
    m2_batch: int = setting(32, "M2: training inputs per step.")
    m2_lr: float = setting(5e-4, "M2: peak learning rate (AdamW, linear warm-up over 100 steps, cosine decay).")
    m2_weight_decay: float = setting(0.01, "M2: AdamW weight decay.")
    m2_d_model: int = setting(128, "M2: width of the network's transformer.")
    m2_ff: int = setting(512, "M2: feed-forward width of the network's transformer.")
    m2_encoder_layers: int = setting(2, "M2: layers of the network's transformer.")
    m2_dropout: float = setting(0.1, "M2: dropout in the network.")
    m2_eval_every: int = setting(100, "M2: steps between validation decisions (the checkpoint candidates).")
    m2_embedder: str = setting(DEFAULT_EMBEDDER, "M2: question embedder (minilm, or an encoder folder / hub id).")
    m2_seed: int = setting(0, "M2: seed of the initialisation and the batches (and of polar train's question split).")

    def __post_init__(self) -> None:
        if self.m2_steps < 1 or self.m2_batch < 1 or self.m2_eval_every < 1:
            raise ValueError("m2_steps, m2_batch and m2_eval_every must be at least 1")

    def to_dict(self) -> dict:
        return asdict(self)


# Which training settings each method reads: one row per job, the network's setting for it and M2's (None: that
# method has none). TRAIN_SHARED are read by both. A setting of the other method given a value other than its
# default (on the command line or in params.yaml) is refused, so that no option is silently ignored.
TRAIN_SHARED = ("method", "val_fraction")
TRAIN_SETTINGS: tuple[tuple[str | None, str | None, str], ...] = (
    # network, menu (M2), the job
    ("embedder", "m2_embedder", "the question embedder"),
    ("epochs", "m2_steps", "how long it trains"),
    ("lr", "m2_lr", "the peak learning rate"),
    ("weight_decay", "m2_weight_decay", "the AdamW weight decay"),
    ("batch", "m2_batch", "the batch size"),
    ("seed", "m2_seed", "the seed of the question split, the initialisation and the batches"),
    ("d_model", "m2_d_model", "the network's width"),
    ("encoder_layers", "m2_encoder_layers", "the network's depth"),
    ("dropout", "m2_dropout", "the network's dropout"),
    (None, "m2_ff", "the network's feed-forward width (the network's is the paper's, 1024)"),
    ("full_weight", None, "the weight of full-depth search targets"),
    ("max_targets", None, "the search targets per input"),
    ("space", None, "the search space of the targets"),
    ("levels", None, "the levels trained on"),
    ("identity_rule", None, "where decoding ranks the full depth"),
    ("decoder", None, "how the network's outputs become programs (M2 ranks its menu)"),
    (None, "m2_eval_every", "how often a checkpoint is chosen (the network: every epoch)"),
    (None, "m2_margin", "the efficiency mode's margin"),
)


@dataclass(frozen=True)
class TrainConfig:
    """How the predictor is trained (params.yaml ``train``)."""

    SECTION: ClassVar[str] = "train"

    method: str = setting(
        "network",
        "What to train: network, the PoLar network on search labels (labels.jsonl), decoded into programs; or "
        "menu, the same network scored over a menu (M2) on dense menu runs (`polar label --menu` folders), "
        "choosing a menu program only where its gain over the full depth passes a threshold tuned on held-out "
        "inputs (its settings are the --m2-* ones). Neither beats base greedy on 500 unseen inputs "
        "(bench/evaluation/README.md).",
    )
    embedder: str = setting(
        DEFAULT_EMBEDDER,
        "Question embedder: minilm (all-MiniLM-L6-v2), backbone:N (the base model's hidden states after N layers), "
        "or an encoder folder / hub id.",
    )
    epochs: int = setting(10, "Training epochs; the epoch with the best validation loss is kept.")
    lr: float = setting(5e-4, "Peak learning rate (AdamW, cosine decay).")
    weight_decay: float = setting(0.01, "AdamW weight decay.")
    batch: int = setting(128, "Targets per optimisation step.")
    full_weight: float = setting(0.3, "Weight of the full-depth target where a shorter valid program exists.")
    max_targets: int = setting(8, "Valid programs per input used as targets, shortest first.")
    val_fraction: float = setting(
        0.2, "Share of questions held out: the network's validation loss, M2's checkpoint choice (both methods)."
    )
    seed: int = setting(0, "Seed of the split, the initialisation and the batches.")
    d_model: int = setting(256, "Width of the predictor's transformer.")
    encoder_layers: int = setting(2, "Layers of the predictor's transformer.")
    dropout: float = setting(0.1, "Dropout in the predictor.")
    space: str = setting("joint", "Learn only valid programs of this space: skip (no repeats), loop (no skips), joint.")
    levels: tuple[str, ...] = setting(
        (), "Train on these levels only, e.g. 1-3 (out-of-distribution tests; empty: all).", parse=names
    )
    identity_rule: str = setting(
        "mass",
        "Decoding: mass ranks the full-depth program first only when the model gives it at least half the "
        "probability; marginal keeps the plain beam order.",
    )

    decoder: str = setting(
        "search",
        "Decoding: search ranks every admissible program by the network's log-probability (one-layer edits "
        "included); threshold starts segments where a boundary passes 0.5 (the earlier decoder, for comparison).",
    )
    menu: MenuNetworkConfig = setting(factory=MenuNetworkConfig)
    m2_margin: float = setting(
        EFFICIENCY_MARGIN,
        "M2: efficiency mode's margin, the most validation pass@1 its choice may lose against base greedy (the "
        "val_layers of history.json; the saved predictor is the accuracy mode's).",
    )

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {self.space!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.identity_rule not in IDENTITY_RULES:
            raise ValueError(
                f"identity_rule must be one of {IDENTITY_RULES}, got {self.identity_rule!r}"
            )  # early: before any embedding is computed
        refused = [_refusal(self.method, name, value) for name, value in _foreign_settings(self)]
        if refused:
            raise ValueError("; ".join(refused))

    def to_dict(self) -> dict:
        return asdict(self)

    def method_settings(self) -> dict:
        """The settings ``method`` reads (:data:`TRAIN_SETTINGS`), by name, in declaration order."""
        mine = set(TRAIN_SHARED) | ({row[METHODS.index(self.method)] for row in TRAIN_SETTINGS} - {None})
        return {flat.name: _value(self, flat.path) for flat in _train_fields() if flat.name in mine}


@functools.cache
def _train_fields() -> tuple[Flat, ...]:
    return tuple(fields_of(TrainConfig))


def _value(config: object, path: tuple[str, ...]) -> Any:
    return functools.reduce(getattr, path, config)


def _foreign_settings(config: TrainConfig) -> list[tuple[str, Any]]:
    """The other method's settings that ``config`` gives a value other than their default, with that value."""
    other = 1 - METHODS.index(config.method)
    foreign = {row[other] for row in TRAIN_SETTINGS} - {None}
    return [
        (flat.name, value)
        for flat in _train_fields()
        if flat.name in foreign and (value := _value(config, flat.path)) != flat.default
    ]


def _refusal(method: str, name: str, value: Any) -> str:
    """Why ``--method METHOD`` refuses the other method's setting ``name``, and what to give instead."""
    row = next(r for r in TRAIN_SETTINGS if name in r[:2])
    instead, other = row[METHODS.index(method)], METHODS[1 - METHODS.index(method)]
    default = next(f.default for f in _train_fields() if f.name == name)

    def flag(key: str) -> str:
        return f"--{key.replace('_', '-')} (params.yaml train.{key})"

    head = f"--method {method} does not read {flag(name)}, given {value!r}: it is a setting of --method {other}"
    keep = f"leave --{name.replace('_', '-')} at its default ({default!r})"
    if instead is None:
        return f"{head}, and --method {method} has no setting for {row[2]}; {keep}"
    return f"{head}; --method {method} reads {row[2]} from {flag(instead)}: give that instead, and {keep}"


@dataclass(frozen=True)
class EvalConfig:
    """How a predictor is evaluated (params.yaml ``evaluate``).

    The prompt and the generation budget default to the predictor's (those its labels were made with); given,
    they must match.
    """

    SECTION: ClassVar[str] = "evaluate"

    k: int = setting(5, "pass@1..k: the predictor's top-k programs against k samples of the base model.")
    shots: int | None = setting(None, "Few-shot examples; must be the labels' (default: the predictor's).")
    prompt: str | None = setting(None, "Prompt style; must be the labels' (default: the predictor's).")
    shots_from: str = setting("", "Few-shot pool; its shots must be the labels' (default: the predictor's).")
    max_new_tokens: int | None = setting(None, "Generation budget (default: the labels', as the predictor records).")
    temperature: float = setting(0.7, "Base model's sampling temperature for its own pass@k.")
    top_p: float = setting(0.95, "Base model's nucleus sampling for its own pass@k.")
    seed: int = setting(0, "Seed of the samples and of the random-program baseline.")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Gates:
    """What a candidate must show to become champion (params.yaml ``promote``)."""

    SECTION: ClassVar[str] = "promote"

    tolerance: float = setting(0.02, "Largest pass@1 drop allowed against the current champion.")
    layer_budget: float = setting(1.0, "Largest average layers / D allowed.")
    alpha: float = setting(0.05, "A version more accurate than base greedy must be so at this McNemar p (below it).")
    margin: float = setting(
        0.01, "A version leaner than base greedy may lose at most this much pass@1 (the 95% interval's low end)."
    )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MenuConfig:
    """Dense menu labeling (params.yaml ``menu``): every program of a menu on every input, instead of MCTS."""

    SECTION: ClassVar[str] = "menu"

    menu: str = setting(
        "",
        "Label densely with this menu instead of searching: a file of programs (one per line, text or compact form) "
        "or auto:K (the full-depth program and the K programs valid on the most inputs of --discovery). Empty: MCTS.",
    )
    discovery: str = setting("", "For auto:K menus: a label folder of MCTS labels with the same model and prompt.")
    discovery_inputs: int = setting(
        16,
        "polar menu: search programs (MCTS, the label settings) for the first N inputs of the task file; an auto:K "
        "menu takes the K programs valid on the most of them.",
    )
    scoring: str = setting(
        "generate",
        "How a program answers: generate (its greedy answer line, graded; the reference answer's likelihood and, for "
        "multiple choice, each letter's beside it) or likelihood (multiple choice only: the choice of highest "
        "likelihood after a cloze prompt, no generation; summed and length-normalised rules both recorded).",
    )
    samples: int = setting(
        4,
        "Samples of the base model per input whose answers are compared with its greedy one (likelihood scoring: "
        "the expected shares of a choice drawn from the choices' likelihoods at the temperature, not draws).",
    )
    temperature: float = setting(0.7, "Sampling temperature of those samples.")
    recheck: float = setting(
        0.02,
        "The numerical noise floor: this share of (input, program) rows, a fixed sample chosen by a hash of the "
        "input's id and the program, is run again alone, outside its grid; the rows whose answer text or verdict "
        "differ are counted (manifest.json) and reported beside the fix rates. 0: none.",
    )

    def __post_init__(self) -> None:
        if self.scoring not in SCORINGS:
            raise ValueError(f"menu scoring must be one of {', '.join(SCORINGS)}, got {self.scoring!r}")
        if not 0 <= self.recheck <= 1:
            raise ValueError(f"menu recheck is a share of rows, between 0 and 1, got {self.recheck}")

    grid_inputs: int = setting(
        16,
        "Inputs of one level run together, under every menu program each (speed only in float32; in bfloat16 a "
        "grid's composition can change a row's text, which menu.recheck measures. On 16 "
        "level-3 inputs x 32 programs, 16 ran 1.13x (SmolLM2) and 1.23x (Gemma-3) faster than 8, peak memory 7.4 "
        "and 6.7 GB against 4.3 and 4.4 GB; 8 ran 1.3x faster than 4). Lower it on a machine with less memory.",
    )


@dataclass(frozen=True)
class SelectConfig:
    """The selection study over menu matrices (params.yaml ``select``): every candidate fitted on train, frozen
    on validation, scored once on test (``polar select``)."""

    SECTION: ClassVar[str] = "select"

    margin: float = setting(
        EFFICIENCY_MARGIN,
        "Efficiency mode: the most validation pass@1 a choice may lose against base greedy (B1' and M1/M2's "
        "price are tuned to it, and the efficiency winner must stay within it).",
    )
    m1: bool = setting(True, "Fit M1, the gain models over input features (logistic and boosted, several sets).")
    dense: bool = setting(
        True,
        "Also fit M1 (accuracy mode) and M2 to the likelihood: the gain in the reference answer's log-likelihood over "
        "the full depth, where the matrices record it (chosen on validation by accuracy as the others).",
    )
    m2: MenuNetworkConfig = setting(factory=MenuNetworkConfig)

    def to_dict(self) -> dict:
        return asdict(self)


# params.yaml section -> the settings it holds (``base_models`` and ``schedule`` are read by flows/).
STAGE_SETTINGS: dict[str, type] = {
    cls.SECTION: cls
    for cls in (
        IngestConfig,
        EngineConfig,
        LabelConfig,
        PoolConfig,
        MenuConfig,
        ValidateConfig,
        TrainConfig,
        SelectConfig,
        EvalConfig,
        Gates,
    )
}
