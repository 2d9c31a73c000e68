"""Datasets: JSONL records -> (prompt, completion) pairs -> token ids with the loss on completions only."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_ablation_trainer.errors import DataError

IGNORE_INDEX = -100  # labels PyTorch's cross-entropy skips: prompt tokens and padding


@dataclass(frozen=True)
class Example:
    prompt: str
    completion: str
    raw: dict[str, Any] | None = None
    images: tuple[str, ...] = ()  # image references as the record writes them, in prompt order
    where: str = ""  # file:line, for messages about this record's images


def read_jsonl(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"{path}: dataset file does not exist")
    records: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: not valid JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            records.append({**record, "_line": number})
            if limit is not None and len(records) >= limit:
                break
    if not records:
        raise DataError(f"{path}: no records")
    return records


def _text(record: dict[str, Any], key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string (got {type(value).__name__})")
    return value


def chat_template_problem(tokenizer: Any, dataset: str, files: list[str]) -> str | None:
    """Why a chat-format dataset cannot be used with this tokenizer, or None: checked before any record is read."""
    if getattr(tokenizer, "chat_template", None):
        return None
    return (
        f"dataset {dataset!r} ({', '.join(files)}) has format 'chat', but the base model's tokenizer has no chat "
        "template; use a base model whose tokenizer ships one (an instruct or chat variant), or set the dataset's "
        "format to 'prompt-completion' or 'text'"
    )


def _render_prompt(messages: list[dict[str, Any]], tokenizer: Any, where: str) -> str:
    """The chat template applied to the conversation so far; None checks the structure only (preflight)."""
    if tokenizer is None:
        return ""
    if not getattr(tokenizer, "chat_template", None):  # callers check first; this keeps it a DataError regardless
        raise DataError(f"{where}: format 'chat' needs a chat template, but the tokenizer has none")
    from jinja2 import TemplateError  # a transformers dependency; templates raise it to reject a conversation

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except (TemplateError, ValueError, TypeError, KeyError) as error:
        raise DataError(f"{where}: the tokenizer's chat template rejects these messages ({error})") from None


def _content_images(content: Any, where: str) -> list[str]:
    """A message's content is a string, or a list of parts {type: text, text} and {type: image, image: ref}
    (ref: a path relative to the dataset file, s3://, pvc:// or file://); returns the image refs."""
    if isinstance(content, str):
        return []
    if not isinstance(content, list):
        raise DataError(f"{where} must have string 'role' and 'content' (a string or a list of text and image parts)")
    images = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            continue
        ref = next((part[k] for k in ("image", "path", "url") if isinstance(part.get(k), str)), None)
        if kind == "image" and ref:
            images.append(ref)
            continue
        raise DataError(
            f"{where}.content[{index}]: expected {{'type': 'text', 'text': ...}} or {{'type': 'image', 'image': "
            "'path relative to the dataset file, s3:// or pvc://'}}"
        )
    return images


def to_example(record: dict[str, Any], fmt: str, where: str, tokenizer: Any) -> Example:
    """One record in `fmt` -> an Example; the message names the file, line and the missing field."""
    if fmt == "prompt-completion":
        return Example(_text(record, "prompt", where), _text(record, "completion", where), record)
    if fmt == "text":
        return Example("", _text(record, "text", where), record)
    if fmt == "chat":
        messages = record.get("messages")
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{where}: field 'messages' must be a non-empty list of {{role, content}}")
        images: list[str] = []
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or "role" not in message:
                raise DataError(f"{where}: messages[{index}] must have string 'role' and 'content'")
            images += _content_images(message.get("content"), f"{where}: messages[{index}]")
        if messages[-1]["role"] != "assistant" or not isinstance(messages[-1]["content"], str):
            raise DataError(
                f"{where}: the last message must be the assistant's answer as a string (got role "
                f"{messages[-1]['role']!r})"
            )
        prompt = _render_prompt(messages[:-1], tokenizer, where)
        return Example(prompt, messages[-1]["content"], record, tuple(images), where)
    raise DataError(f"{where}: unknown dataset format {fmt!r}")


def load_examples(path: Path, fmt: str, tokenizer: Any, limit: int | None = None) -> list[Example]:
    """tokenizer None checks chat records without rendering them (the preflight, when the template is missing)."""
    return [to_example(r, fmt, f"{path}:{r['_line']}", tokenizer) for r in read_jsonl(path, limit)]


def encode(example: Example, tokenizer: Any, max_length: int) -> dict[str, list[int]]:
    """Prompt tokens are masked out of the loss; the completion ends with EOS so the model learns to stop."""
    prompt_ids = tokenizer(example.prompt, add_special_tokens=False)["input_ids"] if example.prompt else []
    if tokenizer.bos_token_id is not None:
        prompt_ids = [tokenizer.bos_token_id, *prompt_ids]
    completion_ids = tokenizer(example.completion, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        completion_ids = [*completion_ids, tokenizer.eos_token_id]
    # Keep the completion when truncating: drop prompt tokens from the left first.
    overflow = len(prompt_ids) + len(completion_ids) - max_length
    if overflow > 0:
        cut = min(overflow, max(0, len(prompt_ids) - 1))
        prompt_ids = prompt_ids[:1] + prompt_ids[1 + cut :] if cut else prompt_ids
        completion_ids = completion_ids[: max_length - len(prompt_ids)]
    input_ids = prompt_ids + completion_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    return {"input_ids": input_ids, "labels": labels}


def micro_batch_order(n_features: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Deterministic shuffled micro-batches for one epoch: a resumed run sees the same order."""
    indices = list(range(n_features))
    random.Random(seed * 1_000_003 + epoch).shuffle(indices)
    return [indices[i : i + batch_size] for i in range(0, n_features, batch_size)]


def collate(features: list[dict[str, list[int]]], pad_id: int, left_pad: bool = False) -> dict[str, Any]:
    """Pad to the longest sequence; returns torch tensors (imported here: data parsing needs no torch).

    Packed rows (they carry position_ids) get position ids and no attention mask: that is how transformers
    recognises packed examples and keeps each one's attention to itself. Their padding is one more
    example of its own, with restarting positions and ignored labels.
    """
    import torch

    longest = max(len(f["input_ids"]) for f in features)
    packed = "position_ids" in features[0]
    ids, labels, mask, positions = [], [], [], []
    for feature in features:
        pad = longest - len(feature["input_ids"])
        pad_ids, pad_labels, pad_mask = [pad_id] * pad, [IGNORE_INDEX] * pad, [0] * pad
        body_mask = [1] * len(feature["input_ids"])
        if left_pad:
            ids.append(pad_ids + feature["input_ids"])
            labels.append(pad_labels + feature.get("labels", feature["input_ids"]))
            mask.append(pad_mask + body_mask)
        else:
            ids.append(feature["input_ids"] + pad_ids)
            labels.append(feature.get("labels", feature["input_ids"]) + pad_labels)
            mask.append(body_mask + pad_mask)
            if packed:
                positions.append(feature["position_ids"] + list(range(pad)))
    batch = {"input_ids": torch.tensor(ids, dtype=torch.long), "labels": torch.tensor(labels, dtype=torch.long)}
    if packed:
        batch["position_ids"] = torch.tensor(positions, dtype=torch.long)
    else:
        batch["attention_mask"] = torch.tensor(mask, dtype=torch.long)
    # Image+text records: the processor's image tensors are stacked image after image (a record's images are
    # in its prompt order, so the model pairs them with the image tokens in row order); its per-token
    # tensors (token type ids) are padded like input_ids.
    for key in sorted({k for f in features for k in f.get("vision", {})}):
        batch[key] = torch.cat([f["vision"][key] for f in features if key in f.get("vision", {})])
    for key in sorted({k for f in features for k in f.get("per_token", {})}):
        rows = []
        for feature in features:
            values, pad = (
                feature.get("per_token", {}).get(key, [0] * len(feature["input_ids"])),
                [0] * (longest - len(feature["input_ids"])),
            )
            rows.append(pad + values if left_pad else values + pad)
        batch[key] = torch.tensor(rows, dtype=torch.long)
    return batch


def iterate_micro_batches(
    features: list[dict[str, list[int]]], batch_size: int, seed: int, start: int = 0
) -> Iterator[tuple[int, list[int]]]:
    """(global micro-batch index, feature indices) from `start` on, epoch after epoch, forever."""
    per_epoch = max(1, -(-len(features) // batch_size))
    index = start
    while True:
        epoch, offset = divmod(index, per_epoch)
        order = micro_batch_order(len(features), batch_size, seed, epoch)
        for position in range(offset, len(order)):
            yield index, order[position]
            index += 1
