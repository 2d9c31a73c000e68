"""The planner: the grid, deterministic names, baselines, and failure before any trial exists."""

from __future__ import annotations

import copy

import pytest

from conftest import minimal_manifest
from lora_ablation.api import parse_ablation
from lora_ablation.api.base import DNS1123_LABEL
from lora_ablation.modules.inventory import ModuleResolutionError, catalog_inventory
from lora_ablation.modules.known_models import KNOWN_MODEL_CONFIGS
from lora_ablation.planning.plan import plan_trials
from tiny_models import TINY_CONFIGS

LLAMA = catalog_inventory(KNOWN_MODEL_CONFIGS["meta-llama/Llama-3.1-8B-Instruct"])


def _plan(manifest, inventory=LLAMA):
    ablation = parse_ablation(manifest)
    return plan_trials(ablation.metadata.name, ablation.metadata.namespace, ablation.spec, inventory)


def test_module_study_is_datasets_times_configs_plus_baselines(module_study):
    plan = _plan(module_study)
    assert len(plan.trials) == 4 * (9 + 1)
    baselines = [t for t in plan.trials if t.spec.is_baseline]
    assert [t.spec.dataset.name for t in baselines] == ["medmcqa", "fincot", "govreport", "cocohd"]
    assert all(t.estimated_params == 0 and t.spec.target_modules is None for t in baselines)
    lora = [t for t in plan.trials if not t.spec.is_baseline]
    assert all(t.spec.target_modules and t.estimated_params for t in lora)
    assert {t.spec.alpha for t in lora} == {32.0}


def test_grid_order_is_dataset_then_module_set_then_rank_then_variant():
    manifest = minimal_manifest(
        search={"moduleSets": [["o_proj"], ["fc2"]], "ranks": [4, 8], "variants": ["lora", "dora"]}
    )
    plan = _plan(manifest)
    got = [(t.spec.modules, t.spec.rank, t.spec.variant) for t in plan.trials]
    assert got == [
        ([], 0, "none"),
        (["o_proj"], 4, "lora"),
        (["o_proj"], 4, "dora"),
        (["o_proj"], 8, "lora"),
        (["o_proj"], 8, "dora"),
        (["fc2"], 4, "lora"),
        (["fc2"], 4, "dora"),
        (["fc2"], 8, "lora"),
        (["fc2"], 8, "dora"),
    ]


def test_names_are_dns_labels_unique_and_stable():
    manifest = minimal_manifest(
        search={"moduleSets": [["qkv", "o_proj", "fc1", "fc2"], ["o_proj"]], "ranks": [8, 4096]}
    )
    manifest["metadata"]["name"] = "a" * 40
    manifest["spec"]["datasets"][0]["name"] = "d" * 24
    first = _plan(manifest)
    assert all(len(n) <= 63 and DNS1123_LABEL.match(n) for n in first.names), first.names
    assert len(set(first.names)) == len(first.names)
    assert _plan(copy.deepcopy(manifest)).names == first.names


def test_unrelated_edits_keep_names_and_real_changes_rename():
    manifest = minimal_manifest(search={"moduleSets": [["o_proj", "fc2"]]})
    names = _plan(manifest).names
    edited = copy.deepcopy(manifest)
    edited["spec"]["execution"] = {"parallelism": 16, "suspend": True}
    edited["spec"]["selection"] = {"tolerance": 0.05}
    edited["spec"]["search"]["moduleSets"] = [["fc2", "o_proj"]]  # same set, other order
    assert _plan(edited).names == names
    edited["spec"]["training"] = {"learningRate": 1e-5}
    renamed = _plan(edited).names
    assert renamed[0] == names[0], "the baseline does not train, so the learning rate does not concern it"
    assert renamed[1] != names[1]


def test_a_4_bit_base_renames_every_trial_and_none_renames_nothing():
    manifest = minimal_manifest(search={"moduleSets": [["o_proj"]]})
    names = _plan(manifest).names
    manifest["spec"]["baseModel"]["quantization"] = "none"
    assert _plan(manifest).names == names  # results from before the field existed stay valid
    manifest["spec"]["baseModel"]["quantization"] = "nf4"
    quantized = _plan(manifest).names
    assert not set(quantized) & set(names), "the baseline, too, is scored and timed on the 4-bit base"


def test_adding_a_module_set_keeps_existing_trials():
    manifest = minimal_manifest(search={"moduleSets": [["o_proj"]]})
    before = set(_plan(manifest).names)
    manifest["spec"]["search"]["moduleSets"].append(["fc2"])
    after = set(_plan(manifest).names)
    assert before < after and len(after - before) == 1


def test_no_baseline_when_not_asked():
    plan = _plan(minimal_manifest(search={"moduleSets": [["o_proj"]], "includeBaseline": False}))
    assert [t.spec.variant for t in plan.trials] == ["lora"]


def test_trial_storage_follows_the_storage_contract():
    plan = _plan(minimal_manifest())
    trial = plan.trials[1]
    assert trial.spec.storage.uri == f"s3://results/ablations/default/demo/{trial.name}"


def test_unresolvable_group_fails_the_whole_plan():
    manifest = minimal_manifest(search={"moduleSets": [["o_proj"], ["c_fc"]]})
    with pytest.raises(ModuleResolutionError, match="'c_fc' matches no weight"):
        _plan(manifest)


def test_plan_without_model_inventory_leaves_modules_unresolved():
    plan = _plan(minimal_manifest(), inventory=None)
    assert plan.inventory_source is None
    assert all(t.estimated_params is None for t in plan.trials if not t.spec.is_baseline)


def test_plan_on_fused_architecture_uses_fused_names():
    plan = _plan(minimal_manifest(search={"moduleSets": [["qkv"]]}), inventory=catalog_inventory(TINY_CONFIGS["phi3"]))
    assert plan.trials[1].spec.target_modules == [
        "model.layers.0.self_attn.qkv_proj",
        "model.layers.1.self_attn.qkv_proj",
    ]


# Names main planned before search.seeds existed: the default single seed must keep every one of them (and so
# every cached result and running Job).
NAMES_BEFORE_SEEDS = [
    "demo-med-base-237fd544",
    "demo-med-o-proj-r4-lora-25fa3b25",
    "demo-med-o-proj-r8-lora-ad45f768",
    "demo-med-fc2-r4-lora-a18b59e3",
    "demo-med-fc2-r8-lora-33e31476",
]


def test_one_seed_keeps_the_names_trials_had_before_seeds():
    search = {"moduleSets": [["o_proj"], ["fc2"]], "ranks": [4, 8]}
    assert _plan(minimal_manifest(search=search)).names == NAMES_BEFORE_SEEDS
    assert _plan(minimal_manifest(search={**search, "seeds": [42]})).names == NAMES_BEFORE_SEEDS  # 42: training.seed


def test_gradient_checkpointing_changes_how_a_trial_runs_not_its_name():
    search = {"moduleSets": [["o_proj"], ["fc2"]], "ranks": [4, 8]}
    manifest = minimal_manifest(search=search)
    manifest["spec"]["training"] = {**manifest["spec"].get("training", {}), "gradientCheckpointing": True}
    assert _plan(manifest).names == NAMES_BEFORE_SEEDS  # same gradients: the results already stored still count


def test_seeds_multiply_the_trained_configurations_not_the_baseline():
    plan = _plan(minimal_manifest(search={"moduleSets": [["o_proj"], ["fc2"]], "seeds": [1, 2, 3]}))
    assert len(plan.trials) == 1 + 2 * 3
    trained = [t for t in plan.trials if not t.spec.is_baseline]
    assert [(t.label, t.seed, t.spec.training.seed) for t in trained[:3]] == [
        ("o_proj r16 lora", 1, 1),
        ("o_proj r16 lora", 2, 2),
        ("o_proj r16 lora", 3, 3),
    ]
    assert [t.name.rsplit("-", 2)[1] for t in trained] == ["s1", "s2", "s3"] * 2, "the seed is readable in the name"
    assert plan.trials[0].seed is None and plan.trials[0].name == NAMES_BEFORE_SEEDS[0]


def test_seeds_are_validated_and_counted_in_the_grid_limit():
    with pytest.raises(Exception, match=r"spec\.search\.seeds: seeds repeat a value"):
        parse_ablation(minimal_manifest(search={"moduleSets": [["o_proj"]], "seeds": [1, 1]}))
    with pytest.raises(Exception, match=r"spec\.search\.seeds\[0\]"):
        parse_ablation(minimal_manifest(search={"moduleSets": [["o_proj"]], "seeds": [-1]}))
    four_sets = [[m] for m in ("qkv", "o_proj", "fc1", "fc2")]
    many = minimal_manifest(search={"moduleSets": four_sets, "seeds": list(range(32))})
    many["spec"]["datasets"] = [{**many["spec"]["datasets"][0], "name": f"d{i}"} for i in range(40)]
    with pytest.raises(Exception, match="x seeds"):  # 40 x (4 x 32 + 1) = 5160 > 5000; without seeds, 200
        parse_ablation(many)
