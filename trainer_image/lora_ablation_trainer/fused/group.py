"""A group's adapters on one base model: one PEFT adapter per trial, named t0, t1, ..., each created under its
trial's seed exactly as a lone trial creates its one adapter, with its own optimizer over its own parameters
(the same parameters in the same order as alone, so a checkpoint is the same whichever way it was written)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

from lora_ablation.api.trial import TrialSpec
from lora_ablation.storage.store import Store
from lora_ablation_trainer import adapters
from lora_ablation_trainer.errors import PermanentTrialError
from lora_ablation_trainer.progress import ProgressReporter
from lora_ablation_trainer.train import TrainState


@dataclass
class Member:
    """One trial of a fused group, with everything its training loop keeps apart from the others'."""

    spec: TrialSpec
    store: Store
    targets: adapters.Targets
    features: list[dict[str, list[int]]]
    progress: ProgressReporter | None = None
    adapter: str = ""
    steps: int = 0
    stop: int = 0
    params: list[torch.nn.Parameter] = field(default_factory=list)
    optimizer: torch.optim.Optimizer | None = None
    scheduler: object = None
    state: TrainState = field(default_factory=TrainState)
    batches: object = None
    error: PermanentTrialError | None = None

    @property
    def training(self):
        return self.spec.training

    @property
    def active(self) -> bool:
        return self.error is None and self.state.step < self.stop


def attach_group(members: list[Member], model: torch.nn.Module):
    """Every member's adapter on `model` (the shared base, changed in place as for a lone trial); each member gets
    its adapter's name, parameters and optimizer."""
    configs = [adapters.lora_config(m.spec, m.targets, model) for m in members]  # read off the plain base
    if members[0].training.gradient_checkpointing:  # the same for every member (fusion.recipe_key)
        adapters.enable_gradient_checkpointing(model)
    peft_model = None
    for index, (member, config) in enumerate(zip(members, configs, strict=True)):
        member.adapter = f"t{index}"
        torch.manual_seed(member.training.seed)  # the initial A matrices a lone run of this trial draws
        if peft_model is None:
            peft_model = get_peft_model(model, config, adapter_name=member.adapter)
        else:
            peft_model.add_adapter(member.adapter, config)
    for member in members:
        wrapped = sorted(n.removeprefix("base_model.model.") for n, m in peft_model.named_modules()
                         if member.adapter in getattr(m, "lora_A", {}))  # fmt: skip
        if wrapped != sorted(member.targets.target_modules):
            raise PermanentTrialError(f"PEFT wrapped {len(wrapped)} modules for {member.spec.name}, expected "
                                      f"{len(member.targets.target_modules)}")  # fmt: skip
        marker = f".{member.adapter}."
        member.params = [p for n, p in peft_model.named_parameters() if "lora_" in n and marker in n + "."]
    for member in members:  # make_optimizer takes what requires grad: this member's parameters alone
        for other in members:
            for parameter in other.params:
                parameter.requires_grad_(other is member)
        member.optimizer = adapters.make_optimizer(peft_model, member.spec)
    for member in members:
        for parameter in member.params:
            parameter.requires_grad_(True)
    return peft_model


def adapter_weights(model, member: Member) -> dict[str, torch.Tensor]:
    """The member's trained adapter in PEFT's saved format (the names a lone trial's adapter has)."""
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model, adapter_name=member.adapter).items()}


def load_adapter_weights(model, member: Member, weights: dict) -> None:
    loaded = set_peft_model_state_dict(model, weights, adapter_name=member.adapter)
    if loaded.unexpected_keys:
        raise PermanentTrialError(f"the checkpoint's adapter does not fit trial {member.spec.name}: "
                                  f"{loaded.unexpected_keys[:3]}")  # fmt: skip
