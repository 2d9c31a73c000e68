"""`lora-ablation run` with fewer GPU-hours (#15): two stages and several trials per process, and the budget,
through the same schedule the operator uses, on a tiny model with the real trainer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.trainer, pytest.mark.slow]
SETS = [["o_proj"], ["fc2"], ["qkv"]]


def run(tmp_path: Path, model: Path, train: Path, eval_: Path, name: str, search: dict, execution: dict):
    manifest = {
        "apiVersion": "lora.ablation.dev/v1alpha1", "kind": "LoraAblation", "metadata": {"name": name},
        "spec": {
            "baseModel": {"uri": f"file://{model}", "dtype": "float32"},
            "datasets": [{"name": "choice", "train": f"file://{train}", "eval": f"file://{eval_}",
                          "format": "prompt-completion", "metric": "eval_loss", "maxEvalSamples": 12}],
            "search": {"moduleSets": SETS, "ranks": [4], **search},
            "training": {"maxSteps": 8, "batchSize": 8, "gradientAccumulation": 1, "maxSeqLength": 48,
                         "checkpointEverySteps": 100},
            "latency": {"enabled": False},
            "execution": {"parallelism": 1, **execution},
            "storage": {"uri": f"file://{tmp_path / 'results'}"},
        },
    }  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    command = [sys.executable, "-m", "lora_ablation.cli", "run", str(path), "--logs", str(tmp_path / "logs")]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    folder = tmp_path / "results" / "default" / name
    return done.stdout, json.loads((folder / "summary.json").read_text()), folder


def test_two_stages_in_one_process_per_dataset_eliminate_and_resume(tiny_models, choice_data, tmp_path):
    search = {"earlyStopping": {"stageOneFraction": 0.25, "rule": "topK", "keep": 1, "minConfigurations": 2}}
    out, summary, folder = run(tmp_path, tiny_models["llama"], choice_data["train"], choice_data["eval"], "two",
                               search, {"trialsPerPod": 4})  # fmt: skip
    stage_ones = sorted(folder.glob("*/stage-one.json"))
    results = sorted(folder.glob("*/result.json"))
    assert len(stage_ones) == 3 and len(results) == 2  # every configuration scored at step 2; one survivor + base
    assert all(json.loads(p.read_text())["step"] == 2 for p in stage_ones)
    survivor = next(json.loads(p.read_text()) for p in results if json.loads(p.read_text())["variant"] != "none")
    assert survivor["train"]["resumedFromStep"] == 2 and survivor["train"]["steps"] == 8
    # The survivor's curve spans both stages (its losses came back with the checkpoint); its eval points too.
    assert survivor["train"]["curve"]["steps"] == list(range(1, 9)) and len(survivor["train"]["curve"]["loss"]) == 8
    assert [(p["stage"], p["step"]) for p in survivor["train"]["evalPoints"]] == [("stage-one", 2), ("final", 8)]
    assert survivor["train"]["evalPoints"][0]["score"] == next(
        json.loads(p.read_text())["score"] for p in stage_ones if p.parent.name == survivor["trial"])
    curves = summary["curves"]
    assert sorted(c.get("eliminated", False) for c in curves) == [False, True, True]
    assert all(c["curve"]["steps"] == [1, 2] for c in curves if c.get("eliminated"))
    assert (folder / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert out.count("] eliminated ") == 2 and "below the topK cutoff" in out
    assert len(summary["eliminated"]) == 2 and [c["config"] for c in summary["configs"]] == [
        next(e["config"] for e in summary["stageOne"] if e["survived"])
    ]
    assert summary["compute"]["stageOneGpuHours"] > 0 and summary["compute"]["gpuHours"] > 0
    # Round one ran as one process for the whole dataset (the base and three stage-one runs).
    assert len(list((tmp_path / "logs").rglob("*.trials.json"))) == 1
    # Again: nothing is trained twice, the same configurations are eliminated.
    again, summary_again, _ = run(tmp_path, tiny_models["llama"], choice_data["train"], choice_data["eval"], "two",
                                  search, {"trialsPerPod": 4})  # fmt: skip
    assert "0 of 4 trials to run" in again and again.count("] cached ") == 2 and again.count("] eliminated ") == 2
    assert summary_again["eliminated"] == summary["eliminated"]


def test_the_budget_stops_starting_trials_and_the_summary_says_what_was_skipped(tiny_models, choice_data, tmp_path):
    # A millisecond budget: the baseline starts (nothing tells what a trial costs before one finished), and once it
    # has used its seconds nothing else fits.
    out, summary, folder = run(tmp_path, tiny_models["llama"], choice_data["train"], choice_data["eval"], "budget",
                               {}, {"maxGpuHours": 1e-6})  # fmt: skip
    assert len(list(folder.glob("*/result.json"))) == 1
    assert out.count("] skipped ") == 3 and "execution.maxGpuHours 1e-06" in out
    assert len(summary["compute"]["skippedTrials"]) == 3 and summary["compute"]["maxGpuHours"] == 1e-6
    assert any("maxGpuHours was reached" in note for note in summary["notes"])
