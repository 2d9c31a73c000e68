"""Score a model on the eval split: completion-only loss for every metric, greedy generation for the rest."""

from __future__ import annotations

import math

import torch

from lora_ablation.api.trial import EvalMetrics
from lora_ablation_trainer.data import IGNORE_INDEX, Example, collate, encode
from lora_ablation_trainer.finite import require_finite
from lora_ablation_trainer.metrics import GENERATION_METRICS, compute_metric, eval_loss_metric, max_new_tokens_hint


@torch.inference_mode()
def completion_loss(model, tokenizer, examples: list[Example], max_length: int, device, batch_size: int = 8) -> float:
    """Mean cross-entropy per completion token (prompt tokens excluded), pooled over the whole split."""
    model.eval()
    total, count = 0.0, 0
    features = [encode(e, tokenizer, max_length) for e in examples]
    for start in range(0, len(features), batch_size):
        batch = {
            k: v.to(device) for k, v in collate(features[start : start + batch_size], tokenizer.pad_token_id).items()
        }
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        shifted_logits, shifted_labels = logits[:, :-1], batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(
            shifted_logits.reshape(-1, shifted_logits.size(-1)),
            shifted_labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        total += float(losses)
        count += int((shifted_labels != IGNORE_INDEX).sum())
    return total / max(count, 1)


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, device, batch_size: int = 8) -> list[str]:
    """Greedy completions, prompts left-padded so every row generates from its own last token."""
    model.eval()
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        features = []
        for prompt in prompts[start : start + batch_size]:
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            if tokenizer.bos_token_id is not None:
                ids = [tokenizer.bos_token_id, *ids]
            features.append({"input_ids": ids})
        batch = collate(features, tokenizer.pad_token_id, left_pad=True)
        generated = model.generate(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new_tokens = generated[:, batch["input_ids"].shape[1] :]
        outputs.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return outputs


def evaluate(model, tokenizer, examples: list[Example], metric: str, max_length: int, device) -> EvalMetrics:
    loss = completion_loss(model, tokenizer, examples, max_length, device)
    if metric in GENERATION_METRICS:
        predictions = generate(model, tokenizer, [e.prompt for e in examples], max_new_tokens_hint(metric), device)
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
