"""How sure the summary is: means with 95% Student-t intervals over seeds, and what counts as a tie.

The t quantile comes from scipy (the operator and trainer extras), imported when an interval is first needed (a
summary of one-seed results never loads it): scipy.special.stdtrit, the function scipy.stats.t.ppf evaluates, without
scipy.stats' import (which would add about 75 MiB to the operator's resident memory).
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

CONFIDENCE = 0.95


@lru_cache(maxsize=4096)
def t_quantile(p: float, df: float) -> float:
    """The t value with P(T <= t) = p (p > 0.5): 2.776 for p 0.975 and df 4 (df may be fractional: Welch)."""
    if not 0.5 < p < 1.0 or not df > 0:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df > 0 (got p={p}, df={df})")
    try:
        from scipy.special import stdtrit
    except ImportError:
        raise RuntimeError("intervals over seeds need scipy: pip install 'lora-ablation-operator[operator]'") from None
    return float(stdtrit(df, p))


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
