"""`lora-ablation run` where the `report` extra (matplotlib) is not installed: the results and the summary are
written, a note says how to get the plots, exit 0. matplotlib is made unimportable for the real subprocess by a
sitecustomize meta-path finder (nothing of ours is replaced); every trial already has its result, so the run goes
straight to the summary without training anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT, minimal_manifest
from lora_ablation.api.resource import parse_ablation
from lora_ablation.planning.plan import plan_trials
from lora_ablation.storage.open import open_store

BLOCKER = '''
import importlib.abc, sys

class NoMatplotlib(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoMatplotlib())
'''
TINY_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256}  # fmt: skip


def _finished_ablation(tmp_path: Path) -> tuple[Path, Path]:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(TINY_LLAMA))
    manifest = minimal_manifest(baseModel={"uri": f"file://{model}"},
                                search={"moduleSets": [["o_proj"], ["fc2"]], "includeBaseline": False},
                                storage={"uri": f"file://{tmp_path / 'results'}"})  # fmt: skip
    path = tmp_path / "done.yaml"
    path.write_text(yaml.safe_dump(manifest))
    ablation = parse_ablation(manifest)
    store = open_store(f"file://{tmp_path / 'results'}").child("default", "demo")
    for index, trial in enumerate(plan_trials("demo", "default", ablation.spec).trials):
        store.write_json(f"{trial.name}/result.json", {
            "ablation": "demo", "namespace": "default", "trial": trial.name, "dataset": "med",
            "modules": trial.spec.modules, "rank": 16, "alpha": 32.0, "variant": "lora", "seed": 42, "layers": "all",
            "eval": {"metric": "eval_loss", "score": -1.0 - index, "samples": 10},
            "train": {"steps": 4, "tokens": 100, "seconds": 2.0, "tokensPerSecond": 50.0},
        })  # fmt: skip
    return path, tmp_path / "results" / "default" / "demo"


def _without_matplotlib(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    blocker = tmp_path / "blocker"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    path = os.pathsep.join([str(blocker), str(ROOT / "operator"), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "lora_ablation.cli", *args], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": path},
    )  # fmt: skip


def test_the_blocker_really_hides_matplotlib(tmp_path):
    probe = _without_matplotlib(tmp_path, "--version")
    assert probe.returncode == 0, probe.stderr
    blocker = tmp_path / "blocker"
    check = subprocess.run([sys.executable, "-c", "import matplotlib"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(blocker)})  # fmt: skip
    assert check.returncode == 1 and "No module named 'matplotlib'" in check.stderr


def test_run_without_the_report_extra_writes_the_summary_and_says_how_to_get_plots(tmp_path):
    manifest, folder = _finished_ablation(tmp_path)
    result = _without_matplotlib(tmp_path, "run", str(manifest), "--logs", str(tmp_path / "logs"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert (folder / "summary.json").is_file() and (folder / "summary.md").is_file()
    assert not (folder / "pareto.png").exists()
    assert "Leaderboard: default/demo" in result.stdout
    assert "plots not drawn: matplotlib is not installed; pip install 'lora-ablation-operator[report]'" in result.stdout
    assert f"lora-ablation report file://{folder} --plots DIR" in result.stdout


def test_report_plots_without_the_report_extra_exits_2_naming_the_flag(tmp_path):
    _, folder = _finished_ablation(tmp_path)
    result = _without_matplotlib(tmp_path, "report", str(folder), "--plots", str(tmp_path / "plots"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"--plots {tmp_path / 'plots'}: plots need matplotlib" in result.stderr
    assert "Leaderboard: default/demo" in result.stdout  # the summary itself was printed
