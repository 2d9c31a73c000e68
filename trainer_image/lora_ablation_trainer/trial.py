"""One trial on a loaded base model: attach its adapter, train (to the end, or to its stage-one step),
evaluate, time, publish; then take the adapter off again. result.json (or stage-one.json) goes last."""

from __future__ import annotations

import logging
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lora_ablation.api.curves import EvalPoint
from lora_ablation.api.stages import StageOneResult
from lora_ablation.api.trial import TrainMetrics, TrialResult, TrialSpec
from lora_ablation.storage.store import Store
from lora_ablation.tracking import log_trial
from lora_ablation_trainer import adapters, fsdp
from lora_ablation_trainer.base import Base, TrialData
from lora_ablation_trainer.data import encode
from lora_ablation_trainer.distributed import node_count
from lora_ablation_trainer.effect import adapter_effect
from lora_ablation_trainer.evaluate import evaluate
from lora_ablation_trainer.latency import measure
from lora_ablation_trainer.outputs import existing_stage_one, now, publish, write_stage_one
from lora_ablation_trainer.packing import pack
from lora_ablation_trainer.progress import ProgressReporter
from lora_ablation_trainer.train import total_steps, train_adapter

log = logging.getLogger(__name__)


@dataclass
class Clock:
    """A trial's cost: wall-clock x devices and the process's CPU time, from its start. Devices are this node's
    GPUs times the trial's nodes (PET_NNODES: every node of a multi-node trial holds as many), or the nodes on
    CPU. Rank 0 alone reads the clock; the other nodes' CPU time is not in cpu_seconds."""

    started_at: str = field(default_factory=now)
    wall: float = field(default_factory=time.perf_counter)
    cpu: float = field(default_factory=time.process_time)

    def figures(self, device: torch.device) -> dict[str, float]:
        seconds = time.perf_counter() - self.wall
        nodes = node_count()
        gpus = (torch.cuda.device_count() if device.type == "cuda" else 0) * nodes
        return {
            "gpu_seconds": round(seconds * gpus, 3),
            "compute_seconds": round(seconds * max(gpus, nodes), 3),
            "cpu_seconds": round(time.process_time() - self.cpu, 3),
        }


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


def _weights_label(spec: TrialSpec, dtype: torch.dtype) -> str | None:
    """'nf4 (compute bfloat16)' for a quantized base; None lets the timing read the dtype off the weights."""
    if spec.base_model.quantization == "none":
        return None
    return f"{spec.base_model.quantization} (compute {str(dtype).replace('torch.', '')})"


@dataclass
class Trained:
    """A trial trained elsewhere (in a fused group): what the training reported and the adapter it left."""

    metrics: TrainMetrics
    steps: int
    weights: dict
    progress: ProgressReporter | None = None


def run_on_base(
    spec: TrialSpec,
    store: Store,
    base: Base,
    targets: adapters.Targets | None,
    data: TrialData,
    tmp: Path,
    clock: Clock,
    trained: Trained | None = None,
) -> TrialResult | StageOneResult | None:
    """The trial on `base`'s model; the adapter comes off afterwards, whatever happened. `trained`: the adapter
    was trained in a fused group; it goes on the base with its weights and is evaluated, timed and published alone.

    Sharded (FSDP), the trial trains on a private host copy sharded across the ranks; then rank 0 gathers the
    adapter and evaluates, times and publishes it on the unsharded base, like any other trial."""
    if (targets is None or trained is not None) and not base.dist.is_main:
        # The baseline trains nothing, and a fused adapter trained already: rank 0 alone evaluates them. No other
        # rank loads the base for them (in a sharded batch a whole unsharded copy would stay on every GPU).
        return None
    model = None
    sharded = base.dist.sharded and targets is not None and trained is None
    # Rank 0 alone reports; the baseline trains nothing, so it has no progress to report.
    progress = ProgressReporter(store, spec.name) if base.dist.is_main and targets is not None else None
    if trained is not None:
        progress = trained.progress
    try:
        if trained is not None:
            model = adapters.with_adapter_weights(spec, targets, base.model(), trained.weights)
            train_metrics, steps = trained.metrics, trained.steps
        else:
            model = base.host_model() if sharded else base.model()
            if targets is not None:
                model = adapters.attach_adapter(spec, targets, model)
                if sharded:
                    model = fsdp.shard(model, base.device, base.dist.world)
            train_metrics, steps = _train(spec, store, base, targets, data, model, progress)
        if sharded:
            trained = fsdp.gathered_peft_adapter(model)
            model = None
            fsdp.release()
            if base.dist.is_main:
                model = adapters.with_adapter_weights(spec, targets, base.model(), trained)
        if not base.dist.is_main:
            return None  # rank 0 alone evaluates, times and publishes
        if spec.stage_one is not None:
            return _stage_one(spec, store, base, data, model, train_metrics, steps, clock, progress)
        return _report(spec, store, base, targets, data, model, train_metrics, tmp, clock, progress)
    finally:
        if progress is not None:
            progress.close()
        base.release(model)


def training_features(spec: TrialSpec, base: Base, data: TrialData) -> list[dict]:
    """The trial's training records encoded (and packed, when the recipe packs) for its base."""
    tokenizer, vision, max_length = base.tokenizer, base.vision, spec.training.max_seq_length
    features = [vision.encode(e, max_length) if vision else encode(e, tokenizer, max_length) for e in data.train]
    return pack(features, max_length) if spec.training.packing else features


def _train(spec, store, base, targets, data, model, progress=None):
    tokenizer, device, dist = base.tokenizer, base.device, base.dist
    train_metrics, steps = None, 0
    if targets is not None:
        features = training_features(spec, base, data)
        steps = total_steps(spec.training, len(features), dist.world)
        stop_at = math.ceil(spec.stage_one.fraction * steps) if spec.stage_one else None
        train_metrics = train_adapter(
            model,
            features,
            spec.training,
            adapters.make_optimizer(model, spec),
            tokenizer.pad_token_id,
            device,
            store,  # every rank reads a checkpoint to resume; rank 0 alone writes them
            dist,
            stop_at=stop_at,
            progress=progress,
        )
    return train_metrics, steps


def _report(spec, store, base, targets, data, model, train_metrics, tmp, clock, progress=None):
    tokenizer, vision, device = base.tokenizer, base.vision, base.device
    max_length = spec.training.max_seq_length
    trainable, total = adapters.count_params(model)
    eval_metrics = evaluate(model, tokenizer, data.eval, spec.dataset.metric, max_length, device, vision)
    log.info("eval %s = %.4f on %d samples", spec.dataset.metric, eval_metrics.score, eval_metrics.samples)
    if progress is not None and train_metrics is not None:
        progress.evaluated(train_metrics.steps, eval_metrics.score, eval_metrics.eval_loss)
    # Text prompts only: an image record's features come from the processor (the check is about the adapter).
    checkable = targets is not None and vision is None
    effect = adapter_effect(model, tokenizer, data.eval, max_length, device) if checkable else None
    if effect is not None and effect.unchanged:
        log.warning("the adapter leaves the outputs unchanged on %d eval prompts (max |logit change| %.3g)",
                    effect.prompts, effect.max_logit_delta)  # fmt: skip
    latency = (
        measure(model, tokenizer, spec.latency, device, targets is not None, _weights_label(spec, base.dtype), vision)
        if spec.latency.enabled
        else None
    )
    adapter_bytes = 0
    if targets is not None:
        adapter_dir = tmp / "adapter"
        model.save_pretrained(adapter_dir)
        adapter_bytes = (adapter_dir / "adapter_model.safetensors").stat().st_size
        store.upload_dir(adapter_dir, "adapter")
    cost = clock.figures(device)
    earlier = existing_stage_one(store, spec)  # a two-stage trial's first stage counts too
    if earlier is not None:
        cost["compute_seconds"] = round(cost["compute_seconds"] + earlier.compute_seconds, 3)
        cost["gpu_seconds"] = round(cost["gpu_seconds"] + earlier.gpu_seconds, 3)
        cost["cpu_seconds"] = round(cost["cpu_seconds"] + (earlier.cpu_seconds or 0.0), 3)
    if train_metrics is not None:
        points = [EvalPoint(stage="stage-one", step=earlier.step, score=earlier.score, eval_loss=earlier.eval_loss)
                  ] if earlier is not None else []  # fmt: skip
        points.append(EvalPoint(stage="final", step=train_metrics.steps, score=eval_metrics.score,
                                eval_loss=eval_metrics.eval_loss))  # fmt: skip
        train_metrics = train_metrics.model_copy(update={"eval_points": points})
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
        layers=spec.layers,
        targeted_module_names=sorted(model.targeted_module_names) if targets is not None else [],
        targeted_parameter_names=sorted(getattr(model, "targeted_parameter_names", []) or []) if targets else [],
        trainable_params=trainable if targets is not None else 0,
        total_params=total,
        adapter_bytes=adapter_bytes,
        train=train_metrics,
        eval=eval_metrics,
        latency=latency,
        adapter_effect=effect,
        environment=environment(device),
        started_at=clock.started_at,
        finished_at=now(),
        **cost,
    )
    publish(store, result)  # last: its presence means the trial is complete
    store.delete_prefix("checkpoints/")
    if spec.tracking is not None:  # after the result: a tracking server that is down only costs a warning
        log_trial(spec, result, tmp / "adapter" if targets is not None else None)
    return result


def _stage_one(spec, store, base, data, model, train_metrics, steps, clock, progress=None) -> StageOneResult:
    """Score at the stage-one checkpoint (already saved by the training loop); no latency, no adapter upload."""
    limit = spec.stage_one.eval_samples or len(data.eval)  # data.eval already holds maxEvalSamples at most
    max_length = spec.training.max_seq_length
    metrics = evaluate(
        model, base.tokenizer, data.eval[:limit], spec.dataset.metric, max_length, base.device, base.vision
    )
    log.info("stage one: step %d of %d, eval %s = %.4f on %d samples", train_metrics.steps, steps,
             spec.dataset.metric, metrics.score, metrics.samples)  # fmt: skip
    if progress is not None:
        progress.evaluated(train_metrics.steps, metrics.score, metrics.eval_loss)
    cost = clock.figures(base.device)
    stage_one = StageOneResult(
        trial=spec.name,
        dataset=spec.dataset.name,
        step=train_metrics.steps,
        steps=steps,
        metric=spec.dataset.metric,
        score=metrics.score,
        samples=metrics.samples,
        eval_loss=metrics.eval_loss,
        loss_last=train_metrics.loss_last,
        curve=train_metrics.curve,
        compute_seconds=cost["compute_seconds"],
        gpu_seconds=cost["gpu_seconds"],
        cpu_seconds=cost["cpu_seconds"],
        finished_at=now(),
    )
    write_stage_one(store, stage_one)
    return stage_one
