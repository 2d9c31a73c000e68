"""The training loop: completion-only loss, gradient accumulation, data parallel across GPUs, and
checkpoints in storage so a killed pod resumes instead of starting over."""

from __future__ import annotations

import io
import logging
import math
import random
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy
import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from transformers import get_linear_schedule_with_warmup

from lora_ablation.api.curves import downsample
from lora_ablation.api.spec import TrainingSpec
from lora_ablation.api.trial import TrainMetrics
from lora_ablation.storage.store import Store
from lora_ablation_trainer import fsdp
from lora_ablation_trainer.data import collate, iterate_micro_batches
from lora_ablation_trainer.errors import PermanentTrialError
from lora_ablation_trainer.loss import completion_loss, keeps_scored_logits
from lora_ablation_trainer.packing import require_isolation
from lora_ablation_trainer.progress import ProgressReporter

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoints/latest.pt"


@dataclass
class Distributed:
    """Where this process sits in a process group (world 1 without torchrun): data parallel, or FSDP when
    `sharded`. `rank` is global (rank 0 alone publishes), `local_rank` picks the GPU on this node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    sharded: bool = False
    # A CPU (gloo) group with a long timeout, for the one wait that may outlast a collective's timeout: the
    # other ranks waiting while rank 0 evaluates, times and publishes a trial (see distributed.between_trials).
    idle_group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wait_for_main(self) -> None:
        """Every rank waits here until rank 0 has published the trial, however long that takes."""
        if self.world > 1:
            torch.distributed.barrier(group=self.idle_group)


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    resumed_from: int | None = None


def total_steps(training: TrainingSpec, n_features: int, world: int) -> int:
    if training.max_steps:
        return training.max_steps
    micro_per_epoch = math.ceil(n_features / training.batch_size)
    per_step = training.gradient_accumulation * world
    return max(1, math.ceil((training.epochs or 1.0) * micro_per_epoch / per_step))


def _save(store: Store, model, optimizer, scheduler, state: TrainState, dist: Distributed) -> None:
    """Rank 0 writes; under FSDP every rank first takes part in gathering the full adapter and optimizer state."""
    if dist.sharded:  # keyed by parameter name, whole tensors: readable whatever the number of processes
        adapter, optimizer_state = fsdp.full_adapter(model), fsdp.full_optimizer(model, optimizer)
    elif dist.is_main:
        adapter, optimizer_state = get_peft_model_state_dict(model), optimizer.state_dict()
    if not dist.is_main:
        return
    write_checkpoint(store, "fsdp" if dist.sharded else "none", adapter, optimizer_state, scheduler, state)


def write_checkpoint(store: Store, sharding: str, adapter: dict, optimizer_state: dict, scheduler,
                     state: TrainState) -> None:  # fmt: skip
    """One trial's checkpoint, in the one format lone and fused runs both write and read."""
    buffer = io.BytesIO()
    torch.save(
        {
            "sharding": sharding,
            "adapter": adapter,
            "optimizer": optimizer_state,
            "scheduler": scheduler.state_dict(),
            "state": state.__dict__,
            **_rng_states(),
        },
        buffer,
    )
    store.write_bytes(CHECKPOINT, buffer.getvalue())  # one object: a half-written checkpoint is never read


def _load(store: Store, model, optimizer, scheduler, dist: Distributed) -> TrainState | None:
    """Every rank reads the checkpoint, so all resume from the same step with the same adapter."""
    if not store.exists(CHECKPOINT):
        return None
    payload = torch.load(io.BytesIO(store.read_bytes(CHECKPOINT)), map_location="cpu", weights_only=False)
    written = payload.get("sharding", "none")
    if written != ("fsdp" if dist.sharded else "none"):  # the layouts differ; the trial's sharding was changed
        log.warning("ignoring a checkpoint written with sharding %s; the trial starts over", written)
        return None
    if dist.sharded:
        fsdp.load_full(model, optimizer, payload["adapter"], payload["optimizer"])
    else:
        set_peft_model_state_dict(model, payload["adapter"])
        optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    _restore_rng(payload)
    state = TrainState(**payload["state"])
    state.resumed_from = state.step
    return state


def _rng_states() -> dict:
    """Every generator a resumed run must continue: torch's CPU one and, on GPUs, every device's (dropout draws
    there), and Python's and numpy's global ones, which libraries in the process may draw from."""
    states = {"rng": torch.get_rng_state(), "python_rng": random.getstate(), "numpy_rng": numpy.random.get_state()}
    if torch.cuda.is_available():
        states["cuda_rng"] = torch.cuda.get_rng_state_all()
    return states


def _restore_rng(payload: dict) -> None:
    """What the checkpoint holds; one written before a key existed (CPU state only) restores what it has."""
    torch.set_rng_state(payload["rng"])
    if "python_rng" in payload:
        random.setstate(payload["python_rng"])
    if "numpy_rng" in payload:
        numpy.random.set_state(payload["numpy_rng"])
    cuda_states = payload.get("cuda_rng")
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:  # written with another number of visible GPUs: the devices both runs have
            log.warning("the checkpoint holds the RNG of %d GPUs, this process sees %d", len(cuda_states),
                        torch.cuda.device_count())  # fmt: skip
            for index, state in enumerate(cuda_states[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(state, index)


def _max_rss() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


class PeakMemory:
    """One trial's own peak memory, from the start of its training (several trials share a process in a batch).
    On CUDA the peak allocation, its statistics reset here. On CPU the process's peak resident set (ru_maxrss),
    which only grows: it is reset through /proc/self/clear_refs (Linux 4.0 on); where that is refused, a trial
    that never exceeds an earlier trial's peak reports None rather than that trial's figure."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.inherited: int | None = None  # the process's peak before this trial, when it could not be reset
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
        except OSError:
            self.inherited = _max_rss()

    def bytes(self) -> int | None:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        peak = _max_rss()
        return None if self.inherited is not None and peak <= self.inherited else peak


def _sync_gradients(model, dist: Distributed) -> None:
    """Average gradients across ranks once per optimizer step (plain all-reduce; no DDP wrapper needed).
    FSDP has reduce-scattered them already."""
    if dist.world == 1 or dist.sharded:
        return
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.grad is not None:
            torch.distributed.all_reduce(parameter.grad)
            parameter.grad /= dist.world


def _step_figures(loss_sum: torch.Tensor, norm: torch.Tensor, dist: Distributed, tokens: int
                  ) -> tuple[float, float, int]:  # fmt: skip
    """The step's loss (mean over ranks), gradient norm and tokens (every rank's), read back in one device sync."""
    if dist.world > 1:
        summed = torch.stack([loss_sum, torch.tensor(float(tokens), device=loss_sum.device)]).double()
        torch.distributed.all_reduce(summed)
        loss_sum, tokens = (summed[0] / dist.world).float(), round(float(summed[1]))
    loss, grad_norm = torch.stack([loss_sum, fsdp.local_norm(norm).to(loss_sum)]).tolist()
    return loss, grad_norm, tokens


def _diverged(state: TrainState, steps: int, loss: float, grad_norm: float, training: TrainingSpec,
              peers_finite: bool = False) -> Exception:  # fmt: skip
    """The divergence as a permanent error whose hint names what is at fault. `peers_finite`: other adapters of a
    fused group took the same step on the same base and batch with finite figures."""
    step = state.step + 1
    what = f"the training loss is {loss}" if not math.isfinite(loss) else f"the gradient norm is {grad_norm}"
    peers = ("the other trials of its fused group took this step on the same base and data with finite figures, so "
             "this trial's own settings are at fault; ") if peers_finite else ""  # fmt: skip
    if state.step == 0 and not math.isfinite(loss) and not peers_finite:
        # No update yet: the adapter starts as a no-op, so the base model itself gives the non-finite loss.
        hint = (
            "that is before any update, so the base model gives a non-finite loss on this data: check its weights, "
            "and load it in bfloat16 or float32 (baseModel.dtype) rather than float16"
        )
    elif state.step == 0:
        # A finite loss with a non-finite gradient before any update: the adapter's scale (alpha / r, or
        # alpha / sqrt(r) for rslora) multiplies its gradients and overflows them.
        hint = (
            "that is before any update, with the base model's loss finite: the adapter's scale (alpha / r) "
            "overflows its gradients; lower search.alphaOverRank (lora_alpha = alphaOverRank x r)"
        )
    else:
        hint = (f"the last finite loss was {state.losses[-1]:.4f}; " if state.losses else "") + (
            f"lower training.learningRate (now {training.learning_rate:g}), raise training.warmupRatio, "
            "or load the base model in bfloat16 or float32 (baseModel.dtype) rather than float16"
        )
    return PermanentTrialError(f"diverged at step {step} of {steps}: {what}; {peers}{hint}; no result was published")


def train_adapter(
    model,
    features: list[dict[str, list[int]]],
    training: TrainingSpec,
    optimizer: torch.optim.Optimizer,
    pad_id: int,
    device: torch.device,
    checkpoints: Store | None,
    dist: Distributed | None = None,
    log_every: int = 10,
    stop_at: int | None = None,
    progress: ProgressReporter | None = None,
) -> TrainMetrics:
    """Train to the end, or to step `stop_at` (stage one: checkpointed there, the schedule still spans every step).
    `progress` (rank 0's) hears of every step and writes progress.json at its own interval."""
    dist = dist or Distributed()
    peak = PeakMemory(device)
    steps = total_steps(training, len(features), dist.world)
    stop = min(stop_at or steps, steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(training.warmup_ratio * steps), steps)
    state = (_load(checkpoints, model, optimizer, scheduler, dist) if checkpoints else None) or TrainState()
    if state.resumed_from is not None:
        log.info("resuming from checkpoint at step %d of %d", state.step, steps)
    micro_per_step = training.gradient_accumulation * dist.world
    batches = iterate_micro_batches(features, training.batch_size, training.seed, start=state.step * micro_per_step)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )
    if training.packing:
        require_isolation(model, device)
    trimmed = keeps_scored_logits(model, device)  # logits only where a label is scored
    model.train()
    while state.step < stop:
        started = time.perf_counter()
        loss_sum, step_tokens = torch.zeros((), device=device), 0  # summed on the device: no sync per micro-step
        for k in range(micro_per_step):
            _, indices = next(batches)
            if k % dist.world != dist.rank:
                continue
            fsdp.gradient_sync(model, k >= micro_per_step - dist.world)  # this rank's last micro-batch of the step
            chosen = [features[i] for i in indices]
            step_tokens += sum(len(f["input_ids"]) for f in chosen)  # real tokens, not padding
            batch = {key: value.to(device) for key, value in collate(chosen, pad_id).items()}
            with autocast:  # no KV cache: with one, transformers would not read packed rows as separate examples
                loss = completion_loss(model, batch) if trimmed else model(**batch, use_cache=False).loss
                loss = loss / training.gradient_accumulation
            loss.backward()
            loss_sum += loss.detach().float()
        _sync_gradients(model, dist)
        norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        step_loss, grad_norm, step_tokens = _step_figures(loss_sum, norm, dist, step_tokens)
        if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
            # Before the update, so no checkpoint or result ever holds NaN weights; every rank sees the same figures.
            raise _diverged(state, steps, step_loss, grad_norm, training)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        state.step += 1
        state.seconds += time.perf_counter() - started
        state.tokens += step_tokens
        state.losses.append(step_loss)
        if progress is not None:
            progress.step(state.step, stop, step_loss, state.tokens, state.seconds)
        if state.step % log_every == 0 or state.step == stop:
            log.info(
                "step %d/%d loss %.4f tokens/s %.0f",
                state.step,
                steps,
                step_loss,
                state.tokens / max(state.seconds, 1e-9),
            )
        periodic = state.step % training.checkpoint_every_steps == 0 and state.step < steps
        if checkpoints and (periodic or (stop_at is not None and state.step == stop)):
            _save(checkpoints, model, optimizer, scheduler, state, dist)  # every rank: FSDP gathers; rank 0 writes
    return metrics_of(state, peak.bytes())


def metrics_of(state: TrainState, peak_memory_bytes: int | None) -> TrainMetrics:
    """What a finished (or stage-one) run reports from its state."""
    window = max(1, min(10, len(state.losses) // 5 or 1))
    return TrainMetrics(
        steps=state.step,
        tokens=state.tokens,
        seconds=round(state.seconds, 4),
        tokens_per_second=round(state.tokens / max(state.seconds, 1e-9), 2),
        loss_first=round(sum(state.losses[:window]) / window, 5),
        loss_last=round(sum(state.losses[-window:]) / window, 5),
        loss_min=round(min(state.losses), 5),
        curve=downsample(state.losses),  # a resumed run's losses come back with its checkpoint: the whole run
        peak_memory_bytes=peak_memory_bytes,
        resumed_from_step=state.resumed_from,
    )
