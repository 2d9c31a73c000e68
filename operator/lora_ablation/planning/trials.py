"""What a plan is: its trials, each with the TrialSpec it runs and its configuration label. Types only, below the
planner and what the planner consults (sharding, the memory estimate), so none of them import each other in a ring."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lora_ablation.api.trial import BASELINE_VARIANT, TrialSpec
from lora_ablation.modules.groups import module_set_label
from lora_ablation.modules.layers import ALL as ALL_LAYERS


class LayerSelectionError(ValueError):
    """A search.layers entry names layers the model does not have."""


@dataclass
class PlannedTrial:
    spec: TrialSpec
    label: str  # 'o_proj+fc2 r16 lora' or 'base'
    estimated_params: int | None  # None when the model's dimensions are unknown to the planner
    seed: int | None = None  # the training seed; None for the baseline (nothing is trained)

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class Plan:
    trials: list[PlannedTrial]
    inventory_source: str | None  # 'catalog', 'module tree' or None (model not inspected)
    notes: list[str]
    sharding: dict[str, Any] = field(default_factory=dict)  # trial name -> lora_ablation.planning.sharding.Decision
    fused_group_size: int = 1  # trials of one Job trained together at most (lora_ablation.planning.fusion)
    fusion_note: str = ""  # why that many

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.trials]


def config_label(modules: list[str], rank: int, variant: str, layers: str = ALL_LAYERS) -> str:
    """'o_proj+fc2 r16 lora', with ' layers=lastHalf' when the configuration adapts a layer subset."""
    if variant == BASELINE_VARIANT:
        return "base"
    label = f"{module_set_label(modules)} r{rank} {variant}"
    return label if layers == ALL_LAYERS else f"{label} layers={layers}"


def ablation_uri(storage_uri: str, namespace: str, ablation: str) -> str:
    """The ablation's folder of spec.storage: its record."""
    return f"{storage_uri.rstrip('/')}/{namespace}/{ablation}"


def trial_uri(storage_uri: str, namespace: str, ablation: str, trial: str) -> str:
    return f"{ablation_uri(storage_uri, namespace, ablation)}/{trial}"
