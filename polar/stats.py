"""The statistics every accuracy figure carries: intervals, the paired test against base greedy, and one score row.

A method is scored against base greedy on the same inputs (:func:`score_outcomes`): pass@1 with its Wilson 95%
interval, the exact two-sided McNemar test, the difference with its exact paired interval
(:func:`paired_interval`), fixes and breaks, and layers / D. :class:`MethodScore` is that row, read and written
the same way by the evaluate stage, the selection study, the registry and the reports; :func:`markdown_table`
renders rows. :func:`detectable_difference` says how small a difference a run of ``n`` paired inputs could see.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

__all__ = [
    "ALPHA",
    "MethodScore",
    "detectable_difference",
    "markdown_table",
    "mcnemar_p",
    "paired_interval",
    "pass_at_k",
    "score_outcomes",
    "wilson",
]

ALPHA = 0.05  # the level at which a difference is called significant
POWER = 0.8  # the power at which a run's detectable difference is stated


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_p(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Two-sided exact McNemar test of paired outcomes (binomial test on the discordant pairs)."""
    n01 = sum(1 for x, y in zip(a, b, strict=True) if not x and y)
    n10 = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    return _exact_p(n01, n10)


def _exact_p(n01: int, n10: int) -> float:
    n = n01 + n10
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(n01, n10) + 1)) / 2**n
    return min(1.0, 2 * tail)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def paired_interval(correct_a: int, correct_b: int, discordant: dict | None, n: int) -> tuple[float, float]:
    """95% interval of the paired difference of two pass rates, in the units of the difference.

    The difference is ``r (2 s - 1)``: ``r`` the share of the ``n`` inputs on which the two disagree, ``s`` the
    share of those that favour ``a``. Each factor gets its exact (Clopper-Pearson) 95% interval, and the interval
    spans their products. The sign comes from ``s`` alone, so the interval excludes 0 exactly when the two-sided
    exact McNemar test is significant at 0.05: the interval and the test never tell two stories. The uncertainty
    of ``r`` keeps it honest when few inputs disagree: with none, it is not a point but plus or minus the most
    that ``n`` inputs allow (``1 - 0.025 ** (1 / n)``). In simulation (tests/test_stats.py) it holds the true
    difference at least 95% of the time, where scaling by the observed ``r`` held it as little as 36%.

    Args:
        discordant: ``{"a_only": inputs only a gets right, "b_only": inputs only b gets right}``.
    """
    from scipy.stats import beta

    if not discordant or not n:
        d = (correct_a - correct_b) / n if n else 0.0
        return (d, d)
    a_only, b_only = discordant["a_only"], discordant["b_only"]
    m = a_only + b_only
    s_low = beta.ppf(0.025, a_only, b_only + 1) if a_only else 0.0
    s_high = beta.ppf(0.975, a_only + 1, b_only) if b_only else 1.0
    r_low = beta.ppf(0.025, m, n - m + 1) if m else 0.0
    r_high = beta.ppf(0.975, m + 1, n - m) if m < n else 1.0
    low, high = 2 * s_low - 1, 2 * s_high - 1  # of the signed share; the widest product of each with r
    return (float(low * (r_high if low < 0 else r_low)), float(high * (r_high if high > 0 else r_low)))


def detectable_difference(n: int, discordance: float, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The smallest gain over base greedy that ``n`` paired inputs detect with the exact McNemar test at ``alpha``
    with ``power``, when the two methods disagree on a share ``discordance`` of the inputs.

    The discordant pairs are ``m = round(n * discordance)``; a gain ``d`` means a share ``s = (1 + d / r) / 2`` of
    them favour the method. Returns ``r (2 s - 1)`` for the least ``s`` whose power reaches ``power``, or None when
    no gain is detectable (too few discordant pairs: even all of them one way is not significant).
    """
    from scipy.stats import binom

    m = round(n * discordance)
    if m == 0:
        return None
    # The exact two-sided test rejects when the favouring count k has 2 P(X >= k | 1/2) <= alpha.
    k_hi = next((k for k in range(m // 2, m + 1) if 2 * binom.sf(k - 1, m, 0.5) <= alpha), None)
    if k_hi is None:
        return None

    def reaches(s: float) -> bool:
        return binom.sf(k_hi - 1, m, s) + binom.cdf(m - k_hi, m, s) >= power

    if not reaches(1.0):
        return None
    low, high = 0.5, 1.0
    for _ in range(50):  # bisection to well below a hundredth of a point
        mid = (low + high) / 2
        low, high = (low, mid) if reaches(mid) else (mid, high)
    r = m / n
    return r * (2 * high - 1)


@dataclass(frozen=True)
class MethodScore:
    """One method on one split, against base greedy on the same inputs."""

    method: str
    inputs: int
    correct: int
    pass1: float
    ci95: tuple[float, float]  # Wilson
    p_vs_base: float  # exact McNemar, two-sided
    diff: float  # pass@1 minus base greedy's
    diff_ci95: tuple[float, float]  # :func:`paired_interval`
    fixes: int  # right where base greedy is wrong
    breaks: int  # wrong where base greedy is right
    layers_ratio: float  # layers run per input / D, every pass counted
    programs_used: int = 1

    def to_dict(self) -> dict:
        return asdict(self) | {"ci95": list(self.ci95), "diff_ci95": list(self.diff_ci95)}

    @classmethod
    def from_dict(cls, data: dict) -> MethodScore:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        return cls(**values | {"ci95": tuple(data["ci95"]), "diff_ci95": tuple(data["diff_ci95"])})

    @property
    def discordance(self) -> float:
        return (self.fixes + self.breaks) / self.inputs if self.inputs else 0.0

    def significant(self, alpha: float = ALPHA) -> bool:
        return self.p_vs_base < alpha and self.fixes != self.breaks

    def with_interval(self) -> MethodScore:
        """The row with its difference's interval recomputed from its counts (after a change of the interval)."""
        base = self.correct - self.fixes + self.breaks
        counts = {"a_only": self.fixes, "b_only": self.breaks}
        return replace(self, diff_ci95=paired_interval(self.correct, base, counts, self.inputs))


def score_outcomes(
    method: str, right: Sequence[bool], base: Sequence[bool], layers_ratio: float, programs_used: int = 1
) -> MethodScore:
    """Score per-input outcomes ``right`` against base greedy's ``base`` on the same inputs."""
    right, base = np.asarray(right, bool), np.asarray(base, bool)
    if right.shape != base.shape:
        raise ValueError(f"{method}: {len(right)} outcomes against {len(base)} of base greedy")
    n, k = len(right), int(right.sum())
    fixes, breaks = int((right & ~base).sum()), int((~right & base).sum())
    return MethodScore(
        method=method,
        inputs=n,
        correct=k,
        pass1=k / n if n else 0.0,
        ci95=wilson(k, n),
        p_vs_base=_exact_p(fixes, breaks),
        diff=(fixes - breaks) / n if n else 0.0,
        diff_ci95=paired_interval(k, int(base.sum()), {"a_only": fixes, "b_only": breaks}, n),
        fixes=fixes,
        breaks=breaks,
        layers_ratio=float(layers_ratio),
        programs_used=programs_used,
    )


HEADER = (
    "| method | pass@1 | 95% CI | vs base, points (95% CI) | fixes/breaks | layers / D | McNemar p |\n"
    "|---|---|---|---|---|---|---|"
)


def markdown_row(s: MethodScore, name: str | None = None) -> str:
    lo, hi = s.ci95
    dlo, dhi = s.diff_ci95
    return (
        f"| {name or s.method} | {100 * s.pass1:.1f}% ({s.correct}/{s.inputs}) | {100 * lo:.1f}-{100 * hi:.1f}% "
        f"| {100 * s.diff:+.1f} ({100 * dlo:+.1f} to {100 * dhi:+.1f}) | {s.fixes}/{s.breaks} "
        f"| {s.layers_ratio:.3f} | {s.p_vs_base:.3g} |"
    )


def markdown_table(scores: Iterable[MethodScore]) -> str:
    """The rows as one Markdown table (n, interval, paired difference and McNemar p in every row)."""
    return "\n".join([HEADER, *(markdown_row(s) for s in scores)])
