"""The latency protocol's pieces: percentiles, the fixed prompt, exact token counts, base vs adapter."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from lora_ablation.api.spec import LatencySpec
from lora_ablation_trainer.latency import _one_run, cv_pct, fixed_prompt, measure, paired_overhead, percentile, pinned


def test_percentile_interpolates_like_numpy_linear():
    values = [10.0, 1.0, 4.0, 7.0, 2.0]
    assert percentile(values, 0.5) == 4.0
    assert percentile(values, 0.95) == pytest.approx(7.0 + 0.8 * (10.0 - 7.0))
    assert percentile([3.0], 0.95) == 3.0


def test_fixed_prompt_is_identical_and_free_of_special_tokens(tiny_models):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    first, second = fixed_prompt(tokenizer, 32, 2), fixed_prompt(tokenizer, 32, 2)
    assert first.shape == (2, 32) and torch.equal(first, second)
    assert not set(first.flatten().tolist()) & set(tokenizer.all_special_ids)


def test_exactly_n_tokens_even_when_eos_would_come_first(tiny_models):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).eval()

    def favour_eos(module, inputs, logits):  # make EOS the greedy choice at every step
        logits[..., tokenizer.eos_token_id] = 1e4
        return logits

    model.lm_head.register_forward_hook(favour_eos)
    prompt = fixed_prompt(tokenizer, 8, 1)
    plain = model.generate(input_ids=prompt, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert plain.shape[1] - prompt.shape[1] == 1, "without the protocol, generation would stop at once"
    ttft, tpot = _one_run(model, prompt, 6, tokenizer.pad_token_id)
    assert ttft > 0 and tpot > 0


def test_measure_reports_base_and_unmerged_adapter(tiny_models):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["o_proj"]))
    spec = LatencySpec(prompt_tokens=12, output_tokens=5, warmup=1, repeats=4)
    result = measure(model, tokenizer, spec, torch.device("cpu"), has_adapter=True)
    assert result.repeats == 4 and result.output_tokens == 5 and result.device.startswith("cpu")
    assert result.base.tpot_p95_ms >= result.base.tpot_p50_ms > 0
    assert result.adapter.ttft_p95_ms >= result.adapter.ttft_p50_ms > 0
    expected = (result.adapter.tpot_p95_ms / result.base.tpot_p95_ms - 1) * 100
    assert result.tpot_overhead_pct == pytest.approx(expected, abs=1e-2)
    # The adapter is unmerged and enabled again after timing.
    assert not model.base_model.model.model.layers[0].self_attn.o_proj.merged
    assert model.base_model.model.model.layers[0].self_attn.o_proj.disable_adapters is False


def test_measure_times_the_merged_adapter_and_reports_its_noise(tiny_models):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_models["llama"]),
                           LoraConfig(r=4, target_modules=["o_proj"]))  # fmt: skip
    spec = LatencySpec(prompt_tokens=12, output_tokens=5, warmup=1, repeats=5)
    result = measure(model, tokenizer, spec, torch.device("cpu"), has_adapter=True)
    assert result.merged is not None and result.merged.tpot_p95_ms > 0 and result.warmup == 1
    assert result.merged_tpot_overhead_pct == pytest.approx(
        (result.merged.tpot_p95_ms / result.base.tpot_p95_ms - 1) * 100, abs=1e-2
    )
    assert result.tpot_overhead_ci_pct > 0 and result.merged_tpot_overhead_ci_pct > 0
    assert result.base.tpot_cv_pct > 0 and result.adapter.tpot_cv_pct > 0
    # The merge happened on a copy: the trained model still carries its unmerged adapter.
    o_proj = model.base_model.model.model.layers[0].self_attn.o_proj
    assert not o_proj.merged and "default" in o_proj.lora_A
    base_only = measure(model, tokenizer, spec, torch.device("cpu"), has_adapter=False)
    assert base_only.adapter is None and base_only.merged is None and base_only.tpot_overhead_ci_pct is None


def test_paired_overhead_and_cv_are_the_textbook_figures():
    base = [(1.0, 10.0), (1.0, 10.0), (1.0, 10.0)]
    other = [(1.0, 11.0), (1.0, 12.0), (1.0, 13.0)]  # +10%, +20%, +30%: mean 20, sd 10, t(2) 4.303
    interval = paired_overhead(base, other)
    assert interval.mean == pytest.approx(20.0) and interval.half_width == pytest.approx(4.303 * 10 / 3**0.5, 1e-3)
    assert cv_pct([9.0, 10.0, 11.0]) == pytest.approx(10.0)
    assert cv_pct([5.0]) == 0.0


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only")
def test_pinning_fixes_threads_and_cores_and_restores_them():
    threads, cores = torch.get_num_threads(), os.sched_getaffinity(0)
    torch.ones(256, 256) @ torch.ones(256, 256)  # let torch start its worker threads first
    with pinned(torch.device("cpu")):
        inside = os.sched_getaffinity(0)
        assert len(inside) == torch.get_num_threads() == 1 and inside <= cores
        every = []
        for thread in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                every.append(os.sched_getaffinity(int(thread)))
        assert every and all(a == inside for a in every), "every thread, torch's workers included, is bound"
    assert torch.get_num_threads() == threads and os.sched_getaffinity(0) == cores
