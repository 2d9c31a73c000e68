"""The real module tree (meta device) agrees with the catalog, and PEFT wraps exactly what we resolve."""

from __future__ import annotations

import time

import pytest

from tiny_models import EXPECTED_GROUPS, OUTSIDE_CATALOG, TINY_CONFIGS

torch = pytest.importorskip("torch", reason="needs the trainer extra")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from lora_ablation.modules.inventory import ModuleResolutionError, catalog_inventory, resolve_module_set  # noqa: E402
from lora_ablation_trainer.module_tree import load_config, tree_inventory  # noqa: E402

pytestmark = pytest.mark.trainer


def _signature(inventory):
    return sorted((w.name, w.in_features, w.out_features, w.kind, w.experts) for w in inventory.language_weights())


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_module_tree_agrees_with_catalog(family):
    tree = tree_inventory(TINY_CONFIGS[family])
    catalog = catalog_inventory(TINY_CONFIGS[family])
    assert tree.source == "module tree" and catalog.source == "catalog"
    assert tree.layers_path == catalog.layers_path
    assert tree.layers == catalog.layers == 2
    assert _signature(tree) == _signature(catalog)
    for group in ("qkv", "o_proj", "fc1", "fc2", "all"):
        from_tree = resolve_module_set(tree, [group])
        from_catalog = resolve_module_set(catalog, [group])
        assert from_tree.target_modules == from_catalog.target_modules
        assert from_tree.target_parameters == from_catalog.target_parameters
        assert from_tree.lora_params(8) == from_catalog.lora_params(8)


@pytest.mark.parametrize("family", ["llama", "phi3", "phi", "gpt_neox", "gpt2", "mpt", "falcon", "llava", "mixtral"])
def test_peft_wraps_exactly_the_resolved_weights(family, tmp_path):
    """Save a real tiny model, load it with from_pretrained as users do, and let PEFT count."""
    config = load_config(TINY_CONFIGS[family])
    model_class = transformers.AutoModelForImageTextToText if family == "llava" else transformers.AutoModelForCausalLM
    torch.manual_seed(0)
    model_class.from_config(config).save_pretrained(tmp_path)
    inventory = tree_inventory(tmp_path)  # resolved from config.json on disk, no weights read
    resolution = resolve_module_set(inventory, ["o_proj", "fc2"] if family != "mixtral" else ["qkv", "fc2"])
    model = model_class.from_pretrained(tmp_path)
    peft_config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=resolution.target_modules or None,
        target_parameters=resolution.target_parameters or None,
        fan_in_fan_out=family == "gpt2",  # GPT-2's Conv1D stores weights transposed
    )
    wrapped = peft.get_peft_model(model, peft_config)
    assert sorted(wrapped.targeted_module_names) == sorted(resolution.target_modules)
    assert sorted(getattr(wrapped, "targeted_parameter_names", [])) == sorted(resolution.target_parameters)
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    assert trainable == resolution.lora_params(4)


def test_expected_group_names_on_the_real_tree():
    for family, groups in EXPECTED_GROUPS.items():
        inventory = tree_inventory(TINY_CONFIGS[family])
        for group, leaves in groups.items():
            names = resolve_module_set(inventory, [group]).target_modules
            assert len(names) == 2 * len(leaves), (family, group, names)
            assert {".".join(n.split(".")[-2:]) for n in names} == leaves, (family, group)


def test_vision_tower_is_never_selected_even_by_raw_name():
    inventory = tree_inventory(TINY_CONFIGS["llava"])
    # fc1 exists only in the CLIP vision tower; the language model has no such module.
    with pytest.raises(ModuleResolutionError, match=r"'mlp\.fc1' matches no weight in the language model"):
        resolve_module_set(inventory, ["mlp.fc1"])
    vision = [w.name for w in inventory.weights if "vision_tower" in w.name]
    assert vision, "the tree does contain vision modules; resolution must skip them"


def test_large_model_resolves_on_meta_device_without_memory():
    """A Llama-3.1-70B-shaped config builds on the meta device in seconds; its sizes match the catalog."""
    from lora_ablation.modules.known_models import KNOWN_MODEL_CONFIGS

    config = KNOWN_MODEL_CONFIGS["meta-llama/Llama-3.1-70B-Instruct"]
    started = time.perf_counter()
    tree = tree_inventory(config)
    elapsed = time.perf_counter() - started
    assert tree.layers == 80
    assert _signature(tree) == _signature(catalog_inventory(config))
    print(f"70B module tree on meta device: {elapsed:.1f}s")


def test_unknown_model_type_falls_back_to_layout_matching():
    """starcoder2 is not in the catalog: raw names still resolve on the real tree; groups say why not."""
    config = OUTSIDE_CATALOG
    inventory = tree_inventory(config)
    assert inventory.family is None
    assert len(resolve_module_set(inventory, ["o_proj"]).target_modules) == 2  # raw name on this model
    with pytest.raises(ModuleResolutionError, match="not in the catalog"):
        resolve_module_set(inventory, ["fc1"])
