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
