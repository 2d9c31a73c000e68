"""scripts/gpu-check.sh cannot rot: its dry mode runs every section on CPU on a tiny model, through the same code a
GPU session runs, and writes the JSON and Markdown a session reports from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.trainer, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_the_dry_run_measures_every_section_and_writes_json_and_markdown(tmp_path):
    command = ["bash", "scripts/gpu-check.sh", "--dry", "--out", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert report["dry"] is True and set(report["seconds"]) == {"throughput", "fused", "tpot", "divergence", "memory"}
    assert [r["run"] for r in report["throughput"]] == ["reference", "ours", "packed"]
    assert all(r["tokens_per_second"]["median"] > 0 and r["mfu_pct"] is None for r in report["throughput"])  # no GPU
    assert [r["k"] for r in report["fused"]] == [1, 2]
    assert all(r["max_abs_difference"] < 1e-5 and r["fused_over_sequential"]["median"] > 0 for r in report["fused"])
    assert len(report["tpot"]["tpot_p95_ms"]) == report["tpot"]["runs"] == 3 and report["tpot"]["cv_pct"] >= 0
    divergence = report["divergence"]
    assert divergence["ok"] and divergence["sane"] == "TrialResult" and divergence["wild"] == "TrialFailure"
    assert report["memory"]["measured_bytes"] > 0 and report["memory"]["estimate_bytes"] > 0
    markdown = (tmp_path / "gpu-check.md").read_text()
    assert "| model | run | tokens/s" in markdown and "| K | fused/sequential" in markdown
    assert "TPOT p95 over 3 runs" in markdown and "Divergence (float32)" in markdown and "Peak memory" in markdown


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens without a GPU")
def test_without_a_gpu_the_full_check_says_to_use_the_dry_run(tmp_path):
    done = subprocess.run([sys.executable, "tests/benchmarks/gpu_check.py", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "no CUDA device: run with --dry" in done.stderr


def test_an_unknown_section_is_named(tmp_path):
    done = subprocess.run([sys.executable, "tests/benchmarks/gpu_check.py", "--dry", "--sections", "fused,speed",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "--sections: unknown speed" in done.stderr
