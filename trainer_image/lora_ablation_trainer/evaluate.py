"""Score a model on the eval split: completion-only loss for every metric, greedy generation for the rest."""

from __future__ import annotations

import inspect
import math

import torch

from lora_ablation.api.trial import EvalMetrics
from lora_ablation_trainer.data import IGNORE_INDEX, Example, collate, encode
from lora_ablation_trainer.finite import require_finite
from lora_ablation_trainer.metrics import GENERATION_METRICS, compute_metric, eval_loss_metric, max_new_tokens_hint

TOKEN_BUDGET = 16384  # tokens per eval batch: long documents go a few (or one) at a time, short ones eight


def token_batches(lengths: list[int], max_batch: int = 8, budget: int = TOKEN_BUDGET) -> list[list[int]]:
    """Indices grouped by similar length (little padding), each group's padded size within the budget."""
    batches: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if batches and len(batches[-1]) < max_batch and (len(batches[-1]) + 1) * lengths[index] <= budget:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


def _keeps_some_logits(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


@torch.inference_mode()
def completion_loss(model, tokenizer, examples: list[Example], max_length: int, device, vision=None) -> float:
    """Mean cross-entropy per completion token (prompt tokens excluded), pooled over the whole split.

    Logits are computed only from the first completion token on: for a long document and a large
    vocabulary, the prompt's logits would be most of the memory (8K tokens x 150K vocabulary = 5 GB).
    """
    model.eval()
    total, count = 0.0, 0
    features = [vision.encode(e, max_length) if vision else encode(e, tokenizer, max_length) for e in examples]
    trim = _keeps_some_logits(model)
    for indices in token_batches([len(f["input_ids"]) for f in features]):
        chosen = [features[i] for i in indices]
        batch = {k: v.to(device) for k, v in collate(chosen, tokenizer.pad_token_id).items()}
        width = batch["input_ids"].shape[1]
        first = min(next((i for i, x in enumerate(f["labels"]) if x != IGNORE_INDEX), width) for f in chosen)
        keep = max(width - first + 1, 2) if trim else 0  # 0 keeps all; +1: the token before predicts the first
        extra = {"logits_to_keep": keep} if trim else {}
        inputs = {k: v for k, v in batch.items() if k != "labels"}  # ids, mask and any image tensors
        logits = model(**inputs, **extra).logits.float()
        labels = batch["labels"][:, width - logits.shape[1] :]
        shifted_logits, shifted_labels = logits[:, :-1], labels[:, 1:]
        losses = torch.nn.functional.cross_entropy(
            shifted_logits.reshape(-1, shifted_logits.size(-1)),
            shifted_labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        total += float(losses)
        count += int((shifted_labels != IGNORE_INDEX).sum())
    return total / max(count, 1)


def prompt_ids(tokenizer, prompt: str, max_prompt: int) -> list[int]:
    """BOS + the prompt's last tokens: a document longer than training saw is cut from the left, as in encode."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is None:
        return ids[max(0, len(ids) - max_prompt) :]
    return [tokenizer.bos_token_id, *ids[max(0, len(ids) - max_prompt + 1) :]]


@torch.inference_mode()
def generate(model, tokenizer, examples: list[Example], max_new_tokens: int, device, max_length: int | None = None,
             vision=None) -> list[str]:  # fmt: skip
    """Greedy completions, prompts left-padded so every row generates from its own last token."""
    model.eval()
    # A prompt keeps at most what training saw (max_length) and what the model's positions leave for the answer.
    # Never max_length - max_new_tokens: the generation budget is an upper bound (64 tokens for exact match),
    # and with a short training length it left one prompt token, so every answer was garbage.
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    room = limit - max_new_tokens if isinstance(limit, int) and limit > max_new_tokens else 1 << 30
    max_prompt = max(1, min(max_length or 1 << 30, room))
    if vision:  # image tokens cannot be cut: a prompt too long for them is a data error
        features = [vision.prompt_feature(e, max_prompt) for e in examples]
    else:
        features = [{"input_ids": prompt_ids(tokenizer, e.prompt, max_prompt)} for e in examples]
    outputs: list[str] = [""] * len(examples)
    for indices in token_batches([len(f["input_ids"]) + max_new_tokens for f in features]):
        batch = collate([features[i] for i in indices], tokenizer.pad_token_id, left_pad=True)
        batch.pop("labels")
        generated = model.generate(
            **{k: v.to(device) for k, v in batch.items()},
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new_tokens = generated[:, batch["input_ids"].shape[1] :]
        for index, text in zip(indices, tokenizer.batch_decode(new_tokens, skip_special_tokens=True), strict=True):
            outputs[index] = text
    return outputs


def evaluate(
    model, tokenizer, examples: list[Example], metric: str, max_length: int, device, vision=None
) -> EvalMetrics:
    loss = completion_loss(model, tokenizer, examples, max_length, device, vision)
    if metric in GENERATION_METRICS:
        predictions = generate(model, tokenizer, examples, max_new_tokens_hint(metric), device, max_length, vision)
        result = compute_metric(metric, [p.strip() for p in predictions], [e.completion for e in examples])
    else:
        result = eval_loss_metric(loss, len(examples))
    figures = {
        "metric": metric,
        "score": round(result.score, 6),
        "evalLoss": round(loss, 6),
        "perplexity": round(math.exp(min(loss, 50.0)), 4),
        "samples": result.samples,
        "parseFailures": result.parse_failures,
        "details": {k: round(v, 6) for k, v in result.details.items()},
    }
    require_finite(figures, "eval")  # before timing and uploading a model whose outputs are NaN
    return EvalMetrics.model_validate(figures)
