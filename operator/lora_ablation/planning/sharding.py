"""How a trial spreads over the GPUs of its pod, decided once by the planner and carried in TrialSpec.sharding:

- one GPU (resources.gpus <= 1): nothing to decide;
- data parallel (sharding none): every GPU holds the whole model and trains on its share of each step;
- FSDP (sharding fsdp): weights, adapter, gradients and optimizer state are split across the GPUs; each
  decoder layer is gathered only while it computes. Chosen by `auto` only when the memory estimate says
  the trial does not fit one GPU: data parallel exchanges only gradients, FSDP also gathers every layer.

Pure: the same spec and model config give the same decisions. It changes how a trial runs, not what it
computes, so it is never part of a trial's name (plan.RUN_ONLY_TRAINING is the same idea).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lora_ablation.api.trial import TrialSpec
from lora_ablation.modules.catalog import UnsupportedModel
from lora_ablation.modules.inventory import ModelInventory, catalog_inventory
from lora_ablation.modules.model_config import known_model_config
from lora_ablation.planning.memory import FIT_FRACTION, GIB, MemoryEstimate, gpu_memory, plan_memory
from lora_ablation.planning.trials import Plan, PlannedTrial

PREFETCHED_LAYERS = 2  # FSDP holds the layer computing and the next one it gathers ahead, both unsharded


@dataclass(frozen=True)
class Decision:
    mode: str  # the TrialSpec.sharding value: none or fsdp
    gpus: int
    reason: str
    warning: str | None = None  # a trial that would still run out of memory this way

    def describe(self) -> str:
        if self.gpus <= 1:
            return "on one GPU" if self.gpus == 1 else "on CPU"
        return f"sharded (FSDP) on {self.gpus} GPUs" if self.mode == "fsdp" else f"data-parallel on {self.gpus} GPUs"


def layer_bytes(inventory: ModelInventory, trial: TrialSpec) -> int:
    """Unsharded weights of one decoder layer (what FSDP gathers at a time), in the trial's dtype."""
    per_weight = 4 if trial.base_model.dtype == "float32" else 2
    linear = sum(w.in_features * w.out_features * max(w.experts, 1) for w in inventory.weights)
    return int(linear * per_weight / max(inventory.layers, 1))


def sharded_estimate(estimate: MemoryEstimate, gpus: int, layer: int) -> MemoryEstimate:
    """Peak bytes per GPU under FSDP: 1/N of the weights and adapter state plus the layers gathered at a time;
    activations and logits are per micro-batch and do not shrink."""
    weights = estimate.weights / gpus + PREFETCHED_LAYERS * layer
    adapter = estimate.adapter / gpus
    body = weights + adapter + estimate.activations + estimate.logits
    return MemoryEstimate(int(weights), int(adapter), estimate.activations, estimate.logits, int(GIB + 0.10 * body))


def decide(
    execution: Any,
    trial: TrialSpec,
    estimate: MemoryEstimate | None,
    gpu_bytes: int | None,
    source: str,
    layer: int = 0,
) -> Decision:
    """How one trial runs, and why. `estimate` is its unsharded peak per GPU (None when unknown)."""
    gpus = execution.resources.gpus
    asked = str(execution.sharding.value if hasattr(execution.sharding, "value") else execution.sharding)
    if gpus <= 1:
        return Decision("none", gpus, "execution.resources.gpus is " + str(gpus))
    if trial.is_baseline:
        return Decision("none", 1, f"the baseline trains nothing; rank 0 evaluates it on one of {gpus} GPUs")
    if asked == "none":
        return Decision("none", gpus, "execution.sharding none")
    needs = f"needs about {estimate.total / GIB:.1f} GiB per GPU unsharded" if estimate else ""
    if asked == "fsdp":
        return _fsdp(gpus, "execution.sharding fsdp" + (f" ({needs})" if needs else ""), estimate, gpu_bytes, layer)
    if trial.base_model.quantization != "none":
        return Decision("none", gpus, "4-bit weights are not sharded (baseModel.quantization nf4)")
    if estimate is None:
        return Decision("none", gpus, "memory not estimated (model dimensions unknown); set execution.sharding fsdp "
                        "to shard")  # fmt: skip
    if not gpu_bytes:
        return Decision("none", gpus, f"{needs}; {source}")
    if estimate.total <= FIT_FRACTION * gpu_bytes:
        return Decision("none", gpus, f"{needs}, fits one {gpu_bytes / GIB:.0f} GiB GPU")
    why = f"{needs}, more than one {gpu_bytes / GIB:.0f} GiB GPU"
    return _fsdp(gpus, why, estimate, gpu_bytes, layer)


def _fsdp(gpus: int, why: str, estimate: MemoryEstimate | None, gpu_bytes: int | None, layer: int) -> Decision:
    if estimate is None:
        return Decision("fsdp", gpus, why)
    sharded = sharded_estimate(estimate, gpus, layer)
    reason = f"{why}; sharded about {sharded.total / GIB:.1f} GiB per GPU"
    warning = None
    if gpu_bytes and sharded.total > FIT_FRACTION * gpu_bytes:
        warning = (
            f"even sharded over {gpus} GPUs a trial needs about {sharded.total / GIB:.1f} GiB per GPU "
            f"({sharded.breakdown()} GiB) of {gpu_bytes / GIB:.0f} GiB: raise execution.resources.gpus, lower "
            "training.batchSize or training.maxSeqLength, or set training.gradientCheckpointing: true"
        )
    elif gpu_bytes and estimate.weights > FIT_FRACTION * gpu_bytes:
        warning = (
            f"training fits sharded, but evaluation and latency run unsharded on one GPU and the weights alone are "
            f"{estimate.weights / GIB:.1f} GiB of {gpu_bytes / GIB:.0f} GiB: they would run out of memory"
        )
    return Decision("fsdp", gpus, reason, warning)


def assign_sharding(
    spec: Any, plan: Plan, inventory: ModelInventory | None = None, config: Mapping[str, Any] | None = None
) -> dict[str, Decision]:
    """Decide every trial of a plan and write the mode into its TrialSpec. Estimates are needed only for
    `auto` with several GPUs; without a config the built-in table is read (no I/O, as the operator does)."""
    execution = spec.execution
    estimates: dict[str, MemoryEstimate] = {}
    gpu_bytes, source = gpu_memory(execution.resources.gpu_memory, execution.node_selector)
    layer = 0
    if execution.resources.gpus > 1 and (inventory is None or config is None):
        config = known_model_config(spec.base_model.uri, spec.base_model.revision)
        try:
            inventory = catalog_inventory(config) if config else None
        except (UnsupportedModel, ValueError):
            inventory = None
    if execution.resources.gpus > 1 and inventory is not None and config is not None:
        estimates = plan_memory(plan, inventory, config, execution).estimates
        layer = layer_bytes(inventory, plan.trials[0].spec) if plan.trials else 0
    decisions: dict[str, Decision] = {}
    for trial in plan.trials:
        decision = decide(execution, trial.spec, estimates.get(trial.name), gpu_bytes, source, layer)
        if decision.mode != (trial.spec.sharding or "none"):  # absent unless fsdp (TrialSpec.sharding)
            trial.spec = trial.spec.model_copy(update={"sharding": None if decision.mode == "none" else decision.mode})
        decisions[trial.name] = decision
    return decisions


def plan_lines(trials: list[PlannedTrial], decisions: Mapping[str, Decision]) -> list[str]:
    """What `lora-ablation plan` prints: how each configuration runs and why (one line per distinct way)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for trial in trials:
        decision = decisions.get(trial.name)
        if decision is not None:
            labels = groups.setdefault((decision.describe(), decision.reason), [])
            if trial.label not in labels:
                labels.append(trial.label)
    lines = [f"Runs {how} ({reason}): {', '.join(labels)}." for (how, reason), labels in groups.items()]
    warnings = {d.warning for d in decisions.values() if d.warning}
    return lines + [f"WARNING: {w}" for w in sorted(warnings)]
