"""progress.json: what a running trial says about itself (step, loss, speed, time left), rewritten at a bounded
interval while it trains. Advisory: it never decides a trial's state, so a missing or broken file only means no
progress is shown. Written by the trial image, so every figure is bounded like the other trial files
(lora_ablation.api.bounds): finite, non-negative where a negative means nothing, and far below any float limit."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from lora_ablation.api.base import OpenModel
from lora_ablation.api.bounds import Loss, Name, Score, Seconds, Short, Steps

MAX_TOKENS_PER_SECOND = 1e9  # a thousand times a large GPU cluster's training throughput
TokensPerSecond = Annotated[float, Field(ge=0, le=MAX_TOKENS_PER_SECOND)]


class ProgressEval(OpenModel):
    """The last evaluation the trial ran (its stage-one checkpoint's), when it has evaluated."""

    step: Steps = Field(description="Optimizer steps trained when it was evaluated.")
    score: Score = Field(description="Eval score (higher is better).")
    eval_loss: Loss | None = Field(None, description="Mean token cross-entropy on the eval completions.")


class TrialProgress(OpenModel):
    trial: Name = Field(description="Trial name (must be the folder's).")
    step: Steps = Field(description="Optimizer steps done so far.")
    total_steps: Steps = Field(description="Optimizer steps this run trains to (a stage-one run: its checkpoint).")
    train_loss: Loss | None = Field(None, description="Training loss of the last step.")
    tokens_per_second: TokensPerSecond | None = Field(None, description="Training throughput so far, all ranks.")
    elapsed_seconds: Seconds = Field(0.0, description="Seconds spent in training steps so far (this run).")
    eta_seconds: Seconds | None = Field(None, description="Estimated seconds of training left, at the pace so far.")
    updated_at: Short = Field(description="RFC 3339 time this record was written.")
    eval: ProgressEval | None = Field(None, description="The last evaluation point, when the trial has evaluated.")

    @model_validator(mode="after")
    def _steps(self) -> TrialProgress:
        if self.step > self.total_steps:
            raise ValueError(f"step {self.step} is past total steps {self.total_steps}")
        return self

    @property
    def fraction(self) -> float:
        """Share of this run's steps done, 0 to 1."""
        return self.step / self.total_steps if self.total_steps else 0.0
