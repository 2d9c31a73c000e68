"""`lora-ablation suggest`: the scaffold follows seed 002's builder and seed 000's findings, validates, plans,
and trips none of the guardrails."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from lora_ablation.api import parse_ablation
from lora_ablation.modules.known_models import KNOWN_MODEL_CONFIGS
from lora_ablation.planning.guardrails import DataSize, check
from lora_ablation.planning.plan import plan_trials
from lora_ablation.planning.suggest import TASKS, build, render, suggested_rank

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.mark.parametrize(("task", "examples", "rank"), [
    ("classification", 500, 8), ("classification", 5_000, 8), ("classification", 50_000, 16),
    ("reasoning", 500, 8), ("reasoning", 5_000, 16), ("reasoning", 50_000, 32),
])  # fmt: skip
def test_rank_follows_seed_002s_builder(task, examples, rank):
    assert suggested_rank(task, examples) == rank


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("examples", [400, 4_000, 40_000])
def test_every_suggestion_validates_plans_and_trips_no_guardrail(task, examples):
    suggestion = build(LLAMA, task, examples, 80, dict(KNOWN_MODEL_CONFIGS[LLAMA]))
    ablation = parse_ablation(yaml.safe_load(render(suggestion)))
    spec = ablation.spec
    assert spec.search.module_sets[:2] == [["o_proj"], ["o_proj", "fc2"]], "seed 000: o_proj first, then +fc2"
    assert spec.search.seeds == [1, 2, 3] and spec.search.alpha_over_rank == 1
    assert str(spec.search.variants[0]) == ("rslora" if spec.search.ranks[0] >= 16 else "lora")
    plan = plan_trials(ablation.metadata.name, "default", spec)
    assert len(plan.trials) == 1 + len(spec.search.module_sets) * 3
    assert check(spec, {"task": DataSize(examples)}) == []
    assert all(p > 0 for p in suggestion.params.values()) and len(suggestion.params) == len(spec.search.module_sets)


def test_bad_flags_name_the_flag():
    with pytest.raises(ValueError, match="--task poetry"):
        build(LLAMA, "poetry", 10)
    with pytest.raises(ValueError, match="--train-examples 0"):
        build(LLAMA, "generation", 0)
    with pytest.raises(ValueError, match="--gpu-memory -1"):
        build(LLAMA, "generation", 10, -1)


def test_a_model_too_big_for_the_gpu_is_noted():
    suggestion = build("meta-llama/Llama-3.1-70B-Instruct", "generation", 5_000, 80,
                       dict(KNOWN_MODEL_CONFIGS["meta-llama/Llama-3.1-70B-Instruct"]))  # fmt: skip
    assert any("weights alone need" in note for note in suggestion.notes)
    assert "# NOTE: the bf16 weights alone need" in render(suggestion)


def test_the_command_scaffolds_from_a_config_json_and_the_result_plans(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(KNOWN_MODEL_CONFIGS["Qwen/Qwen2.5-0.5B-Instruct"]))
    cli = [sys.executable, "-m", "lora_ablation.cli"]
    made = subprocess.run([*cli, "suggest", "--model", str(model / "config.json"), "--task", "extraction",
                           "--train-examples", "3000", "--name", "extract"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert f"uri: file://{model}" in made.stdout and "metric: json_kv_match" in made.stdout
    path = tmp_path / "study.yaml"
    path.write_text(made.stdout)
    plan = subprocess.run([*cli, "plan", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert plan.returncode == 0, plan.stderr
    assert "10 trials for default/extract; modules resolved by the catalog" in plan.stdout
    assert "guardrail" not in plan.stdout
    bad = subprocess.run([*cli, "suggest", "--model", "x/y", "--task", "generation", "--train-examples", "-3"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "--train-examples -3" in bad.stderr
