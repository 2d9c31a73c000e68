"""Padding-free packing computes what unpacked training computes: the same loss, the same gradients."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

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


class PositionBlindLlama(LlamaForCausalLM):
    """A Llama that drops the position ids it is given, as alibi architectures may: packed examples see each other."""

    def forward(self, input_ids=None, position_ids=None, **kwargs):
        return super().forward(input_ids=input_ids, **kwargs)


def _packing_gap(model) -> float:
    """How far packed training's mean token loss is from the same examples' loss alone: 0 when packing is exact."""
    generator = torch.Generator().manual_seed(1)
    vocab = model.get_input_embeddings().weight.shape[0]
    features = [
        {"input_ids": ids, "labels": ids}
        for n in (7, 11, 5, 9)
        if (ids := torch.randint(1, vocab, (n,), generator=generator).tolist())
    ]
    with torch.no_grad():
        packed_sum, count = _summed_loss(model, collate(pack(features, 48), pad_id=0))
        alone = [_summed_loss(model, collate([f], pad_id=0)) for f in features]
    assert count == sum(a[1] for a in alone)
    return abs(float(packed_sum / count - sum(a[0] for a in alone) / count))


# Which families isolate packed examples depends on the transformers release (falcon leaked in 5.0, isolates in
# 5.24; bloom and mpt leak in 5.24): the promise is that the probe's verdict is right, whatever the release does.
FAMILIES = {
    "llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
    "falcon": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4),
    "bloom": dict(hidden_size=64, n_layer=2, n_head=4),
    "mpt": dict(d_model=64, n_layers=2, n_heads=4),
    "opt": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128, word_embed_proj_dim=64),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_probe_allows_packing_exactly_where_packed_training_equals_training_alone(family):
    torch.manual_seed(0)
    config = AutoConfig.for_model(family, vocab_size=256, bos_token_id=1, eos_token_id=2, **FAMILIES[family])
    model = AutoModelForCausalLM.from_config(config).eval()
    gap = _packing_gap(model)
    try:
        require_isolation(model, torch.device("cpu"))
    except PermanentTrialError as refused:
        assert str(refused).startswith(f"training.packing: the {family} architecture ignores restarting")
        assert gap > 1e-5, f"{family} was refused for packing, yet packed losses equal the losses alone ({gap:.3g})"
    else:
        assert gap < 1e-5, f"{family} was allowed to pack, yet packed examples change the loss by {gap:.3g}"


def test_a_model_that_ignores_restarting_positions_is_refused_for_packing():
    config = LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4
    )
    torch.manual_seed(0)
    model = PositionBlindLlama(config).eval()
    assert _packing_gap(model) > 1e-3  # what the probe must catch: packing would change what the model learns
    with pytest.raises(PermanentTrialError, match=r"^training.packing: the llama architecture ignores restarting"):
        require_isolation(model, torch.device("cpu"))
