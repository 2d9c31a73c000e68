"""Two-stage elimination (search.earlyStopping) and what a trial leaves behind besides result.json:
stage-one.json (its score at the stage-one checkpoint) and failure.json (why it failed inside a pod that
runs several trials)."""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import Field, model_validator

from lora_ablation.api.base import ApiModel, OpenModel
from lora_ablation.api.bounds import MAX_STEPS, MAX_TEXT, ExitCode, Loss, Name, Score, Seconds, Short, Steps
from lora_ablation.api.curves import LossCurve


class EliminationRule(str, Enum):
    above_median = "aboveMedian"
    top_k = "topK"


class EarlyStoppingSpec(ApiModel):
    """Every configuration trains for a first fraction of its steps and is evaluated there; per dataset, the
    losing configurations stop (state Eliminated) and the others resume from their checkpoint, so no step is
    trained twice. The baseline trains nothing and is never eliminated."""

    stage_one_fraction: float = Field(
        0.25,
        gt=0,
        lt=1,
        description="Fraction of each trial's optimizer steps trained before the stage-one evaluation (rounded up "
        "to a whole step; the learning-rate schedule still spans every step, so survivors continue unchanged).",
    )
    rule: EliminationRule = Field(
        EliminationRule.above_median,
        description="Which configurations survive per dataset, ranked by stage-one score (the mean over seeds; "
        "equal scores are ranked by their eval loss, lower first): aboveMedian keeps the upper half (the median "
        "configuration included), topK the best `keep`. Ties at the boundary survive, and so does every "
        "configuration when fewer than minConfigurations ran.",
    )
    keep: int | None = Field(None, ge=1, le=1024, description="How many configurations topK keeps per dataset.")
    min_configurations: int = Field(
        3,
        ge=2,
        le=1024,
        description="Eliminate only on datasets where at least this many configurations reached stage one.",
    )
    eval_samples: int | None = Field(
        None,
        ge=1,
        description="Evaluate stage one on at most this many eval records (the dataset's first ones); unset: "
        "the dataset's maxEvalSamples. Fewer records make stage one cheaper and its ranking noisier.",
    )

    @model_validator(mode="after")
    def _keep(self) -> EarlyStoppingSpec:
        if self.rule == EliminationRule.top_k and self.keep is None:
            raise ValueError("search.earlyStopping.keep: rule topK needs keep (how many configurations survive)")
        if self.rule != EliminationRule.top_k and self.keep is not None:
            raise ValueError("search.earlyStopping.keep: only rule topK uses keep; remove it or set rule: topK")
        return self


class StageOneSpec(ApiModel):
    """Set on a trial's first stage: train to the checkpoint, evaluate, write stage-one.json, stop."""

    fraction: float = Field(gt=0, lt=1, description="Fraction of the trial's steps to train now.")
    eval_samples: int | None = Field(None, ge=1, description="Eval records for the stage-one score.")


class StageOneResult(OpenModel):
    """stage-one.json: a trial's score at its stage-one checkpoint (the checkpoint is in checkpoints/).
    Written by the trial image, so every figure is bounded (lora_ablation.api.bounds): the elimination averages
    the scores and the budget sums the seconds."""

    trial: Name = Field(description="Trial name.")
    dataset: Name = Field(description="Dataset name.")
    step: Steps = Field(description="Optimizer steps trained (and checkpointed) in stage one.")
    steps: int = Field(ge=1, le=MAX_STEPS, description="Optimizer steps the whole trial takes.")
    metric: Short = Field(description="Metric name from the dataset spec.")
    score: Score = Field(description="Stage-one eval score (higher is better).")
    samples: Steps = Field(description="Eval records scored.")
    eval_loss: Loss | None = Field(
        None, description="Mean token cross-entropy on those records: breaks ties between stage-one scores."
    )
    loss_last: Loss | None = Field(None, description="Mean training loss over the last logged window.")
    curve: LossCurve = Field(
        default_factory=LossCurve, description="Training loss of stage one at up to 200 evenly spaced steps."
    )
    compute_seconds: Seconds = Field(0.0, description="Device-seconds stage one used (see TrialResult).")
    gpu_seconds: Seconds = Field(0.0, description="GPU-seconds stage one used.")
    cpu_seconds: Seconds | None = Field(None, description="CPU time stage one used (see TrialResult).")
    finished_at: Short | None = Field(None, description="RFC 3339 time stage one finished.")


class TrialFailure(OpenModel):
    """failure.json: a trial that failed for good inside a pod running several trials (the pod goes on with
    the others, so the Job's own state cannot say which trial failed)."""

    trial: Name = Field(description="Trial name.")
    message: str = Field(max_length=MAX_TEXT, description="Why it failed, as a one-trial Job's termination message.")
    exit_code: ExitCode = Field(description="The exit code a one-trial Job would have ended with.")
    finished_at: Short | None = Field(None, description="RFC 3339 time of the failure.")
    state: Literal["Failed", "ResultsMissing"] = Field(
        "Failed", description="Failed, or ResultsMissing: the run ended without writing what it had to."
    )
    recorded_by: Literal["trainer", "operator", "runner"] = Field(
        "trainer",
        description="Who wrote it: the trainer, or the operator / local runner recording a run that ended without "
        "a file of its own, so the outcome outlives the workload (a deleted Job changes nothing).",
    )


class EliminationDecision(OpenModel):
    """decisions/elimination-<dataset>.json: one dataset's two-stage decision, written once when it is made and
    never recomputed, so an edit, a deleted Job or a restart cannot reopen it. A configuration added later is
    held against the recorded cutoff."""

    dataset: Short = Field(description="Dataset name.")
    survivors: list[Name] = Field(default_factory=list, max_length=10000, description="Trials that go on.")
    eliminated: dict[Name, str] = Field(
        default_factory=dict, max_length=10000, description="Trial -> why it stopped after stage one."
    )
    scores: dict[str, Score] = Field(
        default_factory=dict, max_length=10000, description="Config label -> stage-one score (mean over seeds)."
    )
    cutoff: tuple[Score, Score] | None = Field(
        None, description="(score, -eval loss) a configuration needed; None: too few configurations to eliminate."
    )
    decided_at: Short | None = Field(None, description="RFC 3339 time of the decision.")
