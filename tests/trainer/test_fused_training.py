"""Adapters trained together on one base equal the same trials trained alone: the fused loop against the lone
loop on real tiny models, float32, dropout 0 (issue 25). Module sets, ranks, layer subsets, seeds and variants
differ between the members; the max abs difference of every adapter weight is asserted to 1e-5."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model_state_dict
from transformers import AutoTokenizer

from lora_ablation.storage.open import open_store
from lora_ablation_trainer.adapters import attach_adapter, load_model, make_optimizer, resolve_targets
from lora_ablation_trainer.data import encode, load_examples
from lora_ablation_trainer.fused.group import Member, adapter_weights, attach_group
from lora_ablation_trainer.fused.loop import train_fused
from lora_ablation_trainer.packing import pack
from lora_ablation_trainer.train import train_adapter
from support.trainer_data import trial_spec

pytestmark = pytest.mark.trainer
MEMBERS = [  # (name, overrides): what differs between the trials of one fused group
    ("oproj-r4", {"modules": ["o_proj"], "rank": 4, "alpha": 8}),
    ("qkv-fc2-r8", {"modules": ["qkv", "fc2"], "rank": 8, "alpha": 16, "variant": "rslora"}),
    ("all-r2-top", {"modules": ["all"], "rank": 2, "alpha": 4, "layers": "lastHalf", "variant": "loraplus"}),
    ("oproj-seed7", {"modules": ["o_proj"], "rank": 4, "alpha": 8, "training": {"seed": 7}}),
]


def _specs(tiny_models, choice_data, tmp_path, members=MEMBERS, **training):
    specs = []
    for name, overrides in members:
        overrides = {**overrides, "training": {"maxSteps": 6, "batchSize": 4, "gradientAccumulation": 2,
                                               "loraDropout": 0.0, **training, **overrides.get("training", {})}}
        specs.append(trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"],
                                f"file://{tmp_path}/{name}", name=name, **overrides))  # fmt: skip
    return specs


def _features(tiny_models, choice_data, spec):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    examples = load_examples(choice_data["train"], "prompt-completion", tokenizer, limit=96)
    features = [encode(e, tokenizer, spec.training.max_seq_length) for e in examples]
    return (pack(features, spec.training.max_seq_length) if spec.training.packing else features), tokenizer


def _alone(tiny_models, choice_data, spec):
    features, tokenizer = _features(tiny_models, choice_data, spec)
    model = load_model(tiny_models["llama"], torch.float32, torch.device("cpu"))
    model = attach_adapter(spec, resolve_targets(spec, tiny_models["llama"]), model)
    metrics = train_adapter(model, features, spec.training, make_optimizer(model, spec), tokenizer.pad_token_id,
                            torch.device("cpu"), None)  # fmt: skip
    return get_peft_model_state_dict(model), metrics


def _fused(tiny_models, choice_data, specs, stores=None):
    features, tokenizer = _features(tiny_models, choice_data, specs[0])
    base = load_model(tiny_models["llama"], torch.float32, torch.device("cpu"))
    members = [Member(spec=s, store=open_store(s.storage.uri), targets=resolve_targets(s, tiny_models["llama"]),
                      features=features) for s in specs]  # fmt: skip
    model = attach_group(members, base)
    metrics = train_fused(model, members, tokenizer.pad_token_id, torch.device("cpu"))
    return {m.spec.name: adapter_weights(model, m) for m in members}, metrics, members


def _max_difference(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("training", [{}, {"packing": True}, {"gradientCheckpointing": True}],
                         ids=["plain", "packed", "checkpointed"])  # fmt: skip
def test_every_fused_adapter_equals_its_trial_trained_alone(tiny_models, choice_data, tmp_path, training):
    specs = _specs(tiny_models, choice_data, tmp_path, **training)
    fused, fused_metrics, _ = _fused(tiny_models, choice_data, specs)
    for spec in specs:
        weights, metrics = _alone(tiny_models, choice_data, spec)
        difference = _max_difference(fused[spec.name], weights)
        print(f"{spec.name}: max abs difference fused vs alone {difference:.2e}")
        assert difference < 1e-5, (spec.name, difference)
        assert fused_metrics[spec.name].loss_last == pytest.approx(metrics.loss_last, abs=1e-4)
        assert fused_metrics[spec.name].tokens == metrics.tokens and fused_metrics[spec.name].steps == 6
        moved = max(float(v.abs().max()) for k, v in weights.items() if "lora_B" in k)
        assert moved > 1e-3, "training moved the adapter (B starts at zero)"
