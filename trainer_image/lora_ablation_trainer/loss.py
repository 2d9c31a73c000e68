"""The training loss on completion tokens only, with logits computed only where a label is scored.

The model's own loss projects every position onto the vocabulary: for completion-only data (a long
prompt, a short answer) most of that work and memory is thrown away - 8K tokens x a 150K vocabulary is
5 GB of float32 logits, and for a 0.5B model the output head is about a quarter of the FLOPs.
Transformers accepts a boolean `logits_to_keep` mask and returns logits for those positions alone; the
loss is then the same mean cross-entropy over the same tokens. Architectures that do not honour the
mask keep the model's own loss.
"""

from __future__ import annotations

import torch

from lora_ablation_trainer.data import IGNORE_INDEX


def scored_positions(labels: torch.Tensor) -> torch.Tensor:
    """Boolean (batch, length): positions whose next token is a label, i.e. whose logits the loss reads."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


@torch.no_grad()
def keeps_scored_logits(model, device: torch.device) -> bool:
    """Whether this model returns logits for exactly the masked positions (one short forward, no dropout)."""
    training = model.training
    model.eval()
    try:
        ids = torch.tensor([[3, 4, 5, 6]], device=device)
        mask = torch.tensor([[False, True, False, True]], device=device)
        logits = model(input_ids=ids, logits_to_keep=mask, use_cache=False).logits
    except (TypeError, ValueError, IndexError, RuntimeError):
        return False
    finally:
        model.train(training)
    return logits.dim() == 2 and logits.shape[0] == 2


def completion_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the batch's label tokens, as the model's own loss computes it."""
    labels = batch["labels"]
    keep = scored_positions(labels)
    if not bool(keep.any()):  # nothing to score: the model's own loss says so in its own way
        return model(**batch, use_cache=False).loss
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
    targets = labels[:, 1:][keep[:, :-1]]
    return torch.nn.functional.cross_entropy(logits.float(), targets)
