import json
import os
import sys
from pathlib import Path

import pytest

# No model hub at test time: hub look-ups fail at once instead of timing out.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))  # for `tiny`

# Under pytest-xdist (`-n N`) the workers share the cores: each gets its share of threads, and so do the
# processes it starts (CLI runs, DVC stages, Prefect workers), instead of every one spinning on all cores.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, str(_threads))
    # Runs that pin more threads than their share (polar's engine.threads, 2 by default) wait for a busy core by
    # yielding it, not by spinning on it (spinning slowed a labeling run beside a busy core).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The longest files first, so that `-n N --dist loadfile` starts them at once instead of last.
LONGEST = [
    "test_pipeline.py",
    "test_prefect_server.py",
    "test_stack.py",
    "test_registry.py",
    "test_labeling_search.py",
    "test_evaluate.py",
]


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = item.path.name
        return LONGEST.index(name) if name in LONGEST else len(LONGEST)

    items.sort(key=rank)  # stable: the order within a file, and among the other files, stays


def shared_data() -> Path:
    """The public benchmark files, read where they lie (never copied into the repository)."""
    candidates = [Path(__file__).resolve().parents[2] / "shared" / "data"]
    if os.environ.get("POLAR_SHARED_DATA"):
        candidates.append(Path(os.environ["POLAR_SHARED_DATA"]))
    for path in candidates:
        if path.is_dir():
            return path
    pytest.skip("shared benchmark data not found (set POLAR_SHARED_DATA)")


@pytest.fixture(scope="session")
def smollm2():
    """The bundled SmolLM2-135M-Instruct (converted under models/ on first use)."""
    from polar.backbone import load

    return load("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, smollm2):
    """A tiny random Llama with the bundled tokenizer, saved as a model folder: fast enough to label many inputs."""
    from tiny import tiny_model

    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", vocab_size=len(smollm2.tokenizer)).save_pretrained(path)
    smollm2.tokenizer.save_pretrained(path)
    return path


TEST_PROMPT = {"style": "plain", "shots": 1, "source": "tests", "version": "v1", "examples": {"*": [["2 + 2?", "4"]]}}


def label_record(i: int = 0, **fields) -> dict:
    """A whole label record (polar.labeling.folder.LabelRecord as JSON) with ``fields`` over neutral defaults."""
    from polar.labeling.folder import SCHEMA

    record = {
        "id": f"t/{i}",
        "task": "t",
        "level": "1",
        "question": f"q{i}",
        "answer": "1",
        "answer_kind": "number",
        "model": "m",
        "depth": 6,
        "prompt": "",
        "prompt_tokens": 10,
        "space": "joint",
        "base_program": "",
        "base_prediction": None,
        "base_text": None,
        "base_correct": False,
        "evaluated": [],
        "valid": [],
        "shortest": None,
        "shortest_length": None,
        "compact": None,
        "compact_error": None,
        "evaluations": 0,
        "schema": SCHEMA,
    }
    return record | fields


def write_labels(path: Path, records: list[dict], prompt: dict = TEST_PROMPT) -> Path:
    """A label folder as `polar label` leaves it: labels.jsonl, and settings.json with the prompt spec."""
    from polar.tasks.prompts import PromptSpec

    spec = PromptSpec.from_dict(prompt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(json.dumps(label_record(i, **{"prompt": spec.id, **r})) + "\n" for i, r in enumerate(records))
    )
    settings = {"model": "m", "tasks": "t", "config": {}, "prompt": spec.to_dict()}
    (path.parent / "settings.json").write_text(json.dumps(settings))
    return path
