"""Long documents: 8K+ token records train (with gradient checkpointing), evaluate and time on a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lora_ablation_trainer.adapters import attach_adapter, resolve_targets
from lora_ablation_trainer.data import IGNORE_INDEX, Example, collate, encode
from lora_ablation_trainer.evaluate import completion_loss, prompt_ids, token_batches
from support.trainer_data import choice_records, corpus, long_records, run_ablation_cli, trial_spec, write_jsonl

pytestmark = pytest.mark.trainer
WORDS = 2900  # ~8.7K tokens with the tiny tokenizer


@pytest.fixture(scope="module")
def long_model(tmp_path_factory) -> Path:
    from lora_ablation_demo.tiny import build_tiny_model

    return build_tiny_model("llama", tmp_path_factory.mktemp("long") / "llama", corpus(), positions=16384)


@pytest.fixture(scope="module")
def long_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("long-data")
    return {
        "train": write_jsonl(root / "train.jsonl", long_records(4, 1, WORDS)),
        "eval": write_jsonl(root / "eval.jsonl", long_records(2, 2, WORDS)),
    }


def test_token_batches_group_by_length_within_the_budget():
    lengths = [10, 9000, 12, 11, 8500, 13]
    batches = token_batches(lengths, max_batch=3, budget=16384)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert all(len(b) * max(lengths[i] for i in b) <= 16384 or len(b) == 1 for b in batches)
    assert [1] in batches and [4] in batches  # the long documents go one at a time
    assert max(len(b) for b in batches) == 3


def test_eval_prompts_longer_than_training_are_cut_from_the_left(long_model):
    tokenizer = AutoTokenizer.from_pretrained(long_model)
    ids = prompt_ids(tokenizer, long_records(1, 3, 200)[0]["prompt"], 64)
    full = tokenizer(long_records(1, 3, 200)[0]["prompt"], add_special_tokens=False)["input_ids"]
    assert len(ids) == 64 and ids[0] == tokenizer.bos_token_id and ids[1:] == full[-63:]


def test_eval_loss_on_completion_logits_only_equals_the_full_computation(tiny_models):
    """The eval keeps logits from the first completion token on; the pooled loss is the same as from all logits."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).eval()
    examples = [Example(r["prompt"] + " x" * (3 * i), r["completion"]) for i, r in enumerate(choice_records(6, 7))]
    features = [encode(e, tokenizer, 96) for e in examples]
    total, count = 0.0, 0
    with torch.no_grad():
        for feature in features:
            batch = collate([feature], tokenizer.pad_token_id)
            logits = model(input_ids=batch["input_ids"]).logits[0, :-1]
            labels = batch["labels"][0, 1:]
            total += float(
                torch.nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
            )
            count += int((labels != IGNORE_INDEX).sum())
    assert completion_loss(model, tokenizer, examples, 96, torch.device("cpu")) == pytest.approx(
        total / count, rel=1e-5
    )


def test_gradient_checkpointing_changes_memory_not_the_gradients(tiny_models, choice_data, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    batch = collate([encode(Example(r["prompt"], r["completion"]), tokenizer, 64) for r in choice_records(4, 5)], 0)
    grads = []
    for on in (False, True):
        training = {"gradientCheckpointing": on, "loraDropout": 0.0}
        spec = trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"], f"file://{tmp_path}",
                          training=training)  # fmt: skip
        model = attach_adapter(spec, resolve_targets(spec, tiny_models["llama"]),
                               AutoModelForCausalLM.from_pretrained(tiny_models["llama"]))  # fmt: skip
        assert model.base_model.model.is_gradient_checkpointing is on
        model.train()
        model(**batch, use_cache=False).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert grads[0].numel() > 0
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.slow
def test_an_8k_token_trial_trains_evaluates_and_times(long_model, long_data, tmp_path):
    from lora_ablation_trainer.run import run_trial

    spec = trial_spec(long_model, long_data["train"], long_data["eval"], f"file://{tmp_path}/out",
                      training={"maxSteps": 2, "batchSize": 1, "gradientAccumulation": 2, "maxSeqLength": 9216,
                                "gradientCheckpointing": True},
                      latency={"promptTokens": 8192, "outputTokens": 2, "warmup": 0, "repeats": 1})  # fmt: skip
    result = run_trial(spec)
    assert result.train.steps == 2 and result.train.tokens >= 4 * 8192  # four whole documents, none truncated
    assert result.eval.samples == 2 and result.eval.eval_loss > 0
    assert result.latency.prompt_tokens == 8192 and result.latency.adapter.ttft_p50_ms > 0


@pytest.mark.slow
def test_an_8k_token_ablation_runs_end_to_end_through_the_cli(long_model, long_data, tmp_path):
    spec = {
        "baseModel": {"uri": f"file://{long_model}", "dtype": "float32"},
        "datasets": [{"name": "docs", "train": f"file://{long_data['train']}",
                      "eval": f"file://{long_data['eval']}", "format": "prompt-completion", "metric": "accuracy"}],
        "search": {"moduleSets": [["o_proj"]], "ranks": [4], "includeBaseline": False},
        "training": {"maxSteps": 2, "batchSize": 1, "gradientAccumulation": 1, "maxSeqLength": 9216,
                     "gradientCheckpointing": True},
        "latency": {"promptTokens": 8192, "outputTokens": 2, "warmup": 0, "repeats": 1},
    }  # fmt: skip
    (result,) = run_ablation_cli("long", spec, tmp_path)
    assert result["latency"]["promptTokens"] == 8192
