"""Sharded training inside one pod (TrialSpec.sharding fsdp): PyTorch FSDP2 (`fully_shard`), one unit per
decoder layer plus the root, as PEFT and accelerate wrap transformer layers for LoRA.

Why FSDP2 and not FSDP1: on torch 2.13 it shards a PEFT model with frozen base weights and trainable
LoRA weights in the same layer (per-parameter DTensor sharding, no flat parameters, so no
use_orig_params workaround), runs on CPU with gloo (the test suite trains with two CPU processes), and
its state-dict API gathers a full adapter and optimizer state for rank 0.

- Weights are read into host memory on every rank, then each layer is sharded onto the GPU: the GPU
  holds 1/N of the weights plus the layers being gathered, the host briefly a whole copy per rank.
- Gradients are reduce-scattered (averaged) by FSDP itself, once per optimizer step.
- Checkpoints hold the full adapter and full optimizer state, keyed by parameter name, gathered to
  rank 0 and written as one object; every rank reads it back on resume.
- Evaluation and latency run on rank 0 on an unsharded copy: the trained adapter is gathered, the
  base model is loaded again and the adapter put on it. The timing then measures what serving one
  replica would (no per-layer gathers), and the published adapter is plain PEFT.
"""

from __future__ import annotations

import gc
import logging

import torch
from peft import get_peft_model_state_dict
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

log = logging.getLogger(__name__)
GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The units to shard: modules whose class transformers lists as never split (decoder layers, vision
    blocks), the same rule as accelerate's transformer auto-wrap policy."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def shard(model: torch.nn.Module, device: torch.device, world: int) -> torch.nn.Module:
    """Shard a PEFT model (built on the host) across `world` processes; its shards land on `device`."""
    mesh = init_device_mesh(device.type, (world,))
    dtypes = {p.dtype for p in model.parameters()}
    # A 16-bit base with float32 adapters (PEFT's default) computes in the base's dtype; float32 masters stay sharded.
    compute = min(dtypes, key=lambda d: torch.finfo(d).bits) if len(dtypes) > 1 else None
    policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32 if compute else None)
    layers = decoder_layers(model)
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    log.info("sharded with FSDP over %d processes: %d layer units and the root", world, len(layers))
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def gradient_sync(model: torch.nn.Module, enabled: bool) -> None:
    """Reduce-scatter gradients only on an optimizer step's last micro-batch (accumulate locally before)."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)


def local_norm(norm: torch.Tensor) -> torch.Tensor:
    """clip_grad_norm_ over sharded gradients clips by the global norm (checked against one process, clipping
    active: gradients agree to 1e-10) and returns it as a DTensor; the figure as a plain tensor."""
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def full_adapter(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable parameter, unsharded on rank 0's host (empty on other ranks), keyed by its name in
    the model. A collective: every rank calls it."""
    return get_model_state_dict(model, options=GATHER)


def full_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state, unsharded on rank 0's host and keyed by parameter name. A collective."""
    return get_optimizer_state_dict(model, optimizer, options=GATHER)


def load_full(model: torch.nn.Module, optimizer: torch.optim.Optimizer, adapter: dict, optimizer_state: dict) -> None:
    """Put a full checkpoint (every rank holds it) back into the sharded model and optimizer."""
    options = StateDictOptions(full_state_dict=True, strict=False)
    missing = set_model_state_dict(model, adapter, options=options)
    if missing.unexpected_keys:
        raise ValueError(f"the checkpoint holds parameters this model lacks: {missing.unexpected_keys[:3]}")
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=StateDictOptions(full_state_dict=True))


def gathered_peft_adapter(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The trained adapter in PEFT's own format (what save_pretrained writes) on rank 0, None elsewhere."""
    full = full_adapter(model)
    return get_peft_model_state_dict(model, state_dict=full) if full else None


def release() -> None:
    """Free a sharded model the caller dropped, before rank 0 loads its unsharded copy."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
