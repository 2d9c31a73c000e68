"""How a trial spreads over its pod's GPUs: execution.sharding, the planner's decision per trial, and what
`lora-ablation plan` says about it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from conftest import minimal_manifest
from lora_ablation.api import SpecError, parse_spec
from lora_ablation.modules.inventory import catalog_inventory
from lora_ablation.modules.model_config import known_model_config
from lora_ablation.planning.memory import FIT_FRACTION, GIB, plan_memory
from lora_ablation.planning.plan import plan_trials
from lora_ablation.planning.sharding import decide, sharded_estimate

LLAMA_70B = "hf://meta-llama/Llama-3.1-70B-Instruct"
LONG = {"batchSize": 1, "maxSeqLength": 2048, "gradientCheckpointing": True}


def planned(gpus: int, gpu_memory: str | None = "80Gi", uri: str = LLAMA_70B, sharding: str | None = None, **spec):
    resources = {"gpus": gpus, **({"gpuMemory": gpu_memory} if gpu_memory else {})}
    execution = {"resources": resources, **({"sharding": sharding} if sharding else {})}
    parsed = parse_spec(minimal_manifest(baseModel={"uri": uri}, training=LONG, execution=execution, **spec)["spec"])
    return parsed, plan_trials("demo", "ns", parsed)


def modes(plan) -> dict[str, str]:
    return {t.label: t.spec.sharding or "none" for t in plan.trials}


def test_auto_shards_a_70b_model_that_does_not_fit_one_80gib_gpu():
    _, plan = planned(gpus=8)
    assert modes(plan) == {"base": "none", "o_proj r16 lora": "fsdp", "o_proj+fc2 r16 lora": "fsdp"}
    decision = plan.sharding[plan.trials[1].name]
    assert decision.describe() == "sharded (FSDP) on 8 GPUs"
    assert decision.reason.startswith("needs about 153.9 GiB per GPU unsharded, more than one 80 GiB GPU; sharded")


def test_auto_keeps_data_parallel_when_the_trial_fits_one_gpu():
    _, plan = planned(gpus=8, uri="hf://meta-llama/Llama-3.1-8B-Instruct")
    assert set(modes(plan).values()) == {"none"}
    decision = plan.sharding[plan.trials[1].name]
    assert decision.describe() == "data-parallel on 8 GPUs" and "fits one 80 GiB GPU" in decision.reason


@pytest.mark.parametrize(
    ("gpus", "gpu_memory", "why"),
    [
        (1, "80Gi", "execution.resources.gpus is 1"),  # nothing to shard across
        (8, None, "GPU memory unknown"),  # no figure to compare with: never guess
    ],
)
def test_auto_does_not_shard_without_several_gpus_or_a_known_gpu_size(gpus, gpu_memory, why):
    _, plan = planned(gpus=gpus, gpu_memory=gpu_memory)
    assert set(modes(plan).values()) == {"none"}
    assert why in plan.sharding[plan.trials[1].name].reason


def test_explicit_modes_win_over_the_estimate():
    _, plan = planned(gpus=8, sharding="none")
    assert set(modes(plan).values()) == {"none"}
    _, plan = planned(gpus=2, uri="hf://meta-llama/Llama-3.1-8B-Instruct", sharding="fsdp")
    assert modes(plan) == {"base": "none", "o_proj r16 lora": "fsdp", "o_proj+fc2 r16 lora": "fsdp"}
    assert plan.sharding[plan.trials[1].name].reason.startswith("execution.sharding fsdp (needs about")


def test_unsharded_trials_carry_no_sharding_field():  # their Job's trial JSON is what it was before sharding
    _, plan = planned(gpus=8)
    assert "sharding" not in plan.trials[0].spec.to_wire() and plan.trials[1].spec.to_wire()["sharding"] == "fsdp"


def test_sharding_keeps_trial_names():
    names = {sharding: planned(gpus=8, sharding=sharding)[1].names for sharding in ("none", "fsdp", "auto")}
    assert names["none"] == names["fsdp"] == names["auto"]
    assert planned(gpus=1)[1].names == names["none"]  # and so does the number of GPUs


def test_the_sharded_estimate_splits_weights_and_adapter_state_but_not_activations():
    spec, plan = planned(gpus=8)
    config = known_model_config(LLAMA_70B)
    inventory = catalog_inventory(config)
    trial = plan.trials[1]
    full = plan_memory(plan, inventory, config, spec.execution).estimates[trial.name]
    layer = int(sum(w.in_features * w.out_features for w in inventory.weights) * 2 / inventory.layers)
    sharded = sharded_estimate(full, 8, layer)
    assert sharded.weights == int(full.weights / 8 + 2 * layer) and sharded.adapter == int(full.adapter / 8)
    assert (sharded.activations, sharded.logits) == (full.activations, full.logits)
    assert full.total > FIT_FRACTION * 80 * GIB > sharded.total


def test_a_trial_too_big_even_sharded_or_for_one_gpu_at_eval_is_warned_about():
    _, plan = planned(gpus=2)  # 70B: 131 GiB of weights over two 80 GiB GPUs
    decision = plan.sharding[plan.trials[1].name]
    assert decision.mode == "fsdp" and decision.warning.startswith("even sharded over 2 GPUs a trial needs about")
    _, plan = planned(gpus=8)  # trains sharded, but rank 0 evaluates unsharded
    assert "evaluation and latency run unsharded on one GPU" in plan.sharding[plan.trials[1].name].warning


def test_decide_is_pure_on_its_inputs():
    spec, plan = planned(gpus=4)
    trial = plan.trials[1].spec
    assert decide(spec.execution, trial, None, 80 * GIB, "x").reason.startswith("memory not estimated")
    assert decide(spec.execution, trial, None, 80 * GIB, "x") == decide(spec.execution, trial, None, 80 * GIB, "x")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"execution": {"sharding": "fsdp"}},
         "execution.sharding fsdp shards a trial across the GPUs of its pod and needs execution.resources.gpus >= 2 "
         "(now 1)"),
        ({"execution": {"sharding": "fsdp", "resources": {"gpus": 4}}, "baseModel": {"uri": LLAMA_70B,
                                                                                      "quantization": "nf4"}},
         "execution.sharding fsdp needs baseModel.quantization none"),
        ({"execution": {"sharding": "zero3"}}, "spec.execution.sharding"),
    ],
)  # fmt: skip
def test_invalid_sharding_is_a_clear_error(spec, message):
    with pytest.raises(SpecError) as caught:
        parse_spec(minimal_manifest(**spec)["spec"])
    assert message in "; ".join(caught.value.problems)


def test_plan_prints_how_each_trial_runs_and_why(tmp_path):
    manifest = minimal_manifest(baseModel={"uri": LLAMA_70B}, training=LONG,
                                execution={"resources": {"gpus": 8, "gpuMemory": "80Gi"}})  # fmt: skip
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(manifest))
    command = [sys.executable, "-m", "lora_ablation.cli", "plan", str(path)]
    text = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert "Runs on one GPU (the baseline trains nothing; rank 0 evaluates it on one of 8 GPUs): base." in text
    assert "Runs sharded (FSDP) on 8 GPUs (needs about 153.9 GiB per GPU unsharded, more than one 80 GiB GPU" in text
    assert "WARNING: o_proj r16 lora: needs about" not in text  # the one-GPU warning is not given for a sharded trial
    out = json.loads(subprocess.run([*command, "-o", "json"], capture_output=True, text=True, check=True).stdout)
    trial = out["trials"][1]
    assert trial["sharding"] == "fsdp" and trial["runs"].startswith("sharded (FSDP) on 8 GPUs: needs about")
