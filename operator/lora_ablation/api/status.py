"""The observed state of a LoraAblation, written only by the operator (or the local runner)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from lora_ablation.api.base import OpenModel
from lora_ablation.api.trial_state import TrialState


class Condition(OpenModel):
    type: str = Field(description="Condition type, e.g. Ready, Progressing, Degraded, Suspended.")
    status: str = Field(description="True, False or Unknown.", json_schema_extra={"enum": ["True", "False", "Unknown"]})
    reason: str = Field(description="CamelCase machine-readable reason for the last transition.")
    message: str = Field("", description="Human-readable detail.")
    last_transition_time: str = Field(
        description="When status last changed (RFC 3339).", json_schema_extra={"format": "date-time"}
    )
    observed_generation: int | None = Field(
        None, description="The metadata.generation this condition was computed from."
    )


class TrialCounts(OpenModel):
    total: int = Field(0, description="Trials in the plan.")
    pending: int = Field(0, description="Trials not started yet (waiting for parallelism or preflight).")
    running: int = Field(0, description="Trials whose Job is active (stuck ones included).")
    stuck: int = Field(0, description="Running trials whose pod cannot start (image pull, scheduling, config).")
    succeeded: int = Field(0, description="Trials with a valid result.")
    failed: int = Field(0, description="Trials whose Job failed.")
    results_missing: int = Field(0, description="Trials whose Job succeeded without leaving a valid result.")
    eliminated: int = Field(0, description="Trials stopped after stage one (search.earlyStopping).")
    skipped: int = Field(0, description="Trials never started because execution.maxGpuHours was reached.")


class TrialProgressStatus(OpenModel):
    """A running trial's progress.json as last read (at most every 30 s): advisory, written by the trial image."""

    step: int = Field(description="Optimizer steps done so far.")
    total_steps: int = Field(description="Optimizer steps this run trains to (a stage-one run: its checkpoint).")
    percent: float = Field(description="step / totalSteps, in percent.")
    train_loss: float | None = Field(None, description="Training loss of the last reported step.")
    tokens_per_second: float | None = Field(None, description="Training throughput so far.")
    eta_seconds: int | None = Field(None, description="Estimated seconds of training left, at the pace so far.")
    eval_step: int | None = Field(None, description="Step of the last evaluation the trial ran.")
    eval_score: float | None = Field(None, description="Score of that evaluation.")
    updated_at: str | None = Field(None, description="When the trial wrote it (RFC 3339).")


class LiveProgress(OpenModel):
    """The ablation's progress while trials run, from their progress.json (absent once it is finished)."""

    percent: float = Field(description="Share of the trials done, in percent: finished trials count whole, running "
                           "ones by their steps.")  # fmt: skip
    reporting: int = Field(0, description="Running trials whose progress was read.")
    eta_seconds: int | None = Field(
        None,
        description="Estimated seconds until every trial is done: the longest running trial's time left, plus the "
        "pending trials in waves of execution.parallelism at the running trials' mean length. A rough guide.",
    )
    eta: str | None = Field(None, description="etaSeconds for people, e.g. 1h05m.")


class TrialStatus(OpenModel):
    name: str = Field(description="Trial name (also the Job name and the storage folder).")
    dataset: str = Field(description="Dataset the trial trains and evaluates on.")
    modules: list[str] = Field(
        default_factory=list, description="Module set as listed in the spec; empty for the baseline."
    )
    rank: int = Field(0, description="LoRA rank; 0 for the baseline.")
    variant: str = Field(description="Adapter variant, or 'none' for the baseline.")
    seed: int | None = Field(None, description="Training seed, when search.seeds lists several.")
    job: str | None = Field(None, description="Name of the trial's Job once created.")
    state: str = Field(
        description="Pending, Running, Stuck (a pod cannot start: see message), Succeeded, Failed, ResultsMissing, "
        "Suspended, Eliminated (stopped after stage one; its stage-one score is kept) or Skipped (never started: "
        "the GPU-hour budget was reached).",
        json_schema_extra={"enum": [state.value for state in TrialState]},
    )
    layers: str | None = Field(None, description="Layer subset, when search.layers lists several.")
    stage_one_score: float | None = Field(None, description="Score at the stage-one checkpoint (two-stage runs).")
    gpu_seconds: float | None = Field(None, description="Device-seconds the trial used so far (both stages).")
    score: float | None = Field(None, description="Eval score (higher is better).")
    tpot_p95_ms: float | None = Field(None, description="Adapter time per output token, p95, in milliseconds.")
    message: str | None = Field(None, description="Why the trial is in this state (failure reason, exit code).")
    progress: TrialProgressStatus | None = Field(None, description="Live progress while it runs (progress.json).")


class LeaderboardEntry(OpenModel):
    position: int = Field(description="1 = best mean score.")
    config: str = Field(description="Configuration label: module set, rank and variant, e.g. o_proj+fc2 r16 lora.")
    modules: list[str] = Field(default_factory=list, description="Module set.")
    rank: int = Field(0, description="LoRA rank.")
    variant: str = Field("lora", description="Adapter variant.")
    mean_score: float | None = Field(None, description="Mean score over the datasets it ran on.")
    mean_rank: float | None = Field(None, description="Mean per-dataset rank (1 = best).")
    worst_gap: float | None = Field(None, description="Largest per-dataset distance to that dataset's best config.")
    beats_baseline: int | None = Field(None, description="Datasets on which it beats the no-adapter baseline.")
    datasets: int = Field(0, description="Datasets it has results for.")
    tpot_p95_ms: float | None = Field(None, description="Mean adapter TPOT p95 in milliseconds.")
    latency_overhead_pct: float | None = Field(None, description="Adapter TPOT p95 over the base model's, in percent.")
    trainable_params: int | None = Field(None, description="Trainable adapter parameters.")
    seeds: int = Field(1, description="Seeds per dataset behind its mean (the fewest over its datasets).")
    score_ci_low: float | None = Field(None, description="Lower end of the 95% interval of mean score (2+ seeds).")
    score_ci_high: float | None = Field(None, description="Upper end of the 95% interval of mean score (2+ seeds).")
    tied_with_next: bool = Field(
        False, description="Its 95% interval overlaps the next entry's: the two cannot be told apart."
    )


class Recommendation(OpenModel):
    accuracy_first: str | None = Field(None, description="Configuration with the best mean score.")
    balanced: str | None = Field(
        None, description="Lowest-latency configuration within selection.tolerance of the best."
    )
    tied: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="Configurations whose 95% interval overlaps the best's (the best included); two or more "
        "means there is no winner.",
    )
    cheapest_tied: str | None = Field(
        None, description="Among the tied: the lowest latency beyond noise, else the fewest trainable parameters."
    )
    rationale: str | None = Field(None, description="One line on why.")


class LoraAblationStatus(OpenModel):
    observed_generation: int | None = Field(None, description="The metadata.generation the status reflects.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Progressing, Degraded and Suspended conditions.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    progress: str | None = Field(None, description="Finished trials over total, e.g. 7/12.")
    best_config: str | None = Field(None, description="Leader of the leaderboard so far.")
    live_progress: LiveProgress | None = Field(
        None, description="Progress and ETA from the running trials' own reports, while trials run."
    )
    trials: TrialCounts = Field(default_factory=TrialCounts, description="Trial counts by state.")
    trial_statuses: list[TrialStatus] = Field(
        default_factory=list, description="Per-trial state, capped in size; the full list is in storage."
    )
    trial_statuses_truncated: bool = Field(False, description="True when trialStatuses lists only part of the trials.")
    leaderboard: list[LeaderboardEntry] = Field(default_factory=list, description="Top configurations by mean score.")
    pareto_front: list[str] = Field(
        default_factory=list, description="Configurations on the score vs TPOT p95 Pareto front."
    )
    recommendation: Recommendation | None = Field(None, description="The answer: accuracy-first and balanced picks.")
    effects: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=list,
        max_length=10,
        description="Factorial effects beyond noise after the Holm correction, largest first, e.g. 'o_proj +0.1235 "
        "[+0.0474, +0.1997] Holm p=0.017' (score change with the level, 95% interval); every effect, the ones the "
        "grid cannot separate included, is in summary.json.",
    )
    results_uri: str | None = Field(None, description="Storage prefix holding every result and summary.json.")
    gpu_hours: float | None = Field(
        None,
        description="Device-hours the ablation's trials used so far (GPU-hours; CPU-only trials count one device).",
    )
    warnings: list[str] | None = Field(
        None,
        max_length=20,
        description="Problems that do not stop the ablation but may fail trials, e.g. configurations whose estimated "
        "peak GPU memory exceeds the GPU's (set execution.resources.gpuMemory so the operator can check).",
    )
    kopf: dict[str, Any] | None = Field(
        None,
        description="Operator framework bookkeeping; not part of the API.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
