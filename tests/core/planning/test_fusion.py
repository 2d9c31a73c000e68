"""Which trials of a Job train together (execution.fusedTraining): the grouping rules the trainer and `plan` share,
the group size the declared GPU memory allows, and what the Job hands the trainer."""

from __future__ import annotations

import json

import pytest

from conftest import minimal_manifest
from lora_ablation.api import parse_spec
from lora_ablation.api.contract import TRIALS_ENV
from lora_ablation.api.trial import TrialBatch
from lora_ablation.modules.inventory import catalog_inventory
from lora_ablation.modules.model_config import known_model_config
from lora_ablation.planning import fusion
from lora_ablation.planning.memory import FIT_FRACTION, GIB, plan_memory
from lora_ablation.planning.plan import plan_trials
from lora_ablation.run.schedule import describe, round_one_units

SETS = [["o_proj"], ["o_proj", "fc2"], ["qkv"], ["all"]]
TRAINING = {"batchSize": 2, "maxSeqLength": 1024, "gradientCheckpointing": True}
QWEN = "hf://Qwen/Qwen2.5-0.5B-Instruct"


def planned(per_pod: int = 8, gpus: int = 1, gpu_memory: str | None = "24Gi", variants=("lora",), **execution):
    resources = {"gpus": gpus, **({"gpuMemory": gpu_memory} if gpu_memory else {})}
    search = {"moduleSets": SETS, "ranks": [8, 16], "variants": list(variants)}
    manifest = minimal_manifest(baseModel={"uri": QWEN}, search=search,
                                training=TRAINING, execution={"resources": resources, "trialsPerPod": per_pod,
                                                              **execution})  # fmt: skip
    spec = parse_spec(manifest["spec"])
    return spec, plan_trials("demo", "ns", spec)


def test_the_baseline_dora_and_raw_parameter_adapters_train_alone_and_groups_keep_their_limit():
    _, plan = planned(variants=("lora", "dora", "rslora"))
    specs = [t.spec for t in plan.trials]
    groups = fusion.groups(specs, limit=5)
    alone = [specs[g[0]] for g in groups if fusion.unfusable(specs[g[0]])]
    assert {s.variant for s in alone} == {"none", "dora"} and len(alone) == 1 + len(SETS) * 2
    fused = [[specs[i].variant for i in g] for g in groups if not fusion.unfusable(specs[g[0]])]
    assert [len(g) for g in fused] == [5, 5, 5, 1]  # 16 lora and rslora trials, 5 at a time, in plan order
    assert all(len(g) <= 5 for g in groups) and sorted(i for g in groups for i in g) == list(range(len(specs)))
    moe = specs[1].model_copy(update={"target_parameters": ["mlp.experts.gate_up_proj"]})
    assert fusion.unfusable(moe) == "adapters on raw parameters (MoE experts) train alone"
    assert fusion.groups(specs, limit=1) == [[i] for i in range(len(specs))]


def test_trials_that_differ_in_what_the_shared_forward_needs_are_not_grouped():
    _, plan = planned()
    lora = [t.spec for t in plan.trials if not t.spec.is_baseline][:3]
    longer = lora[2].model_copy(update={"training": lora[2].training.model_copy(update={"max_seq_length": 4096})})
    reseeded = lora[1].model_copy(update={"training": lora[1].training.model_copy(update={"seed": 7})})
    assert fusion.groups([lora[0], reseeded, longer], limit=8) == [[0, 1], [2]]  # a seed differs freely


def test_the_group_size_stays_within_the_declared_gpu_memory():
    spec, plan = planned(per_pod=8)
    limit, note = fusion.group_limit(spec, plan)
    config = known_model_config(spec.base_model.uri)
    estimates = plan_memory(plan, catalog_inventory(config), config, spec.execution).estimates
    largest = sorted((estimates[t.name] for t in plan.trials if not t.spec.is_baseline), key=lambda e: e.total,
                     reverse=True)  # fmt: skip
    assert 1 < limit < 8, note
    assert fusion.fused_estimate(largest[:limit]).total <= FIT_FRACTION * 24 * GIB
    assert fusion.fused_estimate(largest[: limit + 1]).total > FIT_FRACTION * 24 * GIB
    assert note.startswith(f"up to {limit} adapters per pass over the base: more than {limit} of the largest")
    bigger, _ = fusion.group_limit(*planned(per_pod=8, gpu_memory="141Gi"))
    assert bigger > limit


@pytest.mark.parametrize(("kwargs", "limit", "why"), [
    ({"fusedTraining": False}, 1, "execution.fusedTraining is false"),
    ({"gpus": 2, "sharding": "fsdp"}, 1, "shard with FSDP over execution.resources.gpus"),
    ({"gpus": 2, "gpu_memory": None}, 8, "on each of 2 GPUs (data parallel) (no GPU memory to check against)"),
    ({"gpus": 0, "gpu_memory": None}, 8, "no GPU memory to check against"),
    ({"gpu_memory": None}, 8, "no GPU memory to check against"),
    ({"per_pod": 1}, 1, ""),
])  # fmt: skip
def test_fusion_is_off_or_unbounded_where_the_spec_says_so(kwargs, limit, why):
    got, note = fusion.group_limit(*planned(**kwargs))
    assert got == limit and why in note


def test_data_parallel_gpus_fuse_within_one_gpus_memory_and_fsdp_trials_train_alone():
    """Data parallel, each GPU holds the base and the group's adapters and runs its share of their micro-batches:
    the group size is what one GPU holds. A trial FSDP shards has no layer output rows to split."""
    one, _ = fusion.group_limit(*planned(per_pod=8, gpus=1))
    two, note = fusion.group_limit(*planned(per_pod=8, gpus=2))
    assert two == one > 1 and f"up to {two} adapters per pass over the base on each of 2 GPUs (data parallel)" in note
    _, sharded = planned(per_pod=8, gpus=2, sharding="fsdp")
    trained = [t.spec for t in sharded.trials if not t.spec.is_baseline]
    assert fusion.unfusable(trained[0]) == ("sharded with FSDP: it trains alone (fused training is data-parallel "
                                            "across GPUs)")
    assert fusion.groups(trained, limit=8) == [[i] for i in range(len(trained))]


def test_the_job_hands_the_trainer_its_group_size_and_plan_says_which_trials_fuse():
    spec, plan = planned(per_pod=4, gpu_memory=None)
    unit = round_one_units("demo", plan, spec)[0]
    env, payload = unit.payload(spec)
    assert env == TRIALS_ENV and json.loads(payload)["fusedGroupSize"] == 4
    assert TrialBatch.model_validate_json(payload).fused_group_size == 4
    lines = describe("demo", plan, spec)
    assert "Fused training: up to 4 adapters per pass over the base (no GPU memory to check against)." in lines
    assert any("trained alone: demo-med-base-" in line and "(the baseline trains nothing)" in line for line in lines)
    assert any(": trained together (3 adapters, one pass over the base): " in line for line in lines)
    off, off_plan = planned(per_pod=4, gpu_memory=None, fusedTraining=False)
    env, payload = round_one_units("demo", off_plan, off)[0].payload(off)
    assert json.loads(payload).get("fusedGroupSize", 1) == 1
