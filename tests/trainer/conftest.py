"""Tiny real models and a small learnable task for trainer tests."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch", reason="trainer tests need the trainer extra")

from support.trainer_data import chat_records, choice_records, corpus, write_jsonl


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from lora_ablation_demo.tiny import build_tiny_model

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


def _with_nan_weight(source: Path, target: Path, parameter: str, row: int) -> Path:
    """A copy of `source` whose weight `parameter` has one row of NaN, saved as a real checkpoint."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    shutil.copytree(source, target)
    model = AutoModelForCausalLM.from_pretrained(source)
    with torch.no_grad():
        model.get_parameter(parameter)[row] = float("nan")
    model.save_pretrained(target)
    return target


@pytest.fixture(scope="session")
def nan_model(tiny_models, tmp_path_factory) -> Path:
    """Every forward pass gives NaN: one MLP channel of the first layer is NaN for every token."""
    root = tmp_path_factory.mktemp("nan")
    return _with_nan_weight(tiny_models["llama"], root / "llama", "model.layers.0.mlp.up_proj.weight", 0)


@pytest.fixture(scope="session")
def poisoned_token_model(tiny_models, tmp_path_factory) -> tuple[Path, str]:
    """A finite model except for the embedding of one token no clean record contains ('~'): the loss goes
    non-finite exactly at the step whose batch holds a record with that token."""
    from transformers import AutoTokenizer

    token = "~"
    token_id = AutoTokenizer.from_pretrained(tiny_models["llama"]).convert_tokens_to_ids(token)
    assert isinstance(token_id, int), "the byte-level alphabet holds every byte"
    root = tmp_path_factory.mktemp("poisoned")
    return _with_nan_weight(tiny_models["llama"], root / "llama", "model.embed_tokens.weight", token_id), token
