"""Does the trained adapter change anything? An adapter whose B matrices stayed at zero (a learning rate too
small, no optimizer step, an update lost to bf16 rounding) serves exactly the base model: worth a flag
before anyone deploys it or reads its score as a finding."""

from __future__ import annotations

import torch

from lora_ablation.api.trial import AdapterEffect
from lora_ablation_trainer.data import Example, collate, encode

PROMPTS = 8
MAX_TOKENS = 512  # per prompt: full logits of 8 long documents would need gigabytes for a yes/no answer
# Relative to the largest logit: float rounding of identical outputs stays far below this, while any update
# that moves a prediction is far above it.
UNCHANGED = 1e-6


@torch.inference_mode()
def adapter_effect(model, tokenizer, examples: list[Example], max_length: int, device) -> AdapterEffect:
    """Largest logit change the adapter makes on the first eval prompts (completion included, so every
    position the metric reads is compared), and whether that leaves the outputs unchanged."""
    model.eval()
    features = [encode(e, tokenizer, min(max_length, MAX_TOKENS)) for e in examples[:PROMPTS]]
    batch = {k: v.to(device) for k, v in collate(features, tokenizer.pad_token_id).items()}
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    adapted = model(**inputs).logits.float()
    with model.disable_adapter():
        base = model(**inputs).logits.float()
    mask = batch["attention_mask"].bool()
    delta = float((adapted - base).abs()[mask].max()) if mask.any() else 0.0
    scale = max(1.0, float(base.abs()[mask].max())) if mask.any() else 1.0
    changed_tokens = int((adapted.argmax(-1) != base.argmax(-1))[mask].sum())
    return AdapterEffect(
        prompts=len(features),
        max_logit_delta=delta,
        changed_argmax_tokens=changed_tokens,
        unchanged=delta <= UNCHANGED * scale,
    )
