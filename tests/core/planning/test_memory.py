"""The per-trial GPU memory estimate, the GPU's memory from the spec, and the warnings plan and operator give."""

from __future__ import annotations

import json

import pytest

from conftest import minimal_manifest
from lora_ablation.api.resource import parse_spec
from lora_ablation.modules.inventory import catalog_inventory
from lora_ablation.modules.model_config import known_model_config
from lora_ablation.planning.memory import GIB, gpu_memory, offline_memory_warnings, parse_quantity, plan_memory
from lora_ablation.planning.plan import plan_trials

LLAMA_8B = "hf://meta-llama/Llama-3.1-8B-Instruct"


def estimates(**spec_overrides) -> dict[str, object]:
    """Config label -> estimate for the first dataset's trials of a Llama 3.1 8B ablation."""
    spec = parse_spec(minimal_manifest(**spec_overrides)["spec"])
    config = known_model_config(spec.base_model.uri)
    plan = plan_trials("demo", "ns", spec)
    report = plan_memory(plan, catalog_inventory(config), config, spec.execution)
    return {t.label: report.estimates[t.name] for t in plan.trials}


def test_the_estimate_adds_up_for_an_8b_model_in_bfloat16():
    found = estimates(training={"batchSize": 1, "maxSeqLength": 2048})
    base, adapter = found["base"], found["o_proj r16 lora"]
    assert 14.5 * GIB < base.weights < 15.5 * GIB  # 8.0B parameters x 2 bytes
    assert base.adapter == 0 and base.logits == 0  # the baseline trains nothing
    assert adapter.adapter == 16 * 4096 * 16 * 2 * 32  # o_proj r16: (in + out) x r x 32 layers, x 16 bytes
    assert adapter.total == adapter.weights + adapter.adapter + adapter.activations + adapter.logits + adapter.overhead
    assert adapter.logits == 2048 * 128256 * 14


def test_checkpointing_length_and_quantization_move_the_right_terms():
    plain = estimates(training={"batchSize": 1, "maxSeqLength": 4096})["o_proj r16 lora"]
    longer = estimates(training={"batchSize": 1, "maxSeqLength": 8192})["o_proj r16 lora"]
    checkpointed = estimates(training={"batchSize": 1, "maxSeqLength": 4096, "gradientCheckpointing": True})
    nf4 = estimates(baseModel={"uri": LLAMA_8B, "quantization": "nf4"})["o_proj r16 lora"]
    assert longer.activations == 2 * plain.activations and longer.logits == 2 * plain.logits
    assert checkpointed["o_proj r16 lora"].activations < plain.activations / 5
    assert nf4.weights < 0.5 * plain.weights  # 4-bit layers; embeddings and head stay (float32) unquantized
    more_modules = estimates(training={"batchSize": 1, "maxSeqLength": 4096})["o_proj+fc2 r16 lora"]
    assert more_modules.activations > plain.activations  # LoRA keeps each adapted module's (dropped-out) input


@pytest.mark.parametrize(
    ("field", "selector", "gib", "source"),
    [
        ("24Gi", None, 24, "execution.resources.gpuMemory 24Gi"),
        (None, {"nvidia.com/gpu.memory": "81559"}, 79.6, "nodeSelector nvidia.com/gpu.memory=81559"),
        (None, {"nvidia.com/gpu.product": "NVIDIA-L4"}, 24, "NVIDIA-L4 (24 GiB)"),
        (None, {"nvidia.com/gpu.product": "NVIDIA-L40S"}, 48, "NVIDIA-L40S (48 GiB)"),
        (None, {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}, 80, "(80 GiB)"),
        (None, {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"}, 40, "(40 GiB)"),
        (None, {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}, 16, "(16 GiB)"),
    ],
)
def test_gpu_memory_comes_from_the_field_or_the_node_selector(field, selector, gib, source):
    found, where = gpu_memory(field, selector)
    assert found == pytest.approx(gib * GIB, rel=1e-3) and source in where


def test_unknown_gpu_memory_says_which_field_to_set():
    assert gpu_memory(None, {"kubernetes.io/arch": "amd64"}) == (
        None,
        "GPU memory unknown: set execution.resources.gpuMemory (e.g. 24Gi) to check that trials fit",
    )
    assert parse_quantity("80G") == 80 * 10**9 and parse_quantity("512Mi") == 512 * 1024**2
    assert parse_quantity("8e10") == 8 * 10**10 and parse_quantity("+1.5Gi") == 3 * 2**29
    # The CRD's quantity pattern admits odd values; they make the memory unknown, never an error.
    for odd in ("500m", "7", "1e-3"):
        assert gpu_memory(odd, None) == (
            None,
            f"execution.resources.gpuMemory {odd} is not a GPU memory size such as 24Gi",
        )


def test_a_trial_that_cannot_fit_is_named_with_what_to_change():
    spec = parse_spec(minimal_manifest(execution={"resources": {"gpuMemory": "24Gi"}},
                                       training={"batchSize": 4, "maxSeqLength": 4096})["spec"])  # fmt: skip
    (first, second) = offline_memory_warnings(spec, plan_trials("demo", "ns", spec))
    assert first.startswith("o_proj r16 lora: needs about ") and "but the GPU has 24 GiB" in first
    assert "set training.gradientCheckpointing: true" in first and "set baseModel.quantization: nf4" in first
    assert second.startswith("o_proj+fc2 r16 lora: ")
    roomy = parse_spec(minimal_manifest(execution={"resources": {"gpuMemory": "141Gi"}},
                                        training={"batchSize": 1, "maxSeqLength": 2048})["spec"])  # fmt: skip
    assert offline_memory_warnings(roomy, plan_trials("demo", "ns", roomy)) == []


def test_models_outside_the_built_in_table_are_not_estimated_by_the_operator():
    spec = parse_spec(minimal_manifest(baseModel={"uri": "s3://models/llama/"},
                                       execution={"resources": {"gpuMemory": "1Gi"}})["spec"])  # fmt: skip
    assert offline_memory_warnings(spec, plan_trials("demo", "ns", spec)) == []


def test_plan_prints_estimates_and_warnings(tmp_path):
    import os
    import subprocess
    import sys

    import yaml

    manifest = minimal_manifest(execution={"resources": {"gpuMemory": "24Gi"}}, training={"maxSeqLength": 4096})
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump(manifest))
    command = [sys.executable, "-m", "lora_ablation.cli", "plan", str(path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    table = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert table.returncode == 0, table.stderr
    assert "Memory: estimated peak per GPU; 24 GiB per GPU (execution.resources.gpuMemory 24Gi)." in table.stdout
    assert table.stdout.count("WARNING: ") == 2 and "WARNING: o_proj r16 lora: needs about" in table.stdout
    as_json = json.loads(subprocess.run([*command, "-o", "json"], capture_output=True, text=True, timeout=120,
                                        env=env).stdout)  # fmt: skip
    assert as_json["gpuMemoryBytes"] == 24 * GIB and len(as_json["memoryWarnings"]) == 2
    assert all(t["estimatedMemoryBytes"] > 15 * GIB for t in as_json["trials"])
