"""One trial, start to finish: resolve, fetch, train, evaluate, time, publish. result.json goes last."""

from __future__ import annotations

import json
import logging
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from lora_ablation.api.trial import TrialResult, TrialSpec
from lora_ablation.store import StorageAccessDenied, StorageUnavailable, Store, open_store
from lora_ablation_trainer import adapters, fsdp
from lora_ablation_trainer.data import chat_template_problem, encode, load_examples
from lora_ablation_trainer.effect import adapter_effect
from lora_ablation_trainer.errors import DataError, PermanentTrialError, TransientTrialError
from lora_ablation_trainer.evaluate import evaluate
from lora_ablation_trainer.latency import measure
from lora_ablation_trainer.packing import pack
from lora_ablation_trainer.sources import fetch_file, fetch_model
from lora_ablation_trainer.train import Distributed, train_adapter
from lora_ablation_trainer.vision import fetch_images, with_image_uris

log = logging.getLogger(__name__)
RESULT = "result.json"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def publish(store: Store, result: TrialResult) -> None:
    """result.json as strict JSON (a TrialResult cannot hold NaN or Infinity; allow_nan=False says so again)."""
    store.write_text(RESULT, json.dumps(result.to_wire(), indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def existing_result(store: Store, spec: TrialSpec) -> TrialResult | None:
    """A valid result for this very trial, if a previous run finished it."""
    if not store.exists(RESULT):
        return None
    try:
        result = TrialResult.model_validate(store.read_json(RESULT))  # strict: NaN an older trainer wrote is invalid
    except ValueError:
        log.warning("ignoring an invalid %s at %s; the trial runs again", RESULT, store.uri)
        return None
    return result if result.trial == spec.name else None


def environment(device: torch.device) -> dict[str, str]:
    import peft
    import transformers

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "device": str(device),
        "host": platform.node(),
    }
    if device.type == "cuda":
        env["cuda"] = str(torch.version.cuda)
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _check_images(spec: TrialSpec, vision, examples: list) -> None:
    """Records with images need a vision-language base model, and are not packed."""
    with_images = next((e for e in examples if e.images), None)
    if with_images and vision is None:
        raise DataError(
            f"dataset {spec.dataset.name!r}: {with_images.where} has images, but the base model {spec.base_model.uri} "
            "is text-only; use a vision-language base model (llava, qwen2-vl, gemma3, ...) or text-only records"
        )
    if vision and spec.training.packing:
        raise PermanentTrialError(
            "training.packing: packing is for text models; set it to false for this vision-language base model"
        )


def _weights_label(spec: TrialSpec, dtype: torch.dtype) -> str | None:
    """'nf4 (compute bfloat16)' for a quantized base; None lets the timing read the dtype off the weights."""
    if spec.base_model.quantization == "none":
        return None
    return f"{spec.base_model.quantization} (compute {str(dtype).replace('torch.', '')})"


def run_trial(
    spec: TrialSpec,
    workdir: Path | None = None,
    dist: Distributed | None = None,
) -> TrialResult | None:
    dist = dist or Distributed()
    try:
        store = open_store(spec.storage.uri, spec.storage.endpoint, spec.storage.region)
        done = existing_result(store, spec)
    except StorageUnavailable as error:
        raise TransientTrialError(str(error)) from None
    except StorageAccessDenied as error:
        raise PermanentTrialError(str(error)) from None
    if done is not None:
        log.info("trial %s already has a valid result; nothing to do", spec.name)
        return done
    with tempfile.TemporaryDirectory(prefix="trial-", dir=workdir) as tmp:
        try:
            return _run(spec, store, Path(tmp), dist)
        except StorageUnavailable as error:
            raise TransientTrialError(str(error)) from None
        except StorageAccessDenied as error:
            raise PermanentTrialError(str(error)) from None


def _run(spec: TrialSpec, store: Store, tmp: Path, dist: Distributed) -> TrialResult | None:
    started_at, wall = _now(), time.perf_counter()
    endpoint, region = spec.storage.endpoint, spec.storage.region
    # Everything that can be wrong with the inputs is checked before a weight is loaded.
    model_dir = fetch_model(spec.base_model, tmp / "cache", endpoint, region)
    train_file = fetch_file(spec.dataset.train, tmp / "cache", endpoint, region)
    eval_file = fetch_file(spec.dataset.eval, tmp / "cache", endpoint, region)
    resolution = None if spec.is_baseline else adapters.resolve_targets(spec, model_dir)
    tokenizer = adapters.load_tokenizer(model_dir)
    vision = adapters.load_vision(model_dir)  # a vision-language model's processor renders and encodes records
    renderer = vision.processor if vision else tokenizer
    fmt, max_length = spec.dataset.format, spec.training.max_seq_length
    files = [spec.dataset.train, spec.dataset.eval]
    if fmt == "chat" and (problem := chat_template_problem(renderer, spec.dataset.name, files)):
        raise DataError(problem)
    eval_examples = load_examples(eval_file, fmt, renderer, limit=spec.dataset.max_eval_samples)
    eval_examples = with_image_uris(eval_examples, spec.dataset.eval)
    train_examples = []
    if resolution is not None:
        train_examples = load_examples(train_file, fmt, renderer, limit=spec.dataset.max_train_samples)
        train_examples = with_image_uris(train_examples, spec.dataset.train)
    _check_images(spec, vision, [*train_examples, *eval_examples])
    if vision:
        vision.paths = fetch_images([*train_examples, *eval_examples], tmp / "cache", endpoint, region)

    device = adapters.pick_device()
    if dist.world > 1 and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    dtype = adapters.pick_dtype(spec.base_model.dtype, device)
    sharded = dist.sharded and resolution is not None
    # Under FSDP the whole model never goes to one GPU: built on the host, each layer's shard is moved by fully_shard.
    host = torch.device("cpu")
    model = adapters.load_model(model_dir, dtype, host if sharded else device, spec.base_model.quantization)
    train_metrics, targeted, targeted_params = None, [], []
    if resolution is not None:
        model = adapters.attach_adapter(spec, resolution, model)
        if sharded:
            model = fsdp.shard(model, device, dist.world)
        targeted = sorted(model.targeted_module_names)
        targeted_params = sorted(getattr(model, "targeted_parameter_names", []) or [])
        features = [
            vision.encode(e, max_length) if vision else encode(e, tokenizer, max_length) for e in train_examples
        ]
        if spec.training.packing:
            features = pack(features, max_length)
        train_metrics = train_adapter(
            model,
            features,
            spec.training,
            adapters.make_optimizer(model, spec),
            tokenizer.pad_token_id,
            device,
            store,  # every rank reads a checkpoint to resume; rank 0 alone writes them
            dist,
        )
    if sharded:  # rank 0 evaluates an unsharded copy (fsdp module docstring): gather the adapter, reload the base
        trained = fsdp.gathered_peft_adapter(model)
        del model
        fsdp.release()
        if not dist.is_main:
            return None
        model = adapters.load_model(model_dir, dtype, device, spec.base_model.quantization)
        model = adapters.with_adapter_weights(spec, resolution, model, trained)
    if not dist.is_main:
        return None  # rank 0 alone evaluates, times and publishes
    trainable, total = adapters.count_params(model)
    eval_metrics = evaluate(model, tokenizer, eval_examples, spec.dataset.metric, max_length, device, vision)
    log.info("eval %s = %.4f on %d samples", spec.dataset.metric, eval_metrics.score, eval_metrics.samples)
    # Text prompts only: an image record's features come from the processor (the check is about the adapter).
    checkable = resolution is not None and vision is None
    effect = adapter_effect(model, tokenizer, eval_examples, max_length, device) if checkable else None
    if effect is not None and effect.unchanged:
        log.warning("the adapter leaves the outputs unchanged on %d eval prompts (max |logit change| %.3g)",
                    effect.prompts, effect.max_logit_delta)  # fmt: skip
    latency = (
        measure(model, tokenizer, spec.latency, device, resolution is not None, _weights_label(spec, dtype), vision)
        if spec.latency.enabled
        else None
    )

    adapter_bytes = 0
    if resolution is not None:
        adapter_dir = tmp / "adapter"
        model.save_pretrained(adapter_dir)
        adapter_bytes = (adapter_dir / "adapter_model.safetensors").stat().st_size
        store.upload_dir(adapter_dir, "adapter")
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    seconds = time.perf_counter() - wall
    result = TrialResult(
        ablation=spec.ablation,
        namespace=spec.namespace,
        trial=spec.name,
        dataset=spec.dataset.name,
        modules=spec.modules,
        rank=spec.rank,
        alpha=spec.alpha,
        variant=spec.variant,
        seed=None if spec.is_baseline else spec.training.seed,
        targeted_module_names=targeted,
        targeted_parameter_names=targeted_params,
        trainable_params=trainable if resolution is not None else 0,
        total_params=total,
        adapter_bytes=adapter_bytes,
        train=train_metrics,
        eval=eval_metrics,
        latency=latency,
        adapter_effect=effect,
        environment=environment(device),
        started_at=started_at,
        finished_at=_now(),
        gpu_seconds=round(seconds * max(gpus, 0), 3) if gpus else 0.0,
    )
    publish(store, result)  # last: its presence means the trial is complete
    store.delete_prefix("checkpoints/")
    return result
