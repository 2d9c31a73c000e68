"""Image+text records for vision-language models: where their images are, whether they open, and how the
model's own processor turns a record into token ids (image tokens expanded) and image tensors.

Only the language model is adapted (the catalog resolves module sets inside it); PEFT freezes everything
else, so the vision tower and the projector stay as they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from lora_ablation.modules.catalog import VISION_LANGUAGE_TYPES
from lora_ablation_trainer.data import IGNORE_INDEX, Example
from lora_ablation_trainer.errors import DataError, TrialError
from lora_ablation_trainer.sources import fetch_file

PER_TOKEN = ("token_type_ids", "mm_token_type_ids")  # processor outputs aligned with input_ids
TEXT_ONLY = ("input_ids", "attention_mask", *PER_TOKEN)


def is_vision_language(model_dir: Path) -> bool:
    config = json.loads((model_dir / "config.json").read_text())
    return config.get("model_type") in VISION_LANGUAGE_TYPES


def image_uri(ref: str, dataset_uri: str) -> str:
    """An image reference as a URI: absolute ones as written, relative ones next to the dataset file."""
    if ref.startswith(("s3://", "pvc://", "file://", "/")):
        return ref
    if ref.startswith(("http://", "https://", "hf://")):
        raise DataError(f"image {ref}: only paths relative to the dataset file, s3://, pvc:// or file:// are read")
    return f"{dataset_uri.rsplit('/', 1)[0]}/{ref}"


def open_image(path: Path, label: str):
    """The image as RGB, fully decoded (a truncated file fails here, not in the middle of training)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise DataError(f"{label}: cannot open as an image ({type(error).__name__}: {error})") from None


def with_image_uris(examples: list[Example], dataset_uri: str) -> list[Example]:
    """The examples with their image references made absolute (train and eval files may sit in different places)."""
    try:
        return [
            replace(e, images=tuple(image_uri(r, dataset_uri) for r in e.images)) if e.images else e for e in examples
        ]
    except DataError as error:
        raise DataError(f"{dataset_uri}: {error}") from None


def fetch_images(examples: list[Example], cache: Path, endpoint: str | None, region: str | None) -> dict[str, Path]:
    """Local paths of every image the examples use (references already absolute), keyed by URI."""
    paths: dict[str, Path] = {}
    for example in examples:
        for uri in example.images:
            if uri not in paths:
                try:
                    paths[uri] = fetch_file(uri, cache / "images", endpoint, region)
                except TrialError as error:
                    raise type(error)(f"{example.where}: image {error}") from None
    return paths


def image_problems(examples: list[Example], cache: Path, endpoint: str | None, region: str | None) -> list[str]:
    """The preflight's check: every image exists and opens; one problem per bad image, naming record and file."""
    problems: list[str] = []
    seen: set[str] = set()
    for example in examples:
        for uri in example.images:
            if uri in seen:
                continue
            seen.add(uri)
            try:
                open_image(fetch_file(uri, cache / "images", endpoint, region), f"{example.where}: image {uri}")
            except DataError as error:
                text = str(error)
                problems.append(text if text.startswith(example.where) else f"{example.where}: image {text}")
    return problems


@dataclass
class Vision:
    """A vision-language model's processor and the local files of the images its records use."""

    processor: Any
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def _inputs(self, example: Example) -> dict[str, torch.Tensor]:
        images = [open_image(self.paths[ref], f"{example.where}: image {ref}") for ref in example.images]
        return self.processor(
            text=[example.prompt], images=images or None, add_special_tokens=False, return_tensors="pt"
        )

    def prompt_feature(self, example: Example, max_prompt: int | None = None) -> dict[str, Any]:
        """The prompt's ids (BOS first, image tokens expanded) and its image tensors; no labels."""
        inputs = self._inputs(example)
        ids = inputs["input_ids"][0].tolist()
        bos = self.tokenizer.bos_token_id
        prefix = [bos] if bos is not None and (not ids or ids[0] != bos) else []
        if max_prompt is not None and len(prefix) + len(ids) > max_prompt:
            raise DataError(
                f"{example.where}: the prompt with its image tokens is {len(prefix) + len(ids)} tokens, more than the "
                f"{max_prompt} training.maxSeqLength leaves for it; raise training.maxSeqLength or use smaller images"
            )
        per_token = {k: [0] * len(prefix) + inputs[k][0].tolist() for k in PER_TOKEN if k in inputs}
        vision = {k: v for k, v in inputs.items() if k not in TEXT_ONLY and isinstance(v, torch.Tensor)}
        return {"input_ids": prefix + ids, "vision": vision, "per_token": per_token}

    def encode(self, example: Example, max_length: int) -> dict[str, Any]:
        """As data.encode, for a record with images: the loss on the completion (and EOS) only; image tokens
        are never cut, so a completion that does not fit is shortened instead."""
        feature = self.prompt_feature(example, max_length - 1)
        completion = self.tokenizer(example.completion, add_special_tokens=False)["input_ids"]
        if self.tokenizer.eos_token_id is not None:
            completion = [*completion, self.tokenizer.eos_token_id]
        completion = completion[: max_length - len(feature["input_ids"])]
        prompt_length = len(feature["input_ids"])
        feature["input_ids"] = feature["input_ids"] + completion
        feature["labels"] = [IGNORE_INDEX] * prompt_length + completion
        feature["per_token"] = {k: v + [0] * len(completion) for k, v in feature["per_token"].items()}
        return feature

    def latency_inputs(self, length: int, batch_size: int, ordinary: list[int]) -> dict[str, torch.Tensor]:
        """A fixed prompt with one image: a deterministic picture, then ordinary tokens up to `length` tokens."""
        from PIL import Image

        size = _image_size(self.processor)
        pixels = bytes((x * 7 + y * 3) % 256 for y in range(size) for x in range(size) for _ in range(3))
        image = Image.frombytes("RGB", (size, size), pixels)
        token = getattr(self.processor, "image_token", None) or "<image>"
        inputs = self.processor(text=[token], images=[image], add_special_tokens=False, return_tensors="pt")
        ids = inputs["input_ids"][0].tolist()
        filler = [ordinary[(7 * i + 3) % len(ordinary)] for i in range(max(length - len(ids), 0))]
        out = {"input_ids": torch.tensor([ids + filler] * batch_size)}
        out["attention_mask"] = torch.ones_like(out["input_ids"])
        for key in PER_TOKEN:
            if key in inputs:
                out[key] = torch.tensor([inputs[key][0].tolist() + [0] * len(filler)] * batch_size)
        for key, value in inputs.items():
            if key not in TEXT_ONLY and isinstance(value, torch.Tensor):
                out[key] = torch.cat([value] * batch_size)
        return out


def _image_size(processor: Any) -> int:
    size = getattr(processor.image_processor, "size", None) or {}
    if isinstance(size, dict):
        return int(size.get("height") or size.get("shortest_edge") or 224)
    return int(getattr(size, "height", None) or getattr(size, "shortest_edge", None) or 224)
