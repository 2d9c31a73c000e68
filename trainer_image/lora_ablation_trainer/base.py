"""The part of a trial that several trials of one pod share: the base model (fetched, its module tree read and
its weights loaded once) and the datasets (fetched and parsed once per URI). After each trial the adapter
comes off again, and the base weights are checked to be what was loaded, so the next trial starts clean."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from lora_ablation.api.trial import TrialSpec
from lora_ablation.modules.inventory import ModelInventory
from lora_ablation_trainer import adapters
from lora_ablation_trainer.data import Example, chat_template_problem, load_examples
from lora_ablation_trainer.errors import DataError, PermanentTrialError
from lora_ablation_trainer.module_tree import tree_inventory
from lora_ablation_trainer.sources import fetch_file, fetch_model
from lora_ablation_trainer.train import Distributed
from lora_ablation_trainer.vision import Vision, fetch_images, with_image_uris

log = logging.getLogger(__name__)


@dataclass
class TrialData:
    train: list[Example]
    eval: list[Example]
    images: dict[str, Path] = field(default_factory=dict)


@dataclass
class Base:
    """One base model for one or many trials (a batch shares its baseModel, so one load serves all)."""

    spec: TrialSpec  # any trial of the batch: they share baseModel and storage endpoint
    cache: Path
    dist: Distributed
    shared: bool = False  # several trials use it: take each adapter off and check the weights afterwards
    model_dir: Path = field(init=False)
    tokenizer: Any = field(init=False)
    vision: Vision | None = field(init=False)
    device: torch.device = field(init=False)
    dtype: torch.dtype = field(init=False)
    _inventory: ModelInventory | None = None
    _model: torch.nn.Module | None = None
    _fingerprint: list[float] = field(default_factory=list)
    _data: dict[str, TrialData] = field(default_factory=dict)

    def __post_init__(self) -> None:
        storage = self.spec.storage
        self.model_dir = fetch_model(self.spec.base_model, self.cache, storage.endpoint, storage.region)
        self.tokenizer = adapters.load_tokenizer(self.model_dir)
        self.vision = adapters.load_vision(self.model_dir)  # a VLM's processor renders and encodes records
        device = adapters.pick_device()
        if self.dist.world > 1 and device.type == "cuda":
            device = torch.device("cuda", self.dist.local_rank)  # the GPU on this node, not the global rank
        self.device = device
        self.dtype = adapters.pick_dtype(self.spec.base_model.dtype, device)

    def targets(self, spec: TrialSpec) -> adapters.Targets | None:
        """The trial's modules and layers on the real module tree (meta device, read once); None for the baseline."""
        if spec.is_baseline:
            return None
        self._inventory = self._inventory or tree_inventory(self.model_dir)
        return adapters.resolve_targets(spec, self.model_dir, self._inventory)

    def data(self, spec: TrialSpec) -> TrialData:
        """The trial's records, checked and parsed (no weight is loaded for this)."""
        key = spec.dataset.model_dump_json() + spec.training.model_dump_json() + str(spec.is_baseline)
        if key not in self._data:
            self._data[key] = self._load_data(spec)
        data = self._data[key]
        if self.vision:
            self.vision.paths.update(data.images)
        return data

    def _load_data(self, spec: TrialSpec) -> TrialData:
        endpoint, region = spec.storage.endpoint, spec.storage.region
        dataset, renderer = spec.dataset, self.vision.processor if self.vision else self.tokenizer
        train_file = fetch_file(dataset.train, self.cache, endpoint, region)
        eval_file = fetch_file(dataset.eval, self.cache, endpoint, region)
        if dataset.format == "chat" and (
            problem := chat_template_problem(renderer, dataset.name, [dataset.train, dataset.eval])
        ):
            raise DataError(problem)
        eval_examples = load_examples(eval_file, dataset.format, renderer, limit=dataset.max_eval_samples)
        eval_examples = with_image_uris(eval_examples, dataset.eval)
        train_examples = []
        if not spec.is_baseline:
            train_examples = load_examples(train_file, dataset.format, renderer, limit=dataset.max_train_samples)
            train_examples = with_image_uris(train_examples, dataset.train)
        self._check_images(spec, [*train_examples, *eval_examples])
        images = fetch_images([*train_examples, *eval_examples], self.cache, endpoint, region) if self.vision else {}
        return TrialData(train_examples, eval_examples, images)

    def _check_images(self, spec: TrialSpec, examples: list[Example]) -> None:
        """Records with images need a vision-language base model, and are not packed."""
        with_images = next((e for e in examples if e.images), None)
        if with_images and self.vision is None:
            raise DataError(
                f"dataset {spec.dataset.name!r}: {with_images.where} has images, but the base model "
                f"{spec.base_model.uri} is text-only; use a vision-language base model (llava, qwen2-vl, gemma3, ...) "
                "or text-only records"
            )
        if self.vision and spec.training.packing:
            raise PermanentTrialError(
                "training.packing: packing is for text models; set it to false for this vision-language base model"
            )

    def model(self) -> torch.nn.Module:
        """The base model's weights, loaded on first use."""
        if self._model is None:
            quantization = self.spec.base_model.quantization
            log.info("loading the base model's weights (%s)", self.spec.base_model.uri)
            self._model = adapters.load_model(self.model_dir, self.dtype, self.device, quantization)
            self._fingerprint = _fingerprint(self._model) if self.shared else []
        return self._model

    def host_model(self) -> torch.nn.Module:
        """A private copy on the host, for a sharded trial: fully_shard moves each layer's shard to its GPU (the
        whole model never goes to one) and changes the modules in place, so it cannot be the shared base."""
        host = torch.device("cpu")
        return adapters.load_model(self.model_dir, self.dtype, host, self.spec.base_model.quantization)

    def release(self, model: torch.nn.Module | None) -> None:
        """Take the trial's adapter off (unload, no merge), so the next trial of the pod starts from the base."""
        if self._model is None or not self.shared:
            return
        if model is not None and hasattr(model, "unload"):
            model.unload()  # puts the original modules back in place, in self._model
        base = self._model
        base.eval()
        if getattr(base, "is_gradient_checkpointing", False):
            base.gradient_checkpointing_disable()
        leftover = any(isinstance(m, BaseTunerLayer) for m in base.modules())
        if leftover or not _same(self._fingerprint, _fingerprint(base)):
            # A trial that failed half-way through attaching, or a merge into the base: load it again.
            log.warning("the base model's weights changed during the trial; loading them again for the next one")
            self._model = None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        elif self.device.type == "cuda":
            torch.cuda.empty_cache()


def _fingerprint(model: torch.nn.Module) -> list[float]:
    """Per-parameter sums in float64: one read of the weights, no copy of them."""
    with torch.no_grad():
        return [float(p.sum(dtype=torch.float64)) for p in model.parameters()]


def _same(before: list[float], after: list[float]) -> bool:
    # A tolerance for summation order only; a merge moves far more.
    if len(before) != len(after):
        return False
    return all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(before, after, strict=True))
