"""The training loss with logits only where a label is scored equals the model's own loss, value and gradient."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lora_ablation_trainer.data import Example, collate, encode
from lora_ablation_trainer.loss import completion_loss, keeps_scored_logits, scored_positions
from lora_ablation_trainer.packing import pack
from support.trainer_data import choice_records

pytestmark = pytest.mark.trainer


def test_scored_positions_are_those_before_each_label():
    labels = torch.tensor([[-100, -100, 7, 8], [-100, 5, -100, -100]])
    assert scored_positions(labels).tolist() == [[False, True, True, False], [True, False, False, False]]


@pytest.mark.parametrize("family", ["llama", "phi3", "gpt_neox", "gpt2"])
@pytest.mark.parametrize("packed", [False, True])
def test_trimmed_loss_and_gradients_equal_the_models_own(tiny_models, family, packed):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[family])
    features = [encode(Example(r["prompt"], r["completion"]), tokenizer, 64) for r in choice_records(6, 3)]
    batch = collate(pack(features, 96) if packed else features, tokenizer.pad_token_id)

    def run(trimmed: bool):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_models[family])
        assert keeps_scored_logits(model, torch.device("cpu"))
        loss = completion_loss(model, batch) if trimmed else model(**batch, use_cache=False).loss
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    (own, own_grad), (trimmed, trimmed_grad) = run(False), run(True)
    torch.testing.assert_close(trimmed, own, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(trimmed_grad, own_grad, rtol=1e-4, atol=1e-6)
