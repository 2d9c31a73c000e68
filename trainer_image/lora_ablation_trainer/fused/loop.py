"""The fused training loop: per micro-step one forward and one backward over the base for every adapter still
training, each on the micro-batch it would see alone (its seed, its order, from its own resume step); per
optimizer step each adapter clips, steps and schedules on its own. An adapter whose loss or gradient norm is not
finite leaves the group with its trial's error, before its update; the others go on. An adapter that reaches its
stop (its last step, or its stage-one step) leaves the group; the rest go on fused.

Each trial's checkpoint is its own file, in the format a lone run writes, so a survivor of stage one resumes in
any group, or alone. The global RNG is not part of a fused run (dropout draws from each adapter's own stream).

Data parallel (several processes, not sharded), as a lone trial: of each optimizer step's micro-batches, rank r
takes every world-th from r on; every adapter's gradients, losses and token counts are summed across the ranks in
one all-reduce, so every rank clips, steps and judges divergence on the same figures, and rank 0 alone writes
checkpoints and progress.
"""

from __future__ import annotations

import io
import logging
import math
import time

import torch
from transformers import get_linear_schedule_with_warmup

from lora_ablation.api.trial import TrainMetrics
from lora_ablation_trainer.data import collate, iterate_micro_batches
from lora_ablation_trainer.fused.forward import Block, FusedForward
from lora_ablation_trainer.fused.group import Member, adapter_weights, load_adapter_weights
from lora_ablation_trainer.loss import keeps_scored_logits, scored_positions
from lora_ablation_trainer.packing import require_isolation
from lora_ablation_trainer.train import (
    CHECKPOINT,
    Distributed,
    PeakMemory,
    TrainState,
    _diverged,
    metrics_of,
    total_steps,
    write_checkpoint,
)

log = logging.getLogger(__name__)


def _save(model, member: Member) -> None:
    # The global RNG goes in for a lone resume's sake; a fused run draws from the adapters' own streams.
    write_checkpoint(member.store, "none", adapter_weights(model, member), member.optimizer.state_dict(),
                     member.scheduler, member.state)  # fmt: skip


def _resume(model, member: Member) -> None:
    if not member.store.exists(CHECKPOINT):
        return
    payload = torch.load(io.BytesIO(member.store.read_bytes(CHECKPOINT)), map_location="cpu", weights_only=False)
    if payload.get("sharding", "none") != "none":
        log.warning("trial %s: ignoring a checkpoint written sharded; the trial starts over", member.spec.name)
        return
    load_adapter_weights(model, member, payload["adapter"])
    member.optimizer.load_state_dict(payload["optimizer"])
    member.scheduler.load_state_dict(payload["scheduler"])
    member.state = TrainState(**payload["state"])
    member.state.resumed_from = member.state.step
    log.info("trial %s: resuming from checkpoint at step %d of %d", member.spec.name, member.state.step,
             member.steps)  # fmt: skip


def _prepare(model, member: Member, world: int) -> None:
    training = member.training
    member.steps = total_steps(training, len(member.features), world)
    stage_one = member.spec.stage_one
    member.stop = min(math.ceil(stage_one.fraction * member.steps) if stage_one else member.steps, member.steps)
    warmup = math.ceil(training.warmup_ratio * member.steps)
    member.scheduler = get_linear_schedule_with_warmup(member.optimizer, warmup, member.steps)
    _resume(model, member)
    start = member.state.step * training.gradient_accumulation * world
    member.batches = iterate_micro_batches(member.features, training.batch_size, training.seed, start=start)


def _losses(model, batch: dict, blocks: list[Block], trimmed: bool) -> list[torch.Tensor]:
    """Each block's mean cross-entropy over its own label tokens, from one forward of the whole batch."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if trimmed:
        keep = scored_positions(labels)
        logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits  # (kept positions, vocabulary)
        targets = labels[:, 1:][keep[:, :-1]]
        counts = keep.sum(dim=1).tolist()
    else:
        full = model(**inputs, use_cache=False).logits
    losses, offset = [], 0
    for block in blocks:
        if trimmed:
            kept = sum(counts[block.start : block.stop])
            rows, wanted = logits[offset : offset + kept], targets[offset : offset + kept]
            offset += kept
        else:  # what the model's own loss computes: shifted, label tokens only
            shifted = labels[block.start : block.stop, 1:]
            mask = shifted != -100
            rows, wanted = full[block.start : block.stop, :-1][mask], shifted[mask]
        if rows.shape[0] == 0:  # no label token in this micro-batch: no gradient for this adapter
            losses.append((logits if trimmed else full).sum() * 0.0)
            continue
        losses.append(torch.nn.functional.cross_entropy(rows.float(), wanted))
    return losses


def train_fused(model, members: list[Member], pad_id: int, device: torch.device, log_every: int = 10,
                dist: Distributed | None = None) -> dict[str, TrainMetrics]:  # fmt: skip
    """Train every member to its stop; returns each surviving member's metrics by trial name (a member that
    diverged has its `error` set instead). Every rank of `dist` calls it with the same members."""
    dist = dist or Distributed()
    if dist.sharded:
        raise ValueError("fused training is data-parallel: a sharded batch trains its trials alone")
    peak = PeakMemory(device)
    for member in members:
        _prepare(model, member, dist.world)
    forward = FusedForward(model)
    for member in members:  # disabling PEFT's own adapter forward froze them
        for parameter in member.params:
            parameter.requires_grad_(True)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )
    accumulation = members[0].training.gradient_accumulation  # shared (fusion.recipe_key)
    try:
        if members[0].training.packing:
            require_isolation(model, device)
        trimmed = keeps_scored_logits(model, device)
        model.train()
        while active := [m for m in members if m.active]:
            _step(model, forward, active, accumulation, pad_id, device, trimmed, autocast, log_every, dist)
    finally:
        forward.remove()
    peak_bytes = peak.bytes()  # the group's peak: its members share every step
    return {m.spec.name: metrics_of(m.state, peak_bytes) for m in members if m.error is None}


def _sync(active: list[Member], loss_sums: list[torch.Tensor], tokens: list[int], dist: Distributed, device
          ) -> tuple[list[torch.Tensor], list[int]]:  # fmt: skip
    """Every adapter's gradients and loss averaged across the ranks and its tokens counted on all of them: one flat
    all-reduce per step (the adapters are small; a collective's latency is not)."""
    if dist.world == 1:
        return loss_sums, tokens
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for m in active for p in m.params]
    figures = torch.stack([*loss_sums, *(torch.tensor(float(t), device=device) for t in tokens)]).double()
    flat = torch.cat([*(g.reshape(-1).double() for g in grads), figures])
    torch.distributed.all_reduce(flat)
    offset = 0
    for member in active:
        for parameter in member.params:
            size = parameter.numel()
            parameter.grad = (flat[offset : offset + size] / dist.world).view_as(parameter).to(parameter.dtype)
            offset += size
    summed = flat[offset:]
    n = len(active)
    # A rank's loss sum is the mean over its micro-batches (each divided by the accumulation): the step's mean is
    # the ranks' mean, as a lone trial computes it (train._step_figures).
    return [(summed[i] / dist.world).float() for i in range(n)], [round(float(summed[n + i])) for i in range(n)]


def _step(model, forward, active, accumulation, pad_id, device, trimmed, autocast, log_every, dist) -> None:
    started = time.perf_counter()
    loss_sums = [torch.zeros((), device=device) for _ in active]
    tokens = [0] * len(active)
    micro_per_step = accumulation * dist.world
    for k in range(micro_per_step):
        chosen, blocks, row = [], [], 0
        for index, member in enumerate(active):
            _, indices = next(member.batches)  # every rank draws every micro-batch: the order stays each one's own
            if k % dist.world != dist.rank:
                continue
            picked = [member.features[i] for i in indices]
            tokens[index] += sum(len(f["input_ids"]) for f in picked)
            micro = member.state.step * micro_per_step + k
            blocks.append(Block(member.adapter, row, row + len(picked), member.training.seed, micro))
            chosen += picked
            row += len(picked)
        if not blocks:
            continue
        forward.blocks = blocks
        batch = {key: value.to(device) for key, value in collate(chosen, pad_id).items()}
        with autocast:
            losses = [loss / accumulation for loss in _losses(model, batch, blocks, trimmed)]
        torch.stack(losses).sum().backward()  # adapters share no parameter: each gets its own gradient
        for index, loss in enumerate(losses):
            loss_sums[index] += loss.detach().float()
    loss_sums, tokens = _sync(active, loss_sums, tokens, dist, device)
    norms = [torch.nn.utils.clip_grad_norm_(m.params, 1.0) for m in active]
    figures = torch.stack([*loss_sums, *(n.to(loss_sums[0]) for n in norms)]).tolist()  # one device sync
    seconds = time.perf_counter() - started
    finite = [math.isfinite(figures[i]) and math.isfinite(figures[len(active) + i]) for i in range(len(active))]
    for index, member in enumerate(active):
        loss, grad_norm = figures[index], figures[len(active) + index]
        if not finite[index]:
            member.error = _diverged(member.state, member.steps, loss, grad_norm, member.training,
                                     peers_finite=any(finite))  # fmt: skip
            member.optimizer.zero_grad(set_to_none=True)
            log.error("trial %s leaves the fused group: %s", member.spec.name, member.error)
            continue
        member.optimizer.step()
        member.scheduler.step()
        member.optimizer.zero_grad(set_to_none=True)
        state = member.state
        state.step += 1
        state.seconds += seconds  # the group's step: per-adapter tokens/s is its own tokens over the shared time
        state.tokens += tokens[index]
        state.losses.append(loss)
        if member.progress is not None:
            member.progress.step(state.step, member.stop, loss, state.tokens, state.seconds)
        periodic = state.step % member.training.checkpoint_every_steps == 0 and state.step < member.steps
        if dist.is_main and (periodic or (member.spec.stage_one is not None and state.step == member.stop)):
            _save(model, member)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    step = max(m.state.step for m in active)
    if step % log_every == 0 or not any(m.active for m in active):
        log.info("fused step %d: %s", step, ", ".join(f"{m.spec.name} loss {figures[i]:.4f}"
                                                      for i, m in enumerate(active)))  # fmt: skip
