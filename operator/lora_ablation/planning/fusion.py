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
  output rows can be split;
- a trial sharded with FSDP: the shards of one module belong to its one adapter's flat parameters.

With several GPUs (data parallel, sharding none) a group trains across them as one trial does: each rank runs the
fused forward and backward on its share of every adapter's micro-batches, and each adapter's gradients are averaged
across the ranks before its own step, so the group computes what one process computes with every micro-batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lora_ablation.api.trial import TrialSpec
from lora_ablation.modules.catalog import UnsupportedModel
from lora_ablation.modules.inventory import ModelInventory, catalog_inventory
from lora_ablation.modules.model_config import known_model_config
from lora_ablation.planning.memory import FIT_FRACTION, GIB, MemoryEstimate, gpu_memory, plan_memory

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
    if trial.sharding == "fsdp":
        return "sharded with FSDP: it trains alone (fused training is data-parallel across GPUs)"
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


def fused_estimate(estimates: Sequence[MemoryEstimate]) -> MemoryEstimate:
    """A group's peak: the base's weights once, every member's adapter, activations and logits (one forward holds
    all of their rows), the fixed overhead once and 10% of the rest for fragmentation."""
    weights = max(e.weights for e in estimates)
    adapter = sum(e.adapter for e in estimates)
    activations = sum(e.activations for e in estimates)
    logits = sum(e.logits for e in estimates)
    body = weights + adapter + activations + logits
    return MemoryEstimate(weights, adapter, activations, logits, int(GIB + 0.10 * body))


def group_limit(spec: Any, plan: Any, inventory: ModelInventory | None = None,
                config: Mapping[str, Any] | None = None) -> tuple[int, str]:  # fmt: skip
    """How many trials of one Job train together at most, and why: execution.trialsPerPod, unless fusion is off,
    the Job has several GPUs, or the largest trained trials of the plan would not fit the declared GPU memory
    that many at a time."""
    execution = spec.execution
    size = execution.trials_per_pod
    if size <= 1:
        return 1, ""
    if not execution.fused_training:
        return 1, "execution.fusedTraining is false: the trials of a Job train one after another"
    sharded = sum(1 for t in plan.trials if t.spec.sharding == "fsdp")
    if sharded:  # a pod's processes are sharded, or not, for the whole batch (the trainer's Distributed)
        return 1, (f"{sharded} trial(s) shard with FSDP over execution.resources.gpus: the trials of a Job train "
                   "one after another (fused training is data-parallel; execution.sharding none fuses)")  # fmt: skip
    across = f" on each of {execution.resources.gpus} GPUs (data parallel)" if execution.resources.gpus > 1 else ""
    gpu_bytes, _ = gpu_memory(execution.resources.gpu_memory, execution.node_selector)
    if execution.resources.gpus == 0 or not gpu_bytes:
        return size, f"up to {size} adapters per pass over the base{across} (no GPU memory to check against)"
    if inventory is None or config is None:
        config = known_model_config(spec.base_model.uri, spec.base_model.revision)
        try:
            inventory = catalog_inventory(config) if config else None
        except (UnsupportedModel, ValueError):
            inventory = None
    if inventory is None or config is None:
        return size, f"up to {size} adapters per pass over the base{across} (the model's memory is not estimated)"
    estimates = plan_memory(plan, inventory, config, execution).estimates
    trained = sorted((estimates[t.name] for t in plan.trials if t.name in estimates and unfusable(t.spec) is None),
                     key=lambda e: e.total, reverse=True)  # fmt: skip
    if not trained:
        return size, f"up to {size} adapters per pass over the base{across}"
    limit = 1  # the n largest trained trials of the plan, together, must fit
    while limit < min(size, len(trained)) and fused_estimate(trained[: limit + 1]).total <= FIT_FRACTION * gpu_bytes:
        limit += 1
    if limit == len(trained):  # all of them fit at once: so does any group
        limit = size
    if limit == 1:
        pair = fused_estimate(trained[:2]).total / GIB
        return 1, (f"the trials of a Job train one after another: two of the largest together would need about "
                   f"{pair:.1f} GiB, more than {gpu_bytes / GIB:.0f} GiB per GPU")  # fmt: skip
    if limit < size:
        peak = fused_estimate(trained[:limit]).total / GIB
        return limit, (f"up to {limit} adapters per pass over the base{across}: more than {limit} of the largest "
                       f"trials would not fit {gpu_bytes / GIB:.0f} GiB per GPU ({limit} need about "
                       f"{peak:.1f} GiB)")  # fmt: skip
    return size, f"up to {size} adapters per pass over the base{across}"
