"""The cross-check against the harness's own backend: the ``polar`` model with the full-depth program and lm-eval's
``hf`` model on the same model folder must give the same log-likelihoods (within :data:`LOGPROB_TOLERANCE`) and the
same greedy generations, request by request (``tests/test_harness.py``, ``bench/bench_harness.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

__all__ = ["LOGPROB_TOLERANCE", "Agreement", "compare_samples"]

LOGPROB_TOLERANCE = 1e-4  # nats, per request


@dataclass
class Agreement:
    """How the responses of two runs of the same tasks compare."""

    scored: int = 0  # log-likelihood requests
    max_logprob_diff: float = 0.0  # largest |difference| over them
    greedy_differ: int = 0  # of those, requests whose is-greedy flags differ
    generated: int = 0  # generation requests
    text_differ: int = 0  # of those, requests with different text
    mismatches: list[str] = field(default_factory=list)  # "task doc k: ours vs theirs", the first few

    @property
    def equal(self) -> bool:
        """Every log-likelihood within the tolerance, every greedy flag and every text the same."""
        return self.max_logprob_diff <= LOGPROB_TOLERANCE and not self.greedy_differ and not self.text_differ

    def to_dict(self) -> dict:
        return asdict(self) | {"equal": self.equal}


def compare_samples(ours: dict, theirs: dict, tasks: Sequence[str], keep: int = 5) -> Agreement:
    """Compare two lm-eval results (``log_samples=True``) of the same tasks, limit and settings, request by request.

    Raises:
        ValueError: the runs did not evaluate the same documents.
    """
    out = Agreement()
    for task in tasks:
        a, b = _per_document(ours["samples"][task]), _per_document(theirs["samples"][task])
        if [s["doc_id"] for s in a] != [s["doc_id"] for s in b]:
            raise ValueError(f"{task}: the two runs evaluated different documents")
        for x, y in zip(a, b, strict=True):
            for k, (rx, ry) in enumerate(zip(x["resps"], y["resps"], strict=True)):
                where = f"{task} doc {x['doc_id']} request {k}"
                if isinstance(rx[0], str):
                    out.generated += 1
                    if rx != ry:
                        out.text_differ += 1
                        out.mismatches.append(f"{where}: {rx[0]!r} vs {ry[0]!r}")
                    continue
                (lx, gx), (ly, gy) = rx[0], ry[0]
                out.scored += 1
                out.max_logprob_diff = max(out.max_logprob_diff, abs(lx - ly))
                if gx != gy or abs(lx - ly) > LOGPROB_TOLERANCE:
                    out.greedy_differ += gx != gy
                    out.mismatches.append(f"{where}: ({lx:.6f}, {gx}) vs ({ly:.6f}, {gy})")
    out.mismatches = out.mismatches[:keep]
    return out


def _per_document(samples: list[dict]) -> list[dict]:
    """One sample per document (a task with several filters logs each document once per filter, same responses)."""
    return list({s["doc_id"]: s for s in reversed(samples)}.values())[::-1]
