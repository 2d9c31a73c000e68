"""Tiny real models and a small learnable task for trainer tests."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch", reason="trainer tests need the trainer extra")

from support.trainer_data import chat_records, choice_records, corpus, write_jsonl


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from lora_ablation_trainer.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("models")
    return {
        family: build_tiny_model(family, root / family, corpus()) for family in ("llama", "phi3", "gpt_neox", "gpt2")
    }


@pytest.fixture(scope="session")
def choice_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {
        "train": write_jsonl(root / "train.jsonl", choice_records(256, 1)),
        "eval": write_jsonl(root / "eval.jsonl", choice_records(24, 2)),
        "chat_train": write_jsonl(root / "chat_train.jsonl", chat_records(64, 3)),
        "chat_eval": write_jsonl(root / "chat_eval.jsonl", chat_records(12, 4)),
    }


@pytest.fixture(scope="session")
def no_template_model(tiny_models, tmp_path_factory) -> Path:
    """The tiny llama as a base model that ships no chat template (many base checkpoints don't)."""
    import json
    import shutil

    model = tmp_path_factory.mktemp("no-template") / "llama"
    shutil.copytree(tiny_models["llama"], model)
    (model / "chat_template.jinja").unlink()
    assert "chat_template" not in json.loads((model / "tokenizer_config.json").read_text())
    return model
