"""The answer of an ablation: the best mean, whether anything can be told apart from it, and the cheapest
configuration worth serving. Pure; ranks only what the measured noise separates."""

from __future__ import annotations

import math

from lora_ablation.api.status import Recommendation
from lora_ablation.summary.models import ConfigSummary
from lora_ablation.summary.stats import Interval, separable

MAX_TIED = 100  # status.recommendation.tied holds at most this many (a grid may have thousands of configurations)
MAX_NAMED = 10  # the rationale names this many, then counts the rest


def score_interval(config: ConfigSummary) -> Interval:
    if config.score_ci_low is None or config.score_ci_high is None:
        return Interval(config.mean_score, None, config.seeds)
    return Interval(config.mean_score, (config.score_ci_high - config.score_ci_low) / 2, config.seeds)


def faster(a: ConfigSummary, b: ConfigSummary) -> bool:
    """a's TPOT p95 is below b's by more than the noise of the two (any gap when the noise is unknown)."""
    gap = b.tpot_p95_ms - a.tpot_p95_ms
    if a.tpot_ci_ms is None or b.tpot_ci_ms is None:
        return gap > 0
    return gap > math.hypot(a.tpot_ci_ms, b.tpot_ci_ms)


def _params(config: ConfigSummary) -> float:
    return config.trainable_params if config.trainable_params is not None else math.inf


def cheapest(candidates: list[ConfigSummary]) -> tuple[ConfigSummary, str]:
    """The lowest TPOT p95 beyond noise; among configurations whose latencies the noise cannot separate,
    the fewest trainable parameters. Without latency, the fewest trainable parameters (the serving-cost proxy)."""
    timed = [c for c in candidates if c.tpot_p95_ms is not None]
    if not timed:
        pick = min(candidates, key=lambda c: (_params(c), -c.mean_score))
        return pick, f"fewest trainable parameters ({pick.trainable_params}); latency not measured"
    fastest = min(timed, key=lambda c: (c.tpot_p95_ms, -c.mean_score))
    same_speed = [c for c in timed if not faster(fastest, c)]
    pick = min(same_speed, key=lambda c: (_params(c), c.tpot_p95_ms, -c.mean_score))
    if len(same_speed) == 1:
        return pick, f"lowest TPOT p95 ({pick.tpot_p95_ms:.3f} ms)"
    return pick, (
        f"TPOT p95 of {', '.join(c.config for c in same_speed)} within noise of each other's; fewest trainable "
        f"parameters ({pick.trainable_params})"
    )


def _speed(pick: ConfigSummary, best: ConfigSummary) -> str:
    """How the pick's latency compares with the best's, never claiming a difference inside the noise."""
    if pick.tpot_p95_ms is None:
        return ""
    text = f"TPOT p95 {pick.tpot_p95_ms:.3f} ms"
    if pick is best or best.tpot_p95_ms is None:
        return text
    if faster(pick, best) or faster(best, pick):
        return text + f" vs {best.tpot_p95_ms:.3f} ms ({(pick.tpot_p95_ms / best.tpot_p95_ms - 1) * 100:+.1f}%)"
    return text + f" vs {best.tpot_p95_ms:.3f} ms (within noise)"


def tied_with_best(pool: list[ConfigSummary], best: ConfigSummary) -> list[ConfigSummary]:
    """Configurations whose 95% interval overlaps the best's, the best first; only the best without intervals."""
    mine = score_interval(best)
    tied = [best]
    for config in pool:
        theirs = score_interval(config)
        if config is not best and mine.known and theirs.known and not separable(mine, theirs):
            tied.append(config)
    return tied


def recommend(configs: list[ConfigSummary], tolerance: float, budget_ms: float | None) -> Recommendation:
    if not configs:
        return Recommendation(rationale="no trial has a result yet")
    most_covered = max(c.datasets for c in configs)
    pool = [c for c in configs if c.datasets == most_covered]
    best = max(pool, key=lambda c: (c.mean_score, -c.mean_rank))
    tied = tied_with_best(pool, best)
    verdict, cheap_tied = "", None
    if len(tied) > 1:
        cheap_tied, why = cheapest(tied)
        interval = score_interval(best)
        named = ", ".join(c.config for c in tied[:MAX_NAMED])
        named += f" and {len(tied) - MAX_NAMED} more" if len(tied) > MAX_NAMED else ""
        verdict = (
            f"No winner at 95% over {min(c.seeds for c in tied)}+ seeds: {named} "
            f"cannot be told apart from the best mean ({best.config} {best.mean_score:.4f}, "
            f"[{interval.low:.4f}, {interval.high:.4f}]); cheapest of them: {cheap_tied.config} ({why}). "
        )
    elif score_interval(best).known:
        verdict = f"{best.config} is ahead of every other configuration beyond its 95% interval. "
    near = [c for c in pool if c.mean_score >= best.mean_score - tolerance - 1e-12 or any(c is t for t in tied)]
    if budget_ms is not None:
        near = [c for c in near if c.tpot_p95_ms is not None and c.tpot_p95_ms <= budget_ms]
        if not near:
            return Recommendation(
                accuracy_first=best.config,
                tied=[c.config for c in tied][:MAX_TIED],
                cheapest_tied=cheap_tied.config if cheap_tied else None,
                rationale=verdict + f"{best.config} has the best mean score; no configuration within {tolerance} "
                f"of it meets latencyBudgetMs {budget_ms}",
            )
    pick, why = cheapest(near)
    speed = why
    if pick.tpot_p95_ms is not None:
        speed = _speed(pick, best) + ("" if why.startswith("lowest") or pick is cheap_tied else f"; {why}")
    gap = best.mean_score - pick.mean_score
    where = "the best" if pick is best else f"{gap:.4f} below the best ({best.config}, {best.mean_score:.4f})"
    reach = f"within tolerance {tolerance}" if gap <= tolerance + 1e-12 else "tied with the best at 95%"
    rationale = verdict + f"{pick.config}: mean score {pick.mean_score:.4f}, {where}, {reach}; {speed}"
    return Recommendation(
        accuracy_first=best.config,
        balanced=pick.config,
        tied=[c.config for c in tied][:MAX_TIED],
        cheapest_tied=cheap_tied.config if cheap_tied else None,
        rationale=rationale,
    )
