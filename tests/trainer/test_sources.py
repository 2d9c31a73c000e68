"""Where models and data come from: local paths, mounted claims, the hub (offline here), S3 errors."""

from __future__ import annotations

import importlib

import pytest

from lora_ablation.api.spec import BaseModelSpec
from lora_ablation_trainer.errors import DataError, PermanentTrialError, TransientTrialError


@pytest.fixture
def sources(monkeypatch, tmp_path):
    """The module with its documented environment: PVCs mounted under a root, a model cache folder."""
    monkeypatch.setenv("LORA_ABLATION_PVC_ROOT", str(tmp_path / "pvc"))
    monkeypatch.setenv("LORA_ABLATION_MODEL_CACHE", str(tmp_path / "models"))
    return importlib.import_module("lora_ablation_trainer.sources")


def test_pvc_uri_maps_under_the_mount_root(sources, tmp_path):
    data = tmp_path / "pvc" / "datasets" / "med" / "train.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text("{}\n")
    assert sources.fetch_file("pvc://datasets/med/train.jsonl", tmp_path / "cache") == data


def test_missing_local_file_is_a_data_error(sources, tmp_path):
    with pytest.raises(DataError, match="file does not exist"):
        sources.fetch_file(f"file://{tmp_path}/none.jsonl", tmp_path / "cache")


def test_hub_model_found_in_the_model_cache_is_not_downloaded(sources, tmp_path):
    cached = tmp_path / "models" / "org" / "model"
    cached.mkdir(parents=True)
    (cached / "config.json").write_text("{}")
    assert sources.fetch_model(BaseModelSpec(uri="hf://org/model"), tmp_path / "cache") == cached


def test_hub_unreachable_is_transient(sources, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the library reads it at import
    with pytest.raises(TransientTrialError, match="hf://org/not-cached: hub unreachable"):
        sources.fetch_model(BaseModelSpec(uri="hf://org/not-cached"), tmp_path / "cache")


def test_model_folder_without_config_is_permanent(sources, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PermanentTrialError, match=r"no config\.json"):
        sources.fetch_model(BaseModelSpec(uri=f"file://{tmp_path}/empty"), tmp_path / "cache")


def test_s3_model_prefix_with_no_objects_is_permanent(sources, tmp_path, s3_bucket):
    endpoint, bucket = s3_bucket
    with pytest.raises(PermanentTrialError, match="no objects under this prefix"):
        sources.fetch_model(BaseModelSpec(uri=f"s3://{bucket}/models/none/"), tmp_path / "cache", endpoint)


def test_s3_missing_data_object_is_a_data_error(sources, tmp_path, s3_bucket):
    endpoint, bucket = s3_bucket
    with pytest.raises(DataError, match="does not exist"):
        sources.fetch_file(f"s3://{bucket}/data/none.jsonl", tmp_path / "cache", endpoint)
