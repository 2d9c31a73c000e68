"""Plan-time guardrails: each rule fires on a spec built to break it, names its field and source, and never
blocks; `plan` and `validate` print them."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from conftest import ROOT, minimal_manifest
from lora_ablation.api import parse_ablation
from lora_ablation.planning.guardrails import DataSize, check, local_data_size

RULES = {"attention-only", "dora", "lr-across-ranks", "lr-range", "rank-vs-data", "params-vs-tokens"}


def spec(**overrides):
    return parse_ablation(minimal_manifest(**overrides)).spec


def rules(found):
    return sorted(g.rule for g in found)


def test_a_sound_spec_raises_nothing():
    good = spec(search={"moduleSets": [["o_proj"], ["o_proj", "fc2"]], "ranks": [16]})
    assert check(good, {"med": DataSize(20_000, 2_000_000)}, {"o_proj r16 lora": 4_000_000}) == []


def test_each_rule_fires_on_a_spec_built_to_break_it():
    assert rules(check(spec(search={"moduleSets": [["qkv"], ["o_proj"], ["attn"]]}))) == ["attention-only"]
    assert rules(check(spec(search={"moduleSets": [["o_proj", "fc2"]], "variants": ["dora"]}))) == ["dora"]
    sweep = spec(search={"moduleSets": [["o_proj", "fc2"]], "ranks": [8, 64]})
    (across,) = check(sweep)
    assert across.rule == "lr-across-ranks" and across.field == "spec.training.learningRate"
    assert "8x lower learning rate" in across.message and "seed 002" in across.source
    assert check(spec(search={"moduleSets": [["o_proj", "fc2"]], "ranks": [8, 64], "variants": ["rslora"]})) == []
    for rate, side in ((5e-6, "below"), (1e-2, "above")):
        (lr,) = check(spec(training={"learningRate": rate}))
        assert lr.rule == "lr-range" and f"far {side}" in lr.message and "10x full fine-tuning" in lr.message
    big = spec(search={"moduleSets": [["o_proj", "fc2"]], "ranks": [64]})
    (rank,) = check(big, {"med": DataSize(500)})
    assert rank.field == "spec.search.ranks" and "r <= 8" in rank.message and "500 training examples" in rank.message


def test_parameters_far_above_or_below_the_completion_tokens():
    above = check(spec(), {"med": DataSize(20_000, 100_000)}, {"all r16 lora": 42_000_000, "o_proj r16 lora": 4_000})
    assert rules(above) == ["params-vs-tokens"] and "more than 10x the tokens" in above[0].message
    below = check(spec(), {"med": DataSize(20_000, 10_000_000_000)}, {"o_proj r16 lora": 4_000_000})
    assert rules(below) == ["params-vs-tokens"] and "capacity-bound" in below[0].message


def test_local_data_size_counts_examples_and_estimates_completion_tokens(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"prompt": "q", "completion": "x" * 40}) + "\n" for _ in range(30)))
    assert local_data_size(path, "prompt-completion") == DataSize(30, 300)
    assert local_data_size(path, "prompt-completion", limit=10) == DataSize(10, 100)
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "y" * 8}]}) + "\n")  # fmt: skip
    assert local_data_size(chat, "chat") == DataSize(1, 2)
    assert local_data_size(tmp_path / "absent.jsonl", "chat") is None


def test_plan_and_validate_print_every_guardrail_and_still_succeed(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"prompt": "q", "completion": "x" * 40}) + "\n" for _ in range(300)))
    manifest = minimal_manifest(
        search={"moduleSets": [["qkv"], ["o_proj"]], "ranks": [8, 64], "variants": ["lora", "dora"]},
        training={"learningRate": 0.05},
    )
    manifest["spec"]["datasets"][0].update(train=f"file://{train}", format="prompt-completion")
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(manifest))
    command = [sys.executable, "-m", "lora_ablation.cli"]
    plan = subprocess.run([*command, "plan", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert plan.returncode == 0, plan.stderr
    printed = [line for line in plan.stdout.splitlines() if line.startswith("warning: ")]
    assert "6 guardrail warning(s)" in plan.stdout and len(printed) == 6
    fields = {"spec.search.moduleSets", "spec.search.variants", "spec.training.learningRate", "spec.search.ranks",
              "spec.search"}  # fmt: skip
    assert {line.split(": ", 2)[1] for line in printed} == fields
    assert all(line.endswith("]") and ("seed 00" in line or "issue #14" in line) for line in printed)
    as_json = subprocess.run([*command, "plan", str(path), "-o", "json"], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)  # fmt: skip
    assert {w["rule"] for w in json.loads(as_json.stdout)["warnings"]} == RULES
    validate = subprocess.run([*command, "validate", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert validate.returncode == 0 and "is valid" in validate.stdout
    # validate does not inspect the model, so the parameter rule needs `plan`; the others are printed.
    assert sum(line.startswith("warning: ") for line in validate.stdout.splitlines()) == 5
