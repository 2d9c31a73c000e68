"""A trial's learning curve as it writes it (result.json, stage-one.json): the training loss at evenly spaced steps
and its eval points. Written by the trial image, so bounded like every trial-file figure (lora_ablation.api.bounds):
at most CURVE_POINTS points, finite numbers within range, steps increasing."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lora_ablation.api.base import OpenModel
from lora_ablation.api.bounds import Loss, Score, Steps

CURVE_POINTS = 200  # what the trainer keeps of a run's per-step losses (downsampled evenly, first and last kept)
MAX_EVAL_POINTS = 16


class LossCurve(OpenModel):
    """Two parallel lists rather than a list of points: a thousand results of 200 points each stay a few MiB in the
    operator's memory."""

    steps: list[Steps] = Field(
        default_factory=list, max_length=CURVE_POINTS, description="Optimizer steps (1 = after the first update)."
    )
    loss: list[Loss] = Field(
        default_factory=list, max_length=CURVE_POINTS, description="Training loss at each of those steps."
    )

    @model_validator(mode="after")
    def _aligned(self) -> LossCurve:
        if len(self.steps) != len(self.loss):
            raise ValueError(f"steps ({len(self.steps)}) and loss ({len(self.loss)}) must have one entry each")
        if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise ValueError("steps must increase")
        return self


class EvalPoint(OpenModel):
    stage: Literal["stage-one", "final"] = Field(description="The stage-one checkpoint's eval or the final one.")
    step: Steps = Field(description="Optimizer steps trained when it was evaluated.")
    score: Score = Field(description="Eval score (higher is better).")
    eval_loss: Loss | None = Field(None, description="Mean token cross-entropy on the eval completions.")


def downsample(losses: list[float], points: int = CURVE_POINTS) -> LossCurve:
    """Per-step losses (step i + 1 at index i) kept at `points` evenly spaced steps, the first and last among them."""
    if len(losses) <= points:
        chosen = list(range(len(losses)))
    else:
        chosen = sorted({round(i * (len(losses) - 1) / (points - 1)) for i in range(points)})
    return LossCurve(steps=[i + 1 for i in chosen], loss=[round(losses[i], 5) for i in chosen])
