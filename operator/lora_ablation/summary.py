"""Turn trial results into the ablation's answer: the analysis the seed study did by hand, as pure code
shared by the operator (status, summary.json) and the local runner (table, report, plots)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable

from lora_ablation.api.status import LeaderboardEntry, Recommendation
from lora_ablation.api.trial import BASELINE_VARIANT, TrialResult
from lora_ablation.plan import config_label
from lora_ablation.summary_models import Cell, ConfigSummary, DatasetSummary, Summary


def result_label(result: TrialResult) -> str:
    return config_label(result.modules, result.rank, result.variant)


def _adapter_tpot(result: TrialResult) -> float | None:
    return result.latency.adapter.tpot_p95_ms if result.latency and result.latency.adapter else None


def _dataset_tables(
    by_dataset: dict[str, dict[str, TrialResult]], baselines: dict[str, TrialResult], planned: dict[str, set[str]]
) -> list[DatasetSummary]:
    tables = []
    for name, results in by_dataset.items():
        baseline = baselines.get(name)
        base_score = baseline.eval.score if baseline else None
        ordered = sorted(results.items(), key=lambda item: -item[1].eval.score)
        best = ordered[0][1].eval.score if ordered else None
        cells = [
            Cell(
                config=label,
                trial=result.trial,
                score=result.eval.score,
                delta_vs_baseline=round(result.eval.score - base_score, 6) if base_score is not None else None,
                rank=1 + sum(1 for _, other in ordered if other.eval.score > result.eval.score),
                gap_to_best=round(best - result.eval.score, 6),
                tpot_p95_ms=_adapter_tpot(result),
            )
            for label, result in ordered
        ]
        base_tpot = baseline.latency.base.tpot_p95_ms if baseline and baseline.latency else None
        metric = next(iter(results.values())).eval.metric if results else (baseline.eval.metric if baseline else "")
        tables.append(
            DatasetSummary(
                name=name,
                metric=metric,
                baseline_score=base_score,
                base_tpot_p95_ms=base_tpot,
                best_config=ordered[0][0] if ordered else None,
                cells=cells,
                missing=sorted(planned.get(name, set()) - set(results)),
            )
        )
    return tables


def common_base_tpot(results: Iterable[TrialResult]) -> float | None:
    """The median base-model TPOT p95 over every trial: each trial times the base in its own process."""
    values = [r.latency.base.tpot_p95_ms for r in results if r.latency and r.latency.base.tpot_p95_ms > 0]
    return round(statistics.median(values), 4) if values else None


def _config_summaries(
    tables: list[DatasetSummary], results: dict[tuple[str, str], TrialResult], base_tpot: float | None
) -> list[ConfigSummary]:
    all_datasets = [t.name for t in tables]
    per_config: dict[str, list[tuple[DatasetSummary, Cell]]] = defaultdict(list)
    for table in tables:
        for cell in table.cells:
            per_config[cell.config].append((table, cell))
    summaries = []
    for label, entries in per_config.items():
        example = results[(entries[0][0].name, label)]
        tpots = [c.tpot_p95_ms for _, c in entries if c.tpot_p95_ms is not None]
        own = [results[(t.name, label)] for t, _ in entries]
        # Overheads measured against the base model in the same process cancel machine load and noise;
        # absolute timings from different trials (or parallel ones on one box) do not.
        overheads = [r.latency.tpot_overhead_pct for r in own if r.latency and r.latency.tpot_overhead_pct is not None]
        if overheads and base_tpot:
            tpot = base_tpot * (1 + statistics.fmean(overheads) / 100)
        else:
            tpot = statistics.fmean(tpots) if tpots else None
        beats = [c.delta_vs_baseline > 0 for _, c in entries if c.delta_vs_baseline is not None]
        present = {t.name for t, _ in entries}
        summaries.append(
            ConfigSummary(
                config=label,
                modules=example.modules,
                rank=example.rank,
                variant=example.variant,
                datasets=len(entries),
                missing_datasets=[d for d in all_datasets if d not in present],
                complete=len(present) == len(all_datasets),
                mean_score=round(statistics.fmean(c.score for _, c in entries), 6),
                mean_rank=round(statistics.fmean(c.rank for _, c in entries), 4),
                worst_gap=round(max(c.gap_to_best for _, c in entries), 6),
                beats_baseline=sum(beats) if beats else None,
                tpot_p95_ms=round(tpot, 4) if tpot is not None else None,
                latency_overhead_pct=round(statistics.fmean(overheads), 3) if overheads else None,
                trainable_params=max((r.trainable_params for r in own), default=None) or None,
                gpu_seconds=round(sum(r.gpu_seconds or 0.0 for r in own), 3),
            )
        )
    # Complete configurations first (their means compare like with like), then by mean score.
    return sorted(summaries, key=lambda s: (not s.complete, -s.mean_score, s.mean_rank, s.config))


def pareto_front(configs: list[ConfigSummary]) -> list[str]:
    """Configurations no other beats on both axes (higher score, lower TPOT p95)."""
    timed = [c for c in configs if c.tpot_p95_ms is not None]
    front = []
    for config in timed:
        dominated = any(
            other.mean_score >= config.mean_score
            and other.tpot_p95_ms <= config.tpot_p95_ms
            and (other.mean_score > config.mean_score or other.tpot_p95_ms < config.tpot_p95_ms)
            for other in timed
        )
        if not dominated:
            front.append(config.config)
    return front


def recommend(configs: list[ConfigSummary], tolerance: float, budget_ms: float | None) -> Recommendation:
    if not configs:
        return Recommendation(rationale="no trial has a result yet")
    most_covered = max(c.datasets for c in configs)
    pool = [c for c in configs if c.datasets == most_covered]
    best = max(pool, key=lambda c: (c.mean_score, -c.mean_rank))
    near = [c for c in pool if c.mean_score >= best.mean_score - tolerance - 1e-12]
    timed = [c for c in near if c.tpot_p95_ms is not None and (budget_ms is None or c.tpot_p95_ms <= budget_ms)]
    if timed:
        pick = min(timed, key=lambda c: (c.tpot_p95_ms, -c.mean_score))
        speed = f"TPOT p95 {pick.tpot_p95_ms:.3f} ms"
        if best.tpot_p95_ms and pick is not best:
            speed += f" vs {best.tpot_p95_ms:.3f} ms ({(pick.tpot_p95_ms / best.tpot_p95_ms - 1) * 100:+.1f}%)"
    elif budget_ms is not None:
        return Recommendation(
            accuracy_first=best.config,
            rationale=f"{best.config} has the best mean score; no configuration within {tolerance} of it "
            f"meets latencyBudgetMs {budget_ms}",
        )
    else:  # no latency measured: the fewest trainable parameters is the next best proxy for serving cost
        pick = min(near, key=lambda c: (c.trainable_params or 0, -c.mean_score))
        speed = f"fewest trainable parameters ({pick.trainable_params}); latency not measured"
    gap = best.mean_score - pick.mean_score
    where = "the best" if pick is best else f"{gap:.4f} below the best ({best.config}, {best.mean_score:.4f})"
    rationale = f"{pick.config}: mean score {pick.mean_score:.4f}, {where}, within tolerance {tolerance}; {speed}"
    return Recommendation(accuracy_first=best.config, balanced=pick.config, rationale=rationale)


def summarize(
    results: Iterable[TrialResult],
    ablation: str,
    namespace: str = "default",
    tolerance: float = 0.02,
    latency_budget_ms: float | None = None,
    planned: Iterable[tuple[str, str]] = (),
) -> Summary:
    """`planned` lists (dataset, config label) pairs the plan expects, so absent results are named."""
    by_dataset: dict[str, dict[str, TrialResult]] = {}
    baselines: dict[str, TrialResult] = {}
    keyed: dict[tuple[str, str], TrialResult] = {}
    planned_by_dataset: dict[str, set[str]] = defaultdict(set)
    for dataset, label in planned:
        by_dataset.setdefault(dataset, {})
        if label != "base":
            planned_by_dataset[dataset].add(label)
    for result in results:
        by_dataset.setdefault(result.dataset, {})
        if result.variant == BASELINE_VARIANT:
            baselines[result.dataset] = result
            continue
        label = result_label(result)
        by_dataset[result.dataset][label] = result
        keyed[(result.dataset, label)] = result
    tables = _dataset_tables(by_dataset, baselines, planned_by_dataset)
    base_tpot = common_base_tpot([*keyed.values(), *baselines.values()])
    configs = _config_summaries(tables, keyed, base_tpot)
    front = pareto_front(configs)
    for config in configs:
        config.pareto = config.config in front
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
        notes=notes,
    )


def leaderboard(summary: Summary, size: int) -> list[LeaderboardEntry]:
    """The top configurations as status entries: the same fields as ConfigSummary, plus the position."""
    fields = set(LeaderboardEntry.model_fields) - {"position"}
    return [
        LeaderboardEntry(position=index, **c.model_dump(include=fields))
        for index, c in enumerate(summary.configs[:size], start=1)
    ]
