"""The memory estimate's activation term against what autograd really keeps for the backward pass."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from lora_ablation.api.trial import TrialSpec
from lora_ablation.modules.inventory import catalog_inventory, resolve_module_set
from lora_ablation.planning.memory import training_activation_bytes

pytestmark = pytest.mark.trainer
CONFIG = dict(model_type="llama", hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=256)  # fmt: skip
TOKENS = 256


def saved_bytes(model, ids: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves during one forward (what the backward pass holds), weights
    (saved by reference, already counted as weights) left out."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model(input_ids=ids, labels=ids, use_cache=False)
    return sum(storages.values())


@pytest.mark.parametrize("modules", [["o_proj", "fc2"], ["qkv", "o_proj", "fc1", "fc2"]])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_estimate_is_close_to_what_autograd_saves(modules, checkpointing):
    inventory = catalog_inventory(CONFIG)
    resolution = resolve_module_set(inventory, modules)
    trial = TrialSpec.model_validate({
        "ablation": "a", "name": "t", "baseModel": {"uri": "hf://x/y", "dtype": "float32"},
        "dataset": {"name": "d", "train": "s3://b/t.jsonl", "eval": "s3://b/e.jsonl"},
        "modules": modules, "rank": 8, "alpha": 16, "variant": "lora",
        "training": {"batchSize": 1, "maxSeqLength": TOKENS, "gradientCheckpointing": checkpointing},
        "storage": {"uri": "s3://b/out"},
    })  # fmt: skip
    estimate = training_activation_bytes(inventory, CONFIG, trial, resolution)
    config = dict(CONFIG)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(config.pop("model_type"), **config))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=8, target_modules=resolution.target_modules, lora_dropout=0.05))
    model.train()
    measured = saved_bytes(model, torch.randint(0, 256, (1, TOKENS)))
    logits = TOKENS * 256 * 4 * 2  # the (tiny-vocabulary) logits and log-softmax saved for the loss
    if checkpointing:  # saved: each layer's input; the estimate adds the one layer recomputed during backward
        assert measured - logits <= estimate
    else:
        assert 0.95 < estimate / (measured - logits) < 1.25, (estimate, measured - logits)
