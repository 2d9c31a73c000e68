"""Padding-free packing computes what unpacked training computes: the same loss, the same gradients."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lora_ablation_trainer.data import IGNORE_INDEX, Example, collate, encode
from lora_ablation_trainer.errors import PermanentTrialError
from lora_ablation_trainer.packing import pack, require_isolation, unpack

pytestmark = pytest.mark.trainer


def _features(tokenizer, n: int = 6) -> list[dict[str, list[int]]]:
    examples = [Example(f"cue {'a b ' * (i + 1)}options", f" {'ABCD'[i % 4]} done" * (1 + i % 3)) for i in range(n)]
    return [encode(e, tokenizer, 64) for e in examples]


def _summed_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Cross-entropy summed over the batch's target tokens, and their count (the model's own shift)."""
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits.float()
    labels = batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss, int((labels != IGNORE_INDEX).sum())


@pytest.fixture(scope="module", params=["llama", "gpt2", "gpt_neox"])
def model_and_tokenizer(request, tiny_models):
    path = tiny_models[request.param]
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_pack_restarts_positions_and_masks_each_first_token():
    features = [{"input_ids": [i] * n, "labels": [i] * n} for i, n in enumerate([3, 4, 5, 2], 1)]
    packed = pack(features, 8)
    assert [len(p["input_ids"]) for p in packed] == [7, 7]
    assert packed[0]["position_ids"] == [0, 1, 2, 0, 1, 2, 3]
    assert packed[0]["labels"] == [IGNORE_INDEX, 1, 1, IGNORE_INDEX, 2, 2, 2]
    assert [f["input_ids"] for p in packed for f in unpack(p)] == [f["input_ids"] for f in features]


def test_packed_rows_collate_without_a_mask_and_pad_as_their_own_segment():
    short = {"input_ids": [5], "labels": [5], "position_ids": [0]}
    rows = [*pack([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}], 8), short]
    batch = collate(rows, pad_id=0)
    assert "attention_mask" not in batch
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 1]]
    assert batch["labels"][1].tolist() == [5, IGNORE_INDEX, IGNORE_INDEX]


def test_a_packed_batch_has_the_per_example_loss(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    features = _features(tokenizer)
    rows = pack(features, 48)
    assert len(rows) >= 2 and any(len(unpack(row)) > 1 for row in rows)  # several examples share a row
    batch = collate(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        packed_sum, packed_count = _summed_loss(model, batch)
        trainer_loss = model(**batch, use_cache=False).loss  # what the training loop back-propagates
        alone = [_summed_loss(model, collate([f], tokenizer.pad_token_id)) for f in features]
    alone_sum, alone_count = sum(a[0] for a in alone), sum(a[1] for a in alone)
    assert packed_count == alone_count
    torch.testing.assert_close(packed_sum / packed_count, alone_sum / alone_count, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(trainer_loss, alone_sum / alone_count, rtol=1e-5, atol=1e-5)


def test_cross_example_packing_would_fail_that_test(model_and_tokenizer):
    """The old packing (one causal sequence, no restarting positions) computes another loss: the test above bites."""
    model, tokenizer = model_and_tokenizer
    features = _features(tokenizer)
    rows = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in pack(features, 48)]
    with torch.no_grad():
        leaky_sum, count = _summed_loss(model, collate(rows, tokenizer.pad_token_id))
        alone = [_summed_loss(model, collate([f], tokenizer.pad_token_id)) for f in features]
    assert abs(float(leaky_sum / count - sum(a[0] for a in alone) / count)) > 1e-3


def test_packed_gradients_match_unpacked(tiny_models):
    """What the optimizer sees: the gradient of the mean token loss is the same packed or not."""
    path = tiny_models["llama"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    features = _features(tokenizer)

    def grads(batches):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(path)
        total = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
        for batch in batches:
            (_summed_loss(model, batch)[0] / total).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    packed = grads([collate(pack(features, 48), tokenizer.pad_token_id)])
    alone = grads([collate([f], tokenizer.pad_token_id) for f in features])
    torch.testing.assert_close(packed, alone, rtol=1e-4, atol=1e-6)


def test_isolation_probe_passes_isolating_models_and_refuses_leaky_ones(model_and_tokenizer):
    model, _ = model_and_tokenizer
    require_isolation(model, torch.device("cpu"))  # llama, gpt2 and gpt_neox honour restarting positions
    assert not model.training


def test_an_architecture_that_ignores_positions_is_refused_for_packing():
    from transformers import AutoConfig

    # falcon (alibi, no position ids in its mask) lets packed examples see each other in transformers 5.
    config = AutoConfig.for_model("falcon", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=256)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(PermanentTrialError, match=r"^training.packing: the falcon architecture ignores restarting"):
        require_isolation(model, torch.device("cpu"))
