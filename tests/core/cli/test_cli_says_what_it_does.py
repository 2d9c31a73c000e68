"""The CLI's answers match what it does: flags it refuses instead of replacing, plan columns that follow
search.layers, one spelling per module group and per ablation prefix, hints that fit a workstation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, minimal_manifest
from lora_ablation.api.resource import parse_spec
from lora_ablation.planning import guardrails
from lora_ablation.planning.plan import plan_trials


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lora_ablation.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def manifest_file(tmp_path: Path, **spec) -> str:
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(minimal_manifest(**spec)))
    return str(path)


@pytest.mark.parametrize("value", ["0", "-3", "two"])
def test_run_refuses_a_parallelism_below_one_naming_the_flag(tmp_path, value):
    result = run("run", manifest_file(tmp_path), "--parallel", value, "--logs", str(tmp_path / "logs"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "argument --parallel: expected" in result.stderr
    assert not (tmp_path / "logs").exists()  # refused before any trial


def test_plan_targets_and_json_target_modules_follow_search_layers(tmp_path):
    # Llama-3.1-8B: 32 layers; o_proj is one weight per layer, [mlp] three (gate, up, down).
    path = manifest_file(tmp_path, search={"moduleSets": [["o_proj"], ["mlp"]], "layers": ["all", "0-3"]})
    table = run("plan", path)
    assert table.returncode == 0, table.stderr
    targets = {line.split()[0]: line.split()[-2] for line in table.stdout.splitlines()[1:5]}
    by_config = {name.split("-med-")[1].rsplit("-", 1)[0]: count for name, count in targets.items()}
    assert by_config == {"base": "-", "o-proj-r16-lora": "32", "o-proj-r16-lora-l0-3": "4", "fc1-fc2-r16-lora": "96"}
    trials = {t["config"]: t for t in json.loads(run("plan", path, "-o", "json").stdout)["trials"]}
    subset = trials["fc1+fc2 r16 lora layers=0-3"]["targetModules"]
    assert len(subset) == 12 and {name.split(".")[2] for name in subset} == {"0", "1", "2", "3"}
    assert trials["fc1+fc2 r16 lora layers=0-3"]["estimatedParams"] * 8 == trials["fc1+fc2 r16 lora"]["estimatedParams"]


def test_mlp_reads_fc1_plus_fc2_in_the_table_the_label_and_the_summary_config(tmp_path):
    path = manifest_file(tmp_path, search={"moduleSets": [["mlp"]]})
    table = run("plan", path).stdout.splitlines()
    row = next(line for line in table if "-fc1-fc2-" in line)  # a Kubernetes name: '+' is not allowed there
    assert row.split()[2] == "fc1+fc2" and " mlp " not in row
    (trial,) = [t for t in json.loads(run("plan", path, "-o", "json").stdout)["trials"] if t["variant"] != "none"]
    assert trial["config"] == "fc1+fc2 r16 lora"


def test_one_ablation_spells_its_name_one_way_in_every_trial_name():
    spec = parse_spec(minimal_manifest(
        datasets=[{"name": "medmcqa", "train": "s3://d/t.jsonl", "eval": "s3://d/e.jsonl"}],
        search={"moduleSets": [["o_proj"], ["qkv", "o_proj", "fc1"]], "ranks": [8, 16], "variants": ["lora", "rslora"],
                "layers": ["all", "0-3,8-11"], "seeds": [1, 2]},
    )["spec"])  # fmt: skip
    names = plan_trials("llama-study", "default", spec).names
    assert all(len(name) <= 63 for name in names)
    assert len({name.split("-medmcqa-")[0] for name in names}) == 1, sorted({n[:16] for n in names})
    short = parse_spec(minimal_manifest(search={"moduleSets": [["o_proj"]]})["spec"])
    assert plan_trials("llama-study", "default", short).names[1].startswith("llama-study-med-o-proj-r16-lora-")


def test_gpus_zero_says_the_trials_run_on_cpu_not_that_gpu_memory_is_unknown(tmp_path):
    path = manifest_file(tmp_path, execution={"resources": {"gpus": 0}})
    result = run("plan", path)
    assert result.returncode == 0, result.stderr
    assert "GPU memory unknown" not in result.stdout
    assert "Memory: estimated peak in host memory; trials run on CPU (execution.resources.gpus is 0)" in result.stdout


def test_the_rslora_advice_does_not_ask_for_rslora_when_it_is_listed():
    def advice(variants):
        spec = parse_spec(minimal_manifest(search={"moduleSets": [["o_proj", "fc2"]], "ranks": [8, 64],
                                                   "variants": variants})["spec"])  # fmt: skip
        (rule,) = [g for g in guardrails.check(spec) if g.rule == "lr-across-ranks"]
        return rule

    without = advice(["lora"])
    assert "add rslora" in without.brief and "add rslora to spec.search.variants" in without.message
    listed = advice(["lora", "rslora"])
    assert "add rslora" not in listed.brief + listed.message
    assert "rslora is already in spec.search.variants" in listed.message
    assert "compare ranks on the rslora trials" in listed.brief


def test_report_s3_errors_point_at_the_shell_credentials_and_endpoint_flag(s3_endpoint):
    result = run("report", "s3://no-such-bucket-at-all/ablations/default/demo", "--endpoint", s3_endpoint)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "AWS_ACCESS_KEY_ID" in result.stderr and "--endpoint" in result.stderr
    assert "credentialsSecretRef" not in result.stderr  # a cluster setting: nothing to fix on a workstation


def test_report_takes_a_plain_directory_as_run_store_does(tmp_path):
    from lora_ablation.storage.open import open_store

    plan = plan_trials("demo", "ns", parse_spec(minimal_manifest()["spec"]))
    folder = tmp_path / "results" / "ns" / "demo"
    store = open_store(f"file://{folder}")
    for index, trial in enumerate(t for t in plan.trials if not t.spec.is_baseline):
        store.write_json(f"{trial.name}/result.json", {
            "ablation": "demo", "namespace": "ns", "trial": trial.name, "dataset": "med", "modules": trial.spec.modules,
            "rank": 16, "alpha": 32.0, "variant": "lora", "seed": 42, "layers": "all",
            "eval": {"metric": "eval_loss", "score": -1.0 - index, "samples": 10},
            "train": {"steps": 4, "tokens": 100, "seconds": 2.0, "tokensPerSecond": 50.0},
        })  # fmt: skip
    plain = subprocess.run(
        [sys.executable, "-m", "lora_ablation.cli", "report", "results/ns/demo", "-o", "json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), os.environ.get("PYTHONPATH", "")])},
    )  # fmt: skip (this source tree's package, also where PYTHONPATH is relative to the repository)
    assert plain.returncode == 0, plain.stderr
    assert len(json.loads(plain.stdout)["configs"]) == 2
    assert plain.stdout == run("report", f"file://{folder}", "-o", "json").stdout


def test_the_module_study_example_states_its_gpu_and_fits_it_and_plan_warns_when_it_would_not(tmp_path, module_study):
    result = run("plan", "examples/module-study.yaml")
    assert result.returncode == 0, result.stderr
    assert "80 GiB per GPU (execution.resources.gpuMemory 80Gi)" in result.stdout
    assert "WARNING" not in result.stdout
    module_study["spec"]["training"]["gradientCheckpointing"] = False
    path = tmp_path / "no-checkpointing.yaml"
    path.write_text(yaml.safe_dump(module_study))
    warned = [line for line in run("plan", str(path)).stdout.splitlines() if line.startswith("WARNING: ")]
    assert len(warned) == 8 and any(line.startswith("WARNING: all r16 lora: needs about 110.2 GiB") for line in warned)
