"""How sure the summary is: means with 95% Student-t intervals over seeds, and what counts as a tie.

Pure and dependency-free (the core imports no scipy): the t quantile comes from the regularised incomplete
beta function, computed to well under the 3 decimals any interval is printed with.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

CONFIDENCE = 0.95


def _beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _incomplete_beta(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom (df may be fractional: Welch)."""
    tail = 0.5 * _incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


@lru_cache(maxsize=4096)
def t_quantile(p: float, df: float) -> float:
    """The t value with P(T <= t) = p (p > 0.5), by bisection: 2.776 for p 0.975 and df 4."""
    if not 0.5 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df > 0 (got p={p}, df={df})")
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(100):
        middle = (low + high) / 2.0
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
    return (low + high) / 2.0


@dataclass(frozen=True)
class Interval:
    """A mean and its 95% interval; half_width None when it cannot be estimated (one run)."""

    mean: float
    half_width: float | None
    n: int

    @property
    def low(self) -> float:
        return self.mean - (self.half_width or 0.0)

    @property
    def high(self) -> float:
        return self.mean + (self.half_width or 0.0)

    @property
    def known(self) -> bool:
        return self.half_width is not None


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean and Student-t interval of independent repeats (seeds): t(df=n-1) x s / sqrt(n)."""
    if not values:
        raise ValueError("mean_interval needs at least one value")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Interval(mean, None, len(values))
    sd = statistics.stdev(values)
    half = t_quantile(0.5 + confidence / 2, len(values) - 1) * sd / math.sqrt(len(values))
    return Interval(mean, half, len(values))


def mean_of_means(parts: Sequence[tuple[float, float, int]], confidence: float = CONFIDENCE) -> Interval:
    """Interval of the average of per-dataset means, each given as (mean, sample sd, n).

    The datasets are independent samples, so the variance of the average is sum(sd^2 / n) / D^2, with
    Welch-Satterthwaite degrees of freedom. None when any dataset has a single run (its spread is unknown).
    """
    if not parts:
        raise ValueError("mean_of_means needs at least one part")
    mean = statistics.fmean(m for m, _, _ in parts)
    n = min(k for _, _, k in parts)
    if n < 2:
        return Interval(mean, None, n)
    variances = [sd * sd / k for _, sd, k in parts]
    total = sum(variances)
    if total == 0.0:
        return Interval(mean, 0.0, n)
    spread = sum(v * v / (k - 1) for v, (_, _, k) in zip(variances, parts, strict=True))
    # Variances so small their squares underflow: fall back to the fewest degrees of freedom (the widest t).
    df = total * total / spread if spread > 0 and total * total > 0 else min(k for _, _, k in parts) - 1
    half = t_quantile(0.5 + confidence / 2, df) * math.sqrt(total) / len(parts)
    return Interval(mean, half, n)


def separable(better: Interval, worse: Interval) -> bool:
    """`better` is above `worse` beyond noise: the intervals do not overlap. A mean without an interval
    counts as a point (so without intervals any gap separates, as before seeds), which keeps the relation
    transitive and the tie positions consistent when some configurations have one seed."""
    return better.low > worse.high


def tie_positions(intervals: Sequence[Interval]) -> list[int]:
    """Competition positions where overlapping intervals tie: 1 + how many are separably above each (those whose
    low end is above its high end; counted by bisection: an ablation of 5,000 trials has 100 per dataset)."""
    lows = sorted(other.low for other in intervals)
    return [1 + len(lows) - bisect.bisect_right(lows, mine.high) for mine in intervals]


def within(difference: float, half_width: float | None) -> bool:
    """A difference inside its noise: |difference| <= half width (unknown noise separates nothing away)."""
    return half_width is not None and abs(difference) <= half_width
