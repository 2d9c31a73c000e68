from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
sys.path.insert(0, str(Path(__file__).parent))
# S3, the API server, the operator and an MLflow tracking server
pytest_plugins = ["support.s3", "support.kube", "support.cluster", "support.mlflow_server"]


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def quickstart() -> dict:
    return yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())


@pytest.fixture
def module_study() -> dict:
    return yaml.safe_load((ROOT / "examples" / "module-study.yaml").read_text())


def minimal_manifest(**spec_overrides) -> dict:
    spec = {
        "baseModel": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct"},
        "datasets": [{"name": "med", "train": "s3://data/med/train.jsonl", "eval": "s3://data/med/eval.jsonl"}],
        "search": {"moduleSets": [["o_proj"], ["o_proj", "fc2"]]},
        "storage": {"uri": "s3://results/ablations"},
    }
    spec.update(copy.deepcopy(spec_overrides))
    return {
        "apiVersion": "lora.ablation.dev/v1alpha1",
        "kind": "LoraAblation",
        "metadata": {"name": "demo"},
        "spec": spec,
    }
