"""Which trials of one pod train together: one forward and backward over the base model per micro-step for all
of them, each adapter applied to its own rows of the concatenated batch (mLoRA's BatchLoRA). `plan` and the
trainer both decide with these functions, so what `plan` prints is what the pod does.

Trials fuse when they share the dataset and the parts of the recipe the shared forward depends on: the sequence
length, packing, gradient checkpointing (a model-wide switch) and the micro-batches per optimizer step. Module
sets, ranks, alpha, layer subsets, seeds, the learning rate and dropout may differ: each adapter keeps its own
optimizer, schedule, data order and dropout stream. Three kinds train alone, one after another as before:

- the baseline (variant none) trains nothing;
- DoRA: its magnitude vector rescales the whole adapted weight, so a row slice of the output cannot be patched
  the way a LoRA delta can (PEFT's mixed-adapter forward refuses DoRA for the same reason);
- adapters on raw parameters (MoE experts, `targetParameters`): PEFT wraps those parameters, not a layer whose
  output rows can be split.
"""

from __future__ import annotations

from collections.abc import Sequence

from lora_ablation.api.trial import TrialSpec

FUSABLE_VARIANTS = ("lora", "rslora", "loraplus")
MAX_GROUP = 32  # TrialBatch's own bound


def unfusable(trial: TrialSpec) -> str | None:
    """Why this trial trains alone, or None when it can join a group."""
    if trial.is_baseline:
        return "the baseline trains nothing"
    if trial.variant not in FUSABLE_VARIANTS:
        return f"variant {trial.variant}: its magnitude vector rescales whole weights, so it trains alone"
    if trial.target_parameters:
        return "adapters on raw parameters (MoE experts) train alone"
    return None


def recipe_key(trial: TrialSpec) -> tuple:
    """What trials of one group must share."""
    training = trial.training
    return (
        trial.dataset.model_dump_json(),
        training.max_seq_length,
        training.packing,
        training.gradient_checkpointing,
        training.gradient_accumulation,
    )


def groups(trials: Sequence[TrialSpec], limit: int) -> list[list[int]]:
    """Indices of `trials` in fused groups of at most `limit`, in order of each group's first trial; a trial that
    trains alone is a group of one. limit 1 fuses nothing."""
    limit = max(1, min(limit, MAX_GROUP))
    out: list[list[int]] = []
    open_groups: dict[tuple, list[int]] = {}
    for index, trial in enumerate(trials):
        if limit == 1 or unfusable(trial) is not None:
            out.append([index])
            continue
        key = recipe_key(trial)
        group = open_groups.get(key)
        if group is None or len(group) >= limit:
            group = open_groups[key] = []
            out.append(group)
        group.append(index)
    return out


def describe(trials: Sequence[TrialSpec], limit: int) -> list[str]:
    """`plan`'s lines: which trials of a pod train together and why the others do not."""
    lines = []
    for group in groups(trials, limit):
        if len(group) > 1:
            lines.append(f"trained together ({len(group)} adapters, one pass over the base): "
                         + ", ".join(trials[i].name for i in group))  # fmt: skip
        elif limit > 1 and (why := unfusable(trials[group[0]])):
            lines.append(f"trained alone: {trials[group[0]].name} ({why})")
    return lines
