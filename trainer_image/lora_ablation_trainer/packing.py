"""Padding-free packing: several examples in one row, each with position ids that restart at 0.

Transformers reads restarting position ids (with no 2-D attention mask and no KV cache) as packed
sequences: sdpa and eager get a block-diagonal causal mask, flash-attention gets per-example
sequence lengths. So a packed example attends only to itself and trains exactly as it would alone,
while a row carries no padding. Some older architectures (alibi ones: bloom, falcon, mpt) ignore
position ids; `require_isolation` measures this on the trial's own model before training starts.
"""

from __future__ import annotations

from itertools import pairwise

import torch

from lora_ablation_trainer.data import IGNORE_INDEX
from lora_ablation_trainer.errors import PermanentTrialError


def pack(features: list[dict[str, list[int]]], max_length: int) -> list[dict[str, list[int]]]:
    """Concatenate examples into rows of up to max_length tokens; examples are never split.

    Each example keeps its label mask, gets position ids 0..n-1, and its first label is ignored: alone
    that token is never a target, packed it would be predicted from the previous example's last token.
    """
    packed: list[dict[str, list[int]]] = []
    current: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for feature in features:
        if current["input_ids"] and len(current["input_ids"]) + len(feature["input_ids"]) > max_length:
            packed.append(current)
            current = {"input_ids": [], "labels": [], "position_ids": []}
        n = len(feature["input_ids"])
        current["input_ids"] += feature["input_ids"]
        current["labels"] += [IGNORE_INDEX, *feature["labels"][1:]]
        current["position_ids"] += list(range(n))
    if current["input_ids"]:
        packed.append(current)
    return packed


def unpack(feature: dict[str, list[int]]) -> list[dict[str, list[int]]]:
    """The examples inside one packed row, cut where the position ids restart."""
    starts = [i for i, p in enumerate(feature["position_ids"]) if p == 0] + [len(feature["input_ids"])]
    return [{"input_ids": feature["input_ids"][a:b], "labels": feature["labels"][a:b]} for a, b in pairwise(starts)]


@torch.no_grad()
def _probe_logits(model, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits of a short example alone, packed after another one (isolated), and packed the old way (leaky)."""
    vocab = model.get_input_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    first = torch.randint(0, vocab, (1, 9), generator=generator)
    second = torch.randint(0, vocab, (1, 6), generator=generator)
    ids = torch.cat([first, second], 1).to(device)
    restart = torch.cat([torch.arange(9), torch.arange(6)])[None].to(device)
    alone = model(input_ids=second.to(device), use_cache=False).logits.float()
    isolated = model(input_ids=ids, position_ids=restart, use_cache=False).logits[:, 9:].float()
    leaky = model(input_ids=ids, use_cache=False).logits[:, 9:].float()
    return alone, isolated, leaky


def require_isolation(model, device: torch.device) -> None:
    """Refuse packing on a model whose attention lets one packed example see another."""
    training = model.training
    model.eval()  # no dropout: the three forwards must differ only in what each token can attend to
    try:
        alone, isolated, leaky = _probe_logits(model, device)
    finally:
        model.train(training)
    error, leak = (isolated - alone).abs().max().item(), (leaky - alone).abs().max().item()
    # Scale-free: isolated packing must be far closer to "alone" than cross-example attention is.
    if not error <= 0.05 * leak:
        family = getattr(getattr(model, "config", None), "model_type", "this model")
        raise PermanentTrialError(
            f"training.packing: the {family} architecture ignores restarting position ids, so packed examples would "
            f"attend to each other (logits differ by {error:.3g} from the example alone); set training.packing to "
            "false for this base model"
        )
