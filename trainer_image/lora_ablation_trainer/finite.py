"""NaN and Infinity in a trial's figures: a permanent error naming each field and what to do, raised before the
figure reaches a result model (which refuses them) or storage (strict JSON cannot spell them)."""

from __future__ import annotations

import math
from typing import Any

from lora_ablation_trainer.errors import PermanentTrialError

# What to do when a figure in the result is NaN or infinite, by the result section it is in.
NON_FINITE_HINTS = {
    "eval": "the model's outputs on the eval split are not finite: check the base model's weights, load it in "
    "bfloat16 or float32 (baseModel.dtype) rather than float16, or lower training.learningRate",
    "train": "training went non-finite: lower training.learningRate or load the base model in bfloat16 or float32",
    "latency": "the timing went wrong: set latency.enabled to false to skip timing, and report this as a bug",
}


def non_finite_fields(value: Any, path: str = "") -> list[str]:
    """`path = value` for every NaN or infinite number in a wire object: strict JSON cannot spell them."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [f"{path} = {value}"]
    if isinstance(value, dict):
        return [bad for key, item in value.items() for bad in non_finite_fields(item, f"{path}.{key}" if path else key)]
    if isinstance(value, list):
        return [bad for index, item in enumerate(value) for bad in non_finite_fields(item, f"{path}[{index}]")]
    return []


def require_finite(wire: dict[str, Any], path: str = "") -> None:
    bad = non_finite_fields(wire, path)
    if bad:
        section = bad[0].split(".")[0].split("[")[0]
        hint = NON_FINITE_HINTS.get(section, "report this as a bug")
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise PermanentTrialError(f"{', '.join(bad[:3])}{more}: not a finite number; {hint}; no result was published")
