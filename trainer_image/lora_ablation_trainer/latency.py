"""Time to first token and time per output token, base model and unmerged adapter in one process.

Protocol (design.md): fixed prompt length, identical prompts, greedy, exactly N new tokens (asserted),
eval mode under inference_mode, the same dtype and attention implementation for both, warmup runs,
then repeated runs alternating base and adapter so drift hits both alike; the device is synchronised
at every timestamp; TPOT = (E2E - TTFT) / (N - 1).
"""

from __future__ import annotations

import contextlib
import platform
import statistics
import time

import torch
from transformers.generation.streamers import BaseStreamer

from lora_ablation.api.spec import LatencySpec
from lora_ablation.api.trial import LatencyMetrics, LatencyStats


class _Clock(BaseStreamer):
    """generate() calls put() with the prompt, then once per new token: timestamps for TTFT and E2E."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stamps: list[float] = []

    def put(self, value) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stamps.append(time.perf_counter())

    def end(self) -> None:
        pass


def ordinary_ids(tokenizer) -> list[int]:
    special = set(tokenizer.all_special_ids)
    return [i for i in range(len(tokenizer)) if i not in special]


def fixed_prompt(tokenizer, length: int, batch_size: int) -> torch.Tensor:
    """The same deterministic non-special token ids for every configuration."""
    ordinary = ordinary_ids(tokenizer)
    ids = [ordinary[(7 * i + 3) % len(ordinary)] for i in range(length)]
    return torch.tensor([ids] * batch_size, dtype=torch.long)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = int(position), min(int(position) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@torch.inference_mode()
def _one_run(
    model, prompt: torch.Tensor | dict[str, torch.Tensor], new_tokens: int, pad_id: int
) -> tuple[float, float]:
    """`prompt`: token ids, or every input a vision-language model takes (ids, mask, image tensors)."""
    inputs = prompt if isinstance(prompt, dict) else {"input_ids": prompt, "attention_mask": torch.ones_like(prompt)}
    prompt = inputs["input_ids"]
    clock = _Clock(prompt.device)
    start = time.perf_counter()
    output = model.generate(
        **inputs,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,  # EOS is suppressed until N tokens exist: every run does the same work
        do_sample=False,
        pad_token_id=pad_id,
        streamer=clock,
    )
    produced = output.shape[1] - prompt.shape[1]
    assert produced == new_tokens, f"generated {produced} tokens, expected exactly {new_tokens}"
    ttft = clock.stamps[1] - start
    e2e = clock.stamps[-1] - start
    return ttft * 1000, (e2e - ttft) / (new_tokens - 1) * 1000


def _stats(samples: list[tuple[float, float]]) -> LatencyStats:
    ttft, tpot = [s[0] for s in samples], [s[1] for s in samples]
    return LatencyStats(
        ttft_p50_ms=round(statistics.median(ttft), 4),
        ttft_p95_ms=round(percentile(ttft, 0.95), 4),
        tpot_p50_ms=round(statistics.median(tpot), 4),
        tpot_p95_ms=round(percentile(tpot, 0.95), 4),
    )


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def measure(
    model,
    tokenizer,
    spec: LatencySpec,
    device: torch.device,
    has_adapter: bool,
    weights: str | None = None,
    vision=None,
) -> LatencyMetrics:
    """Time the base model (adapter disabled) and, when present, the unmerged adapter.

    `weights` names how the base weights are stored when the first parameter's dtype would not (a 4-bit base).
    A vision-language model is timed with one image in the prompt (its image tokens count toward promptTokens)."""
    model.eval()
    if vision:
        inputs = vision.latency_inputs(spec.prompt_tokens, spec.batch_size, ordinary_ids(tokenizer))
        prompt = {k: v.to(device) for k, v in inputs.items()}
    else:
        prompt = fixed_prompt(tokenizer, spec.prompt_tokens, spec.batch_size).to(device)
    prompt_tokens = (prompt["input_ids"] if vision else prompt).shape[1]
    pad_id = tokenizer.pad_token_id
    variants = {"base": model.disable_adapter if has_adapter else contextlib.nullcontext}
    if has_adapter:
        variants["adapter"] = contextlib.nullcontext
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for repeat in range(spec.warmup + spec.repeats):
        for name, context in variants.items():
            with context():
                timing = _one_run(model, prompt, spec.output_tokens, pad_id)
            if repeat >= spec.warmup:
                samples[name].append(timing)
    base = _stats(samples["base"])
    adapter = _stats(samples["adapter"]) if has_adapter else None
    overhead = round((adapter.tpot_p95_ms / base.tpot_p95_ms - 1) * 100, 3) if adapter and base.tpot_p95_ms else None
    return LatencyMetrics(
        device=device_name(device),
        dtype=weights or str(next(model.parameters()).dtype).replace("torch.", ""),
        prompt_tokens=prompt_tokens,
        output_tokens=spec.output_tokens,
        batch_size=spec.batch_size,
        repeats=spec.repeats,
        base=base,
        adapter=adapter,
        tpot_overhead_pct=overhead,
    )
