"""The pure-data catalog: groups resolve to the design table's names, sizes follow from config.json."""

from __future__ import annotations

import re

import pytest

from lora_ablation.modules.catalog import UnsupportedModel
from lora_ablation.modules.groups import canonical_module_set, module_set_label
from lora_ablation.modules.inventory import (
    ModuleResolutionError,
    catalog_inventory,
    compress_names,
    resolve_module_set,
)
from lora_ablation.modules.known_models import KNOWN_MODEL_CONFIGS
from tiny_models import EXPECTED_GROUPS, TINY_CONFIGS

LLAMA_8B = KNOWN_MODEL_CONFIGS["meta-llama/Llama-3.1-8B-Instruct"]


def _leaves(names: list[str]) -> set[str]:
    return {re.sub(r"^.*?\.\d+\.", "", n) for n in names}


@pytest.mark.parametrize("family", sorted(EXPECTED_GROUPS))
def test_groups_resolve_to_the_design_table(family):
    inventory = catalog_inventory(TINY_CONFIGS[family])
    for group, expected in EXPECTED_GROUPS[family].items():
        resolution = resolve_module_set(inventory, [group])
        assert _leaves(resolution.target_modules) == expected, (family, group)
        assert len(resolution.target_modules) == len(expected) * 2  # one per layer, two layers


def test_gpt2_c_proj_is_split_by_parent():
    inventory = catalog_inventory(TINY_CONFIGS["gpt2"])
    o_proj = resolve_module_set(inventory, ["o_proj"]).target_modules
    fc2 = resolve_module_set(inventory, ["fc2"]).target_modules
    assert o_proj == ["transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_proj"]
    assert fc2 == ["transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_proj"]
    # A bare raw 'c_proj' is honest about being ambiguous: it selects both.
    assert len(resolve_module_set(inventory, ["c_proj"]).target_modules) == 4


def test_vision_language_models_target_only_the_language_model():
    inventory = catalog_inventory(TINY_CONFIGS["llava"])
    names = resolve_module_set(inventory, ["all"]).target_modules
    assert names and all(n.startswith("model.language_model.layers.") for n in names)


def test_moe_experts_are_target_parameters():
    inventory = catalog_inventory(TINY_CONFIGS["mixtral"])
    resolution = resolve_module_set(inventory, ["fc1", "fc2"])
    assert resolution.target_modules == []
    assert resolution.target_parameters == [
        "model.layers.0.mlp.experts.down_proj",
        "model.layers.0.mlp.experts.gate_up_proj",
        "model.layers.1.mlp.experts.down_proj",
        "model.layers.1.mlp.experts.gate_up_proj",
    ]
    # PEFT stacks the experts along r: r * E * (in + out) per tensor.
    r, experts, hidden, inter = 4, 4, 64, 128
    expected = 2 * r * experts * ((hidden + 2 * inter) + (inter + hidden))
    assert resolution.lora_params(r) == expected


def test_llama_8b_parameter_counts_by_hand():
    inventory = catalog_inventory(LLAMA_8B)
    r = 16
    o_proj = r * (4096 + 4096)
    down = r * (14336 + 4096)
    assert resolve_module_set(inventory, ["o_proj", "fc2"]).lora_params(r) == 32 * (o_proj + down) == 13_631_488
    q, kv = r * (4096 + 4096), r * (4096 + 1024)  # 8 KV heads x 128
    assert resolve_module_set(inventory, ["qkv"]).lora_params(r) == 32 * (q + 2 * kv)
    # DoRA adds one magnitude per output feature.
    assert resolve_module_set(inventory, ["o_proj"]).lora_params(r, "dora") == 32 * (o_proj + 4096)


def test_fused_qkv_sizes_follow_grouped_query_attention():
    phi3 = catalog_inventory(dict(TINY_CONFIGS["phi3"]))
    (weight,) = [w for w in phi3.weights if w.name == "model.layers.0.self_attn.qkv_proj"]
    assert (weight.in_features, weight.out_features) == (64, (4 + 2 * 2) * 16)
    falcon = catalog_inventory(TINY_CONFIGS["falcon"])  # multi-query by default: one KV head
    (weight,) = [w for w in falcon.weights if w.name == "transformer.h.0.self_attention.query_key_value"]
    assert weight.out_features == 64 + 2 * 16


def test_missing_group_lists_what_the_model_has():
    inventory = catalog_inventory(TINY_CONFIGS["llama"])
    with pytest.raises(ModuleResolutionError) as caught:
        resolve_module_set(inventory, ["o_proj", "c_attn"])
    message = str(caught.value)
    assert "module 'c_attn' matches no weight" in message
    assert "model.layers.{0..1}.self_attn.q_proj" in message


def test_typo_gets_a_suggestion():
    inventory = catalog_inventory(TINY_CONFIGS["llama"])
    with pytest.raises(ModuleResolutionError, match=r"did you mean: .*q_proj"):
        resolve_module_set(inventory, ["q_prj"])


def test_raw_names_resolve_by_suffix():
    inventory = catalog_inventory(TINY_CONFIGS["llama"])
    resolution = resolve_module_set(inventory, ["q_proj", "v_proj"])
    assert _leaves(resolution.target_modules) == {"self_attn.q_proj", "self_attn.v_proj"}


def test_unknown_architecture_is_reported():
    with pytest.raises(UnsupportedModel, match="'rwkv' is not in the module catalog"):
        catalog_inventory({"model_type": "rwkv", "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1})


def test_module_set_identity_and_labels():
    assert canonical_module_set(["fc2", "o_proj"]) == canonical_module_set(["o_proj", "fc2"]) == ("o_proj", "fc2")
    assert canonical_module_set(["attn", "mlp"]) == ("all",)
    assert module_set_label(["fc2", "o_proj"]) == "o_proj+fc2"
    assert module_set_label([]) == "base"


def test_compress_names():
    names = [f"m.layers.{i}.q" for i in range(4)] + ["m.layers.0.k", "m.layers.2.k", "lm_head"]
    assert compress_names(names) == ["m.layers.{0..3}.q", "m.layers.{0,2}.k", "lm_head"]
