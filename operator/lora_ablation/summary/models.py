"""What an ablation's summary says: per-dataset tables, per-configuration aggregates, the Pareto front
and the recommendation. Written to summary.json and (in part) into the resource status."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lora_ablation.api.base import OpenModel
from lora_ablation.api.curves import EvalPoint, LossCurve
from lora_ablation.api.status import Recommendation


class Cell(OpenModel):
    config: str = Field(description="Configuration label.")
    trial: str = Field(description="Trial name.")
    score: float = Field(description="Eval score (higher is better); the mean over seeds when there are several.")
    delta_vs_baseline: float | None = Field(None, description="score - the no-adapter baseline's score.")
    rank: int = Field(description="Position on this dataset (1 = best); overlapping 95% intervals share one.")
    gap_to_best: float = Field(description="Best score on this dataset - this score.")
    tpot_p95_ms: float | None = Field(None, description="Adapter TPOT p95 measured in this trial (mean over seeds).")
    seeds: int = Field(1, description="Trials (seeds) behind the score.")
    trials: list[str] = Field(default_factory=list, description="Every trial (one per seed) behind the score.")
    score_std: float | None = Field(None, description="Sample standard deviation of the score over seeds.")
    score_ci_low: float | None = Field(None, description="Lower end of the score's 95% Student-t interval.")
    score_ci_high: float | None = Field(None, description="Upper end of the score's 95% Student-t interval.")


class DatasetSummary(OpenModel):
    name: str = Field(description="Dataset name.")
    metric: str = Field(description="Metric of the dataset.")
    baseline_score: float | None = Field(None, description="Score of the base model without an adapter.")
    base_tpot_p95_ms: float | None = Field(None, description="Base model TPOT p95 measured alongside.")
    best_config: str | None = Field(None, description="Best configuration on this dataset.")
    cells: list[Cell] = Field(default_factory=list, description="One entry per configuration with a result.")
    missing: list[str] = Field(default_factory=list, description="Configurations planned but without a result here.")


class ConfigSummary(OpenModel):
    config: str = Field(description="Label: module set, rank, variant.")
    modules: list[str] = Field(default_factory=list, description="Module set.")
    rank: int = Field(0, description="LoRA rank.")
    variant: str = Field("lora", description="Adapter variant.")
    datasets: int = Field(0, description="Datasets with a result.")
    missing_datasets: list[str] = Field(default_factory=list, description="Datasets without a result.")
    complete: bool = Field(True, description="Has a result on every dataset of the ablation.")
    mean_score: float = Field(description="Mean score over its datasets.")
    mean_rank: float = Field(description="Mean per-dataset position (1 = best).")
    worst_gap: float = Field(description="Largest distance to a dataset's best configuration.")
    beats_baseline: int | None = Field(None, description="Datasets where it scores above the baseline.")
    tpot_p95_ms: float | None = Field(
        None,
        description="Adapter TPOT p95: the common base TPOT x (1 + its mean in-process overhead), so trials timed "
        "under different load compare fairly; the mean raw adapter TPOT when no overhead was measured.",
    )
    latency_overhead_pct: float | None = Field(None, description="Mean adapter TPOT p95 over the base model's, in %.")
    trainable_params: int | None = Field(None, description="Trainable adapter parameters.")
    gpu_seconds: float = Field(0.0, description="GPU-seconds its trials used.")
    pareto: bool = Field(False, description="On the score vs TPOT p95 Pareto front.")
    seeds: int = Field(1, description="Seeds per dataset behind its mean (the fewest over its datasets).")
    position: int = Field(1, description="Leaderboard position; configurations whose intervals overlap share one.")
    score_ci_low: float | None = Field(None, description="Lower end of the mean score's 95% interval (2+ seeds).")
    score_ci_high: float | None = Field(None, description="Upper end of the mean score's 95% interval (2+ seeds).")
    tied_with_next: bool = Field(
        False, description="Its 95% interval overlaps the next configuration's: the two cannot be told apart."
    )
    latency_overhead_ci_pct: float | None = Field(
        None, description="Half-width of the 95% interval of latency_overhead_pct (its measured noise)."
    )
    tpot_ci_ms: float | None = Field(None, description="Half-width of the 95% interval of tpot_p95_ms.")
    latency_within_noise: bool | None = Field(
        None, description="True when its overhead over the base model is smaller than the overhead's noise."
    )
    merged_overhead_pct: float | None = Field(
        None, description="Mean TPOT p95 overhead with the adapter merged into the weights (merge_and_unload), in %."
    )
    merged_overhead_ci_pct: float | None = Field(None, description="Half-width of its 95% interval (its noise).")
    merged_within_noise: bool | None = Field(None, description="True when the merged overhead is inside its noise.")
    serving_notes: list[str] = Field(
        default_factory=list, description="What to know before serving it (engine support, no-op adapters)."
    )


class EliminatedConfig(OpenModel):
    dataset: str = Field(description="Dataset the configuration was eliminated on.")
    config: str = Field(description="Configuration label.")
    stage_one_score: float = Field(description="Its stage-one score (the mean over seeds).")
    cutoff: float = Field(description="The stage-one score a configuration needed to go on.")
    step: int = Field(description="Optimizer steps it trained (of steps).")
    steps: int = Field(description="Optimizer steps a whole trial takes.")
    trials: list[str] = Field(default_factory=list, description="Its trials (one per seed).")


class SkippedConfig(OpenModel):
    dataset: str = Field(description="Dataset the configuration would have run on.")
    config: str = Field(description="Configuration label.")
    trials: list[str] = Field(default_factory=list, description="Its trials that never started (one per seed).")


class StageOneEntry(OpenModel):
    dataset: str = Field(description="Dataset.")
    config: str = Field(description="Configuration label.")
    score: float = Field(description="Stage-one score (mean over seeds).")
    survived: bool = Field(description="Went on to stage two.")


class Compute(OpenModel):
    gpu_hours: float = Field(0.0, description="Device-hours of every finished trial and stage-one run.")
    stage_one_gpu_hours: float = Field(0.0, description="Of which stage-one runs (two-stage ablations).")
    eliminated_gpu_hours: float = Field(0.0, description="Of which eliminated configurations' stage one.")
    max_gpu_hours: float | None = Field(None, description="execution.maxGpuHours, when set.")
    skipped_trials: list[str] = Field(
        default_factory=list, max_length=5000, description="Trials never started: the budget was reached."
    )


class Effect(OpenModel):
    term: str = Field(description="The level or pair: 'fc2' (present vs absent), 'rank r32 (vs r16)', 'qkv x fc2'.")
    kind: Literal["main", "interaction"] = Field(description="A main effect or a two-way interaction.")
    factors: list[str] = Field(default_factory=list, description="The factor(s) it belongs to: a module, rank...")
    estimate: float | None = Field(
        None,
        description="Change in score (main: with the level vs without, the other factors held fixed; interaction: "
        "what having both adds beyond the two main effects); None when the grid cannot separate it.",
    )
    std_error: float | None = Field(None, description="Standard error of the estimate.")
    ci_low: float | None = Field(None, description="Lower end of its 95% interval (t, the residual df).")
    ci_high: float | None = Field(None, description="Upper end of its 95% interval.")
    p_value: float | None = Field(None, description="Two-sided p-value of the estimate against 0 (uncorrected).")
    p_holm: float | None = Field(None, description="Holm-adjusted p-value over every tested effect of the summary.")
    beyond_noise: bool = Field(False, description="Holm-adjusted p-value at most 0.05: more than noise.")
    separable: bool = Field(False, description="The grid separates it from the other effects (it was estimated).")
    reason: str | None = Field(None, description="Why it has no estimate or no interval (confounded, no df).")
    aliased_with: list[str] = Field(
        default_factory=list,
        max_length=20,
        description="Not separable: the terms it is a combination of. Estimated: the unseparable interactions that "
        "alias onto it (it is estimated as if they were 0).",
    )


class Effects(OpenModel):
    observations: int = Field(0, description="Trial scores in the fit (one per dataset, configuration and seed).")
    datasets: int = Field(0, description="Datasets: one intercept each (the blocking factor).")
    residual_df: int | None = Field(None, description="Residual degrees of freedom of the main-effects model.")
    interaction_residual_df: int | None = Field(
        None, description="Residual degrees of freedom of the model with the two-way interactions added."
    )
    model: str = Field(
        "OLS of each trial's score on one intercept per dataset and the factor levels (module groups present or "
        "not, rank, variant, layer subset); interactions from the same model plus every estimable two-way product; "
        "95% t intervals; Holm correction over all tested effects",
        description="The linear model behind the effects.",
    )
    effects: list[Effect] = Field(default_factory=list, max_length=200, description="Main effects, then interactions.")
    notes: list[str] = Field(default_factory=list, description="Factors with one level only, missing libraries.")


class TrialCurve(OpenModel):
    dataset: str = Field(description="Dataset.")
    config: str = Field(description="Configuration label.")
    trial: str = Field(description="Trial name.")
    seed: int | None = Field(None, description="Training seed.")
    eliminated: bool = Field(False, description="Stopped after stage one: its curve ends at the stage-one step.")
    curve: LossCurve = Field(default_factory=LossCurve, description="Training loss at evenly spaced steps.")
    eval_points: list[EvalPoint] = Field(default_factory=list, description="Eval scores along the run.")


class Summary(OpenModel):
    ablation: str = Field(description="LoraAblation name.")
    namespace: str = Field("default", description="Namespace.")
    tolerance: float = Field(description="selection.tolerance used for the balanced pick.")
    latency_budget_ms: float | None = Field(None, description="selection.latencyBudgetMs used, if any.")
    base_tpot_p95_ms: float | None = Field(
        None, description="Median base-model TPOT p95 over all trials: the reference every adapter's overhead scales."
    )
    datasets: list[DatasetSummary] = Field(default_factory=list, description="Per-dataset tables.")
    configs: list[ConfigSummary] = Field(default_factory=list, description="Configurations, best mean first.")
    pareto_front: list[str] = Field(default_factory=list, description="Configurations on the Pareto front.")
    recommendation: Recommendation = Field(default_factory=Recommendation, description="The answer.")
    seeds: int = Field(1, description="Most seeds any configuration ran with; 1 means no intervals.")
    confidence: float = Field(0.95, description="Confidence level of every interval.")
    latency_cv_pct: float | None = Field(
        None, description="Median coefficient of variation of the base model's TPOT over each trial's repeats, in %."
    )
    notes: list[str] = Field(default_factory=list, description="Caveats: missing results, mixed metrics.")
    eliminated: list[EliminatedConfig] = Field(
        default_factory=list,
        description="Configurations stopped after stage one (search.earlyStopping), with their stage-one scores; "
        "they are not in the leaderboard, which ranks completed configurations only.",
    )
    skipped: list[SkippedConfig] = Field(
        default_factory=list,
        max_length=5000,
        description="Configurations with no trial run on a dataset because execution.maxGpuHours was reached.",
    )
    stage_one: list[StageOneEntry] = Field(
        default_factory=list, description="Every configuration's stage-one score, survivors included."
    )
    compute: Compute = Field(default_factory=Compute, description="What the ablation cost in device-hours.")
    curves: list[TrialCurve] = Field(
        default_factory=list,
        max_length=100_000,
        description="Every trial's training-loss curve and eval points (trials whose results have one), eliminated "
        "ones included.",
    )
    effects: Effects | None = Field(
        None, description="Factorial effects of module groups, rank, variant and layer subset on the score."
    )
