"""An adapter that changes nothing is flagged: fresh LoRA (B = 0) is the base model; a trained one is not."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from lora_ablation_trainer.data import Example
from lora_ablation_trainer.effect import adapter_effect

EXAMPLES = [Example(prompt=f"copy abc{i}", completion=f"abc{i}") for i in range(10)]


def test_a_zero_adapter_is_flagged_and_a_moved_one_is_not(tiny_models):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_models["llama"]),
                           LoraConfig(r=4, target_modules=["o_proj", "down_proj"]))  # fmt: skip
    fresh = adapter_effect(model, tokenizer, EXAMPLES, 32, torch.device("cpu"))
    assert fresh.unchanged and fresh.max_logit_delta == 0.0 and fresh.prompts == 8
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    moved = adapter_effect(model, tokenizer, EXAMPLES, 32, torch.device("cpu"))
    assert not moved.unchanged and moved.max_logit_delta > 1e-3
