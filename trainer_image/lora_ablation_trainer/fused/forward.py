"""One forward over the base for several adapters: the batch holds each adapter's micro-batch as a block of rows,
every LoRA layer computes its frozen base output for all rows at once, and each adapter adds its delta to its own
rows only. PEFT's layers are told to compute the base output alone (`enable_adapters(False)`); a forward hook on
each adds the deltas, so PEFT's modules, initialisation and save format stay exactly as a lone trial has them.

Dropout on the LoRA input draws from the adapter's own stream: each call seeds a generator from (the adapter's
seed, the layer module's name, the micro-batch's index in the run), so the masks depend neither on the other
adapters of the group nor on how often a layer runs (gradient checkpointing recomputes a layer in backward and
must draw the same mask), and a resumed run draws what the uninterrupted one would have.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import torch
from peft.tuners.lora import LoraLayer

_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
_MASK = (1 << 63) - 1


def stream_seed(seed: int, layer: int, micro: int) -> int:
    """A well-mixed 63-bit seed for one dropout draw (splitmix64's constants)."""
    value = (seed * _MIX[0] + layer * _MIX[1] + micro * _MIX[2]) & ((1 << 64) - 1)
    value ^= value >> 31
    return value & _MASK


@dataclass
class Block:
    """One adapter's rows of the batch, and what it needs to draw its dropout masks."""

    adapter: str
    start: int
    stop: int
    seed: int
    micro: int = 0  # the micro-batch's index in this adapter's run (step x accumulation + k)


@dataclass
class FusedForward:
    """Forward hooks on every LoRA layer of a multi-adapter PeftModel. `blocks` is set before each forward."""

    model: torch.nn.Module
    blocks: list[Block] = field(default_factory=list)
    _handles: list = field(default_factory=list)
    _generators: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, layer in self.model.named_modules():
            if isinstance(layer, LoraLayer):
                layer.enable_adapters(False)  # the layer's own forward returns the base output alone
                # The module's own name identifies its stream, whatever else the group's adapters wrap.
                identity = zlib.crc32(name.removeprefix("base_model.model.").encode())
                self._handles.append(layer.register_forward_hook(self._hook(identity)))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device)
        return self._generators[device]

    def _dropout(self, x: torch.Tensor, p: float, block: Block, layer: int) -> torch.Tensor:
        if p <= 0.0 or not self.model.training:
            return x
        generator = self._generator(x.device)
        generator.manual_seed(stream_seed(block.seed, layer, block.micro))
        keep = torch.empty_like(x).bernoulli_(1.0 - p, generator=generator)
        return x * keep / (1.0 - p)

    def _hook(self, index: int):
        def add_deltas(layer: LoraLayer, args: tuple, output: torch.Tensor) -> torch.Tensor:
            x = args[0]
            pieces, changed = [], False
            for block in self.blocks:
                rows = output[block.start : block.stop]
                if block.adapter not in layer.lora_A:  # this adapter does not target this module
                    pieces.append(rows)
                    continue
                lora_a, lora_b = layer.lora_A[block.adapter], layer.lora_B[block.adapter]
                dropout = layer.lora_dropout[block.adapter]
                sub = x[block.start : block.stop].to(lora_a.weight.dtype)
                sub = self._dropout(sub, float(getattr(dropout, "p", 0.0)), block, index)
                delta = lora_b(lora_a(sub)) * layer.scaling[block.adapter]
                pieces.append(rows + delta.to(output.dtype))
                changed = True
            return torch.cat(pieces) if changed else output

        return add_deltas
