import os
import sys
from pathlib import Path

import pytest

# No model hub at test time: hub look-ups fail at once instead of timing out.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))  # for `tiny`


@pytest.fixture(scope="session")
def smollm2():
    """The bundled SmolLM2-135M-Instruct (converted under models/ on first use)."""
    from polar.backbone import load

    return load("smollm2-135m", device="cpu")
