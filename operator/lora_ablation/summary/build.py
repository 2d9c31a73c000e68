"""Turn trial results into the ablation's answer: the analysis the seed study did by hand, as pure code
shared by the operator (status, summary.json) and the local runner (table, report, plots)."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable

from lora_ablation.api.render_safe import label_text, plain_text
from lora_ablation.api.status import LeaderboardEntry
from lora_ablation.api.trial import BASELINE_VARIANT, TrialResult
from lora_ablation.planning.plan import config_label
from lora_ablation.summary.effects import Observation, factorial_effects
from lora_ablation.summary.models import Cell, ConfigSummary, DatasetSummary, Summary, TrialCurve
from lora_ablation.summary.recommend import faster, recommend, score_interval
from lora_ablation.summary.serving import serving_notes
from lora_ablation.summary.stats import Interval, mean_interval, mean_of_means, separable, tie_positions, within

MAX_DATASET = 64  # a dataset name (the spec allows 24 characters)


# Labels and names reach the status, events and summary.md; they are built from a result's fields, which a trial
# image wrote (results.labelled replaces them by the plan's): one line each, bounded, and never two made one.
def result_label(result: TrialResult) -> str:
    return label_text(config_label(result.modules, result.rank, result.variant, result.layers))


def dataset_name(name: str) -> str:
    return label_text(name, MAX_DATASET)


def _adapter_tpot(result: TrialResult) -> float | None:
    return result.latency.adapter.tpot_p95_ms if result.latency and result.latency.adapter else None


def _cell_interval(results: list[TrialResult]) -> tuple[Interval, float | None]:
    scores = [r.eval.score for r in results]
    return mean_interval(scores), (statistics.stdev(scores) if len(scores) > 1 else None)


def _dataset_tables(
    by_dataset: dict[str, dict[str, list[TrialResult]]],
    baselines: dict[str, TrialResult],
    planned: dict[str, set[str]],
) -> list[DatasetSummary]:
    tables = []
    for name, results in by_dataset.items():
        baseline = baselines.get(name)
        base_score = baseline.eval.score if baseline else None
        stats = {label: _cell_interval(runs) for label, runs in results.items()}
        ordered = sorted(results, key=lambda label: (-stats[label][0].mean, label))
        intervals = [stats[label][0] for label in ordered]
        positions = tie_positions(intervals)
        best = intervals[0].mean if intervals else None
        cells = []
        for label, interval, position in zip(ordered, intervals, positions, strict=True):
            runs, sd = results[label], stats[label][1]
            tpots = [t for t in map(_adapter_tpot, runs) if t is not None]
            cells.append(
                Cell(
                    config=label,
                    trial=runs[0].trial,
                    trials=[r.trial for r in runs],
                    seeds=len(runs),
                    score=round(interval.mean, 6),
                    score_std=round(sd, 6) if sd is not None else None,
                    score_ci_low=round(interval.low, 6) if interval.known else None,
                    score_ci_high=round(interval.high, 6) if interval.known else None,
                    delta_vs_baseline=round(interval.mean - base_score, 6) if base_score is not None else None,
                    rank=position,
                    gap_to_best=round(best - interval.mean, 6),
                    tpot_p95_ms=round(statistics.fmean(tpots), 4) if tpots else None,
                )
            )
        base_tpot = baseline.latency.base.tpot_p95_ms if baseline and baseline.latency else None
        first = next(iter(results.values()), None)
        metric = plain_text(first[0].eval.metric if first else (baseline.eval.metric if baseline else ""), 64)
        tables.append(
            DatasetSummary(
                name=name,
                metric=metric,
                baseline_score=base_score,
                base_tpot_p95_ms=base_tpot,
                best_config=ordered[0] if ordered else None,
                cells=cells,
                missing=sorted(planned.get(name, set()) - set(results)),
            )
        )
    return tables


def common_base_tpot(results: Iterable[TrialResult]) -> float | None:
    """The median base-model TPOT p95 over every trial: each trial times the base in its own process."""
    values = [r.latency.base.tpot_p95_ms for r in results if r.latency and r.latency.base.tpot_p95_ms > 0]
    return round(statistics.median(values), 4) if values else None


def overhead_interval(results: list[TrialResult], merged: bool = False) -> Interval | None:
    """Mean in-process TPOT overhead over the base model (%) and its noise, unmerged or merged.

    The noise is the larger of the spread across trials (datasets, seeds) and what the trials measured
    within themselves (each one's repeat-to-repeat interval, pooled), so one trial still has a noise figure.
    """
    pairs = [
        (r.latency.merged_tpot_overhead_pct, r.latency.merged_tpot_overhead_ci_pct)
        if merged
        else (r.latency.tpot_overhead_pct, r.latency.tpot_overhead_ci_pct)
        for r in results
        if r.latency
    ]
    pairs = [(o, w) for o, w in pairs if o is not None]
    if not pairs:
        return None
    across = mean_interval([o for o, _ in pairs])
    inside = [w for _, w in pairs if w is not None]
    pooled = math.sqrt(sum(w * w for w in inside)) / len(inside) if inside else None
    widths = [w for w in (across.half_width, pooled) if w is not None]
    return Interval(across.mean, max(widths) if widths else None, len(pairs))


def _config_summaries(
    tables: list[DatasetSummary], results: dict[tuple[str, str], list[TrialResult]], base_tpot: float | None
) -> list[ConfigSummary]:
    all_datasets = [t.name for t in tables]
    per_config: dict[str, list[tuple[DatasetSummary, Cell]]] = defaultdict(list)
    for table in tables:
        for cell in table.cells:
            per_config[cell.config].append((table, cell))
    summaries = []
    for label, entries in per_config.items():
        own = [r for t, _ in entries for r in results[(t.name, label)]]
        example = own[0]
        tpots = [c.tpot_p95_ms for _, c in entries if c.tpot_p95_ms is not None]
        # Overheads measured against the base model in the same process cancel machine load and noise;
        # absolute timings from different trials (or parallel ones on one box) do not.
        overhead, merged = overhead_interval(own), overhead_interval(own, merged=True)
        tpot_ci = None
        if overhead and base_tpot:
            tpot = base_tpot * (1 + overhead.mean / 100)
            tpot_ci = base_tpot * overhead.half_width / 100 if overhead.known else None
        else:
            tpot = statistics.fmean(tpots) if tpots else None
        score = mean_of_means([(c.score, c.score_std or 0.0, c.seeds) for _, c in entries])
        beats = [c.delta_vs_baseline > 0 for _, c in entries if c.delta_vs_baseline is not None]
        present = {t.name for t, _ in entries}
        summaries.append(
            ConfigSummary(
                config=label,
                modules=[plain_text(m, 128) for m in example.modules],
                rank=example.rank,
                variant=plain_text(example.variant, 64),
                datasets=len(entries),
                missing_datasets=[d for d in all_datasets if d not in present],
                complete=len(present) == len(all_datasets),
                seeds=score.n,
                mean_score=round(score.mean, 6),
                score_ci_low=round(score.low, 6) if score.known else None,
                score_ci_high=round(score.high, 6) if score.known else None,
                mean_rank=round(statistics.fmean(c.rank for _, c in entries), 4),
                worst_gap=round(max(c.gap_to_best for _, c in entries), 6),
                beats_baseline=sum(beats) if beats else None,
                tpot_p95_ms=round(tpot, 4) if tpot is not None else None,
                tpot_ci_ms=round(tpot_ci, 4) if tpot_ci is not None else None,
                latency_overhead_pct=round(overhead.mean, 3) if overhead else None,
                latency_overhead_ci_pct=round(overhead.half_width, 3) if overhead and overhead.known else None,
                latency_within_noise=within(overhead.mean, overhead.half_width) if overhead else None,
                merged_overhead_pct=round(merged.mean, 3) if merged else None,
                merged_overhead_ci_pct=round(merged.half_width, 3) if merged and merged.known else None,
                merged_within_noise=within(merged.mean, merged.half_width) if merged else None,
                serving_notes=serving_notes(example.variant, own),
                trainable_params=max((r.trainable_params for r in own), default=None) or None,
                gpu_seconds=round(sum(r.gpu_seconds or 0.0 for r in own), 3),
            )
        )
    # Complete configurations first (their means compare like with like), then by mean score.
    summaries.sort(key=lambda s: (not s.complete, -s.mean_score, s.mean_rank, s.config))
    _place(summaries)
    return summaries


def _place(configs: list[ConfigSummary]) -> None:
    """Positions where overlapping intervals tie, complete configurations before partial ones."""
    offset = 0
    for complete in (True, False):
        group = [c for c in configs if c.complete is complete]
        intervals = [score_interval(c) for c in group]
        for config, position in zip(group, tie_positions(intervals), strict=True):
            config.position = offset + position
        for here, mine, theirs in zip(group, intervals, intervals[1:], strict=False):
            here.tied_with_next = mine.known and theirs.known and not separable(mine, theirs)
        offset += len(group)


def pareto_front(configs: list[ConfigSummary]) -> list[str]:
    """Configurations no other beats beyond noise on one axis without losing beyond noise on the other
    (higher score, lower TPOT p95); without intervals, any difference counts."""
    timed = [c for c in configs if c.tpot_p95_ms is not None]
    front = []
    for config in timed:
        mine = score_interval(config)
        dominated = False
        for other in timed:
            theirs = score_interval(other)
            not_worse = not separable(mine, theirs) and not faster(config, other)
            if other is not config and not_worse and (separable(theirs, mine) or faster(other, config)):
                dominated = True
                break
        if not dominated:
            front.append(config.config)
    return front


def summarize(
    results: Iterable[TrialResult],
    ablation: str,
    namespace: str = "default",
    tolerance: float = 0.02,
    latency_budget_ms: float | None = None,
    planned: Iterable[tuple[str, str]] = (),
) -> Summary:
    """`planned` lists (dataset, config label) pairs the plan expects, so absent results are named.
    Results of one configuration and dataset with different seeds are repeats: their mean and interval
    stand for the configuration."""
    by_dataset: dict[str, dict[str, list[TrialResult]]] = {}
    baselines: dict[str, TrialResult] = {}
    planned_by_dataset: dict[str, set[str]] = defaultdict(set)
    for dataset, label in planned:
        by_dataset.setdefault(dataset_name(dataset), {})
        if label != "base":
            planned_by_dataset[dataset_name(dataset)].add(label_text(label))
    # One result per dataset, configuration and seed: a later one replaces an earlier (as before seeds).
    unique = {(dataset_name(r.dataset), result_label(r), r.seed): r for r in results}
    ordered = sorted(unique.items(), key=lambda item: (item[1].seed is None, item[1].seed or 0, item[1].trial))
    for (dataset, label, _), result in ordered:
        by_dataset.setdefault(dataset, {})
        if result.variant == BASELINE_VARIANT:
            baselines[dataset] = result
            continue
        by_dataset[dataset].setdefault(label, []).append(result)
    keyed = {(dataset, label): runs for dataset, table in by_dataset.items() for label, runs in table.items()}
    tables = _dataset_tables(by_dataset, baselines, planned_by_dataset)
    base_tpot = common_base_tpot([*(r for runs in keyed.values() for r in runs), *baselines.values()])
    configs = _config_summaries(tables, keyed, base_tpot)
    front = pareto_front(configs)
    for config in configs:
        config.pareto = config.config in front
    seeds = max((c.seeds for c in configs), default=1)
    observations = sorted(
        Observation(dataset, tuple(r.modules), r.rank, r.variant, r.layers, r.eval.score, r.eval.metric)
        for (dataset, _), runs in keyed.items()
        for r in runs
    )
    every = [*(r for runs in keyed.values() for r in runs), *baselines.values()]
    cvs = [r.latency.base.tpot_cv_pct for r in every if r.latency and r.latency.base.tpot_cv_pct is not None]
    return Summary(
        ablation=ablation,
        namespace=namespace,
        tolerance=tolerance,
        latency_budget_ms=latency_budget_ms,
        base_tpot_p95_ms=base_tpot,
        datasets=tables,
        configs=configs,
        pareto_front=front,
        recommendation=recommend(configs, tolerance, latency_budget_ms),
        notes=_notes(tables, configs, seeds),
        seeds=seeds,
        latency_cv_pct=round(statistics.median(cvs), 3) if cvs else None,
        effects=factorial_effects(tuple(observations)) if observations else None,
        curves=_curves(keyed),
    )


def _curves(keyed: dict[tuple[str, str], list[TrialResult]]) -> list[TrialCurve]:
    curves = []
    for (dataset, label), runs in keyed.items():
        for r in runs:
            if r.train is not None and r.train.curve.steps:
                curves.append(TrialCurve(dataset=dataset, config=label, trial=r.trial, seed=r.seed,
                                         curve=r.train.curve, eval_points=r.train.eval_points))  # fmt: skip
    return curves


def _notes(tables: list[DatasetSummary], configs: list[ConfigSummary], seeds: int) -> list[str]:
    notes = []
    partial = [c.config for c in configs if not c.complete]
    if partial:
        notes.append(
            f"{len(partial)} configuration(s) lack results on some datasets ({', '.join(partial)}); they are ranked "
            "after complete ones and recommended only if no configuration covers more datasets"
        )
    metrics = {t.metric for t in tables if t.metric}
    if len(metrics) > 1:
        notes.append(f"datasets use different metrics ({', '.join(sorted(metrics))}); mean rank compares them fairly")
    missing_baselines = [t.name for t in tables if t.baseline_score is None]
    if missing_baselines:
        notes.append(f"no baseline result for {', '.join(missing_baselines)}: deltas and beats-baseline left out")
    if configs and seeds < 2:
        notes.append(
            "one seed per configuration: scores have no interval, so no difference is tested against training "
            "noise; set search.seeds (e.g. [1, 2, 3]) to rank only what the noise can separate"
        )
    elif any(c.seeds < 2 for c in configs):
        notes.append("some configurations have a single seed on a dataset: their intervals are unknown")
    notes += [f"{c.config}: {note}" for c in configs for note in c.serving_notes]
    return notes


def leaderboard(summary: Summary, size: int) -> list[LeaderboardEntry]:
    """The top configurations as status entries: the same fields as ConfigSummary, plus the position."""
    fields = set(LeaderboardEntry.model_fields) - {"position"}
    return [
        LeaderboardEntry(position=index, **c.model_dump(include=fields))
        for index, c in enumerate(summary.configs[:size], start=1)
    ]
