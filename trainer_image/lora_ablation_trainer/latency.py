"""Time to first token and time per output token: base model, unmerged adapter and merged adapter, one process.

Protocol (design.md): fixed prompt length, identical prompts, greedy, exactly N new tokens (asserted),
eval mode under inference_mode, the same dtype and attention implementation for all, warmup runs, then
repeated runs alternating base and adapter (the order flips every repeat, so neither always runs first)
and drift hits both alike; on CPU the threads are fixed and the process pinned to as many cores; the device
is synchronised at every timestamp; TPOT = (E2E - TTFT) / (N - 1). Each repeat yields a paired overhead
(adapter / base - 1), whose spread gives the overhead's 95% interval: an overhead inside it is noise.
The merged adapter (merge_and_unload on a copy: the zero-overhead serving path) is timed in the same rotation.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import platform
import statistics
import time

import torch
from transformers.generation.streamers import BaseStreamer

from lora_ablation.api.spec import LatencySpec
from lora_ablation.api.trial import LatencyMetrics, LatencyStats
from lora_ablation.summary.stats import Interval, mean_interval

log = logging.getLogger(__name__)


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
        tpot_cv_pct=round(cv_pct(tpot), 3),
        ttft_cv_pct=round(cv_pct(ttft), 3),
    )


def cv_pct(values: list[float]) -> float:
    """Coefficient of variation in % (sample sd / mean): the protocol's own noise figure."""
    if len(values) < 2 or statistics.fmean(values) <= 0:
        return 0.0
    return statistics.stdev(values) / statistics.fmean(values) * 100


def paired_overhead(base: list[tuple[float, float]], other: list[tuple[float, float]]) -> Interval | None:
    """Mean per-repeat TPOT overhead (%) of `other` over the base run beside it, with its 95% interval."""
    ratios = [(o[1] / b[1] - 1) * 100 for b, o in zip(base, other, strict=True) if b[1] > 0]
    return mean_interval(ratios) if ratios else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def _threads() -> list[int]:
    """Every thread of this process (torch's worker pools included): affinity is per thread on Linux."""
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def _bind(cores: set[int]) -> None:
    for thread in _threads():
        with contextlib.suppress(OSError):  # a thread may have ended meanwhile
            os.sched_setaffinity(thread, cores)


# Decoding one sequence is a chain of small matrix products: on CPU, extra threads buy little speed and, on
# shared cores, barrier stalls whenever a neighbour holds a core. On a loaded 2-core machine (median of 3
# rounds, tests/benchmarks/latency_noise.py) 2 pinned threads gave TPOT p50 63 ms and an overhead interval of
# +-38 points, one pinned thread 4.8 ms and +-14. Base and adapter are timed alike: the overhead stays comparable.
CPU_TIMING_THREADS = 1


@contextlib.contextmanager
def pinned(device: torch.device, threads: int = CPU_TIMING_THREADS):
    """On CPU: a fixed thread count and every thread bound to that many of the cores this process may use
    (the local runner gives parallel trials disjoint cores), so the OS cannot migrate the timed threads and
    no thread waits at a barrier for a core a neighbour holds. Restored afterwards. Nothing to do on a GPU."""
    if device.type != "cpu" or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before_threads, before_cores = torch.get_num_threads(), os.sched_getaffinity(0)
    cores = set(sorted(before_cores)[: max(1, min(threads, len(before_cores)))])
    torch.set_num_threads(len(cores))
    _bind(cores)  # after set_num_threads, which may start new pool threads
    try:
        yield
    finally:
        torch.set_num_threads(before_threads)
        _bind(before_cores)


def merged_copy(model):
    """The adapter merged into a copy of the weights (what a merged deployment serves); None when there is
    no room for a second copy on the device, so the rest of the protocol still reports."""
    try:
        return copy.deepcopy(model).merge_and_unload().eval()
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        log.warning("no memory for a merged copy of the model: merged latency not measured")
    except (RuntimeError, ValueError, NotImplementedError) as error:  # e.g. weights PEFT cannot merge into
        log.warning("the adapter could not be merged (%s): merged latency not measured", error)
    return None


def measure(
    model,
    tokenizer,
    spec: LatencySpec,
    device: torch.device,
    has_adapter: bool,
    weights: str | None = None,
    vision=None,
    merged: bool = True,
    cpu_threads: int = CPU_TIMING_THREADS,
) -> LatencyMetrics:
    """Time the base model (adapter disabled) and, when present, the unmerged and the merged adapter.

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
    runs = {"base": (model, model.disable_adapter if has_adapter else contextlib.nullcontext)}
    if has_adapter:
        runs["adapter"] = (model, contextlib.nullcontext)
        copy_ = merged_copy(model) if merged else None
        if copy_ is not None:
            runs["merged"] = (copy_, contextlib.nullcontext)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    names = list(runs)
    with pinned(device, cpu_threads):
        for repeat in range(spec.warmup + spec.repeats):
            for name in names if repeat % 2 == 0 else names[::-1]:
                target, context = runs[name]
                with context():
                    timing = _one_run(target, prompt, spec.output_tokens, pad_id)
                if repeat >= spec.warmup:
                    samples[name].append(timing)
        where = device_name(device)
    runs.clear()  # drop the merged copy before the trial goes on
    stats = {name: _stats(values) for name, values in samples.items()}
    base, adapter, merged_stats = stats["base"], stats.get("adapter"), stats.get("merged")
    overhead = round((adapter.tpot_p95_ms / base.tpot_p95_ms - 1) * 100, 3) if adapter and base.tpot_p95_ms else None
    paired = paired_overhead(samples["base"], samples["adapter"]) if adapter else None
    paired_merged = paired_overhead(samples["base"], samples["merged"]) if merged_stats else None
    log.info(
        "latency on %s: TPOT CV base %.1f%%%s over %d repeats",
        where,
        base.tpot_cv_pct,
        f", adapter {adapter.tpot_cv_pct:.1f}%" if adapter else "",
        spec.repeats,
    )
    return LatencyMetrics(
        device=where,
        dtype=weights or str(next(model.parameters()).dtype).replace("torch.", ""),
        prompt_tokens=prompt_tokens,
        output_tokens=spec.output_tokens,
        batch_size=spec.batch_size,
        repeats=spec.repeats,
        warmup=spec.warmup,
        base=base,
        adapter=adapter,
        merged=merged_stats,
        tpot_overhead_pct=overhead,
        tpot_overhead_ci_pct=_half(paired),
        merged_tpot_overhead_pct=round((merged_stats.tpot_p95_ms / base.tpot_p95_ms - 1) * 100, 3)
        if merged_stats and base.tpot_p95_ms
        else None,
        merged_tpot_overhead_ci_pct=_half(paired_merged),
    )


def _half(interval: Interval | None) -> float | None:
    return round(interval.half_width, 3) if interval and interval.half_width is not None else None
