"""Trials in one process, start to finish: resolve, fetch, train, evaluate, time, publish (result.json last; a
stage-one run stops at its checkpoint and writes stage-one.json). A single trial is a batch of one, so both take
one path. execution.trialsPerPod makes batches of several: the base model is fetched and loaded once, the trials
run one after another on it, each with its own adapter, taken off again before the next.

Per trial the outcome is result.json (or stage-one.json) or, for a permanent failure, failure.json; a batch then
goes on, and a single trial's process exits with the permanent code as well, so its Job is not retried. A transient
failure ends the process with the transient exit code; the restarted pod skips every trial that already has its
result, stage-one score or failure."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lora_ablation.api.contract import RESULT
from lora_ablation.api.stages import StageOneResult, TrialFailure
from lora_ablation.api.trial import TrialBatch, TrialResult, TrialSpec
from lora_ablation.planning import fusion
from lora_ablation.storage.open import open_store
from lora_ablation.storage.store import StorageAccessDenied, StorageUnavailable, Store
from lora_ablation.tracking import log_trial
from lora_ablation_trainer.base import Base
from lora_ablation_trainer.errors import PermanentTrialError, TransientTrialError
from lora_ablation_trainer.fused.group import Member, adapter_weights, attach_group
from lora_ablation_trainer.fused.loop import train_fused
from lora_ablation_trainer.outputs import (
    existing_failure,
    existing_result,
    existing_stage_one,
    now,
    publish,
    write_failure,
)
from lora_ablation_trainer.progress import ProgressReporter
from lora_ablation_trainer.train import Distributed
from lora_ablation_trainer.trial import Clock, Trained, environment, run_on_base, training_features

__all__ = ["RESULT", "environment", "open_trial_store", "publish", "run_batch", "run_trial", "storage_errors"]
log = logging.getLogger(__name__)
Outcome = TrialResult | StageOneResult | TrialFailure | None


@contextmanager
def storage_errors() -> Iterator[None]:
    """Storage failures as the exit codes the Job acts on."""
    try:
        yield
    except StorageUnavailable as error:
        raise TransientTrialError(str(error)) from None
    except StorageAccessDenied as error:
        raise PermanentTrialError(str(error)) from None


def open_trial_store(spec: TrialSpec) -> Store:
    with storage_errors():
        return open_store(spec.storage.uri, spec.storage.endpoint, spec.storage.region)


def already_done(store: Store, spec: TrialSpec) -> TrialResult | StageOneResult | TrialFailure | None:
    """What a previous run left for this trial that makes this run a no-op: its result, (for a stage-one run) its
    stage-one score, or the failure.json of a permanent failure."""
    with storage_errors():
        done = existing_result(store, spec)
        if done is None and spec.stage_one is not None:
            done = existing_stage_one(store, spec)
        return done if done is not None else existing_failure(store, spec)


def run_trial(
    spec: TrialSpec, workdir: Path | None = None, dist: Distributed | None = None
) -> TrialResult | StageOneResult | None:
    """One trial: a batch of one. A permanent failure (this run's or a recorded one) leaves failure.json and
    raises, so the process exits with the permanent code."""
    try:
        outcome = _run(TrialBatch(trials=[spec]), workdir, dist, alone=True)[0]
    except _Failed as failed:
        raise failed.error from None
    if isinstance(outcome, TrialFailure):  # recorded by an earlier run of this trial
        raise PermanentTrialError(f"trial {spec.name} already failed for good: {outcome.message}")
    return outcome


def run_batch(batch: TrialBatch, workdir: Path | None = None, dist: Distributed | None = None) -> list[Outcome]:
    """Each trial's outcome, in order (None on ranks other than 0)."""
    return _run(batch, workdir, dist, alone=False)


class _Failed(Exception):
    def __init__(self, error: PermanentTrialError) -> None:
        self.error = error


def _run(batch: TrialBatch, workdir: Path | None, dist: Distributed | None, *, alone: bool) -> list[Outcome]:
    dist = dist or Distributed()
    outcomes: dict[int, Outcome] = {}
    todo: list[tuple[int, Store]] = []
    for index, spec in enumerate(batch.trials):
        store = open_trial_store(spec)
        if (done := already_done(store, spec)) is not None:
            log.info("trial %s: skipped, it already has a %s", spec.name, type(done).__name__)
            outcomes[index] = done
            if isinstance(done, TrialResult) and spec.tracking is not None and dist.is_main:
                log_trial(spec, done)  # a run the server missed is logged now (a finished one is found, kept)
        else:
            todo.append((index, store))
    # Fused groups train data-parallel (every rank the whole group, its share of the micro-batches); a sharded
    # batch trains its trials one after another.
    limit = 1 if dist.sharded else batch.fused_group_size
    groups = fusion.groups([batch.trials[i] for i, _ in todo], limit)
    with tempfile.TemporaryDirectory(prefix="trials-", dir=workdir) as tmp:
        base: Base | None = None
        for group in groups:
            members = [todo[g] for g in group]
            if not alone:
                log.info("trial %s of %d: %s", "+".join(str(i + 1) for i, _ in members), len(batch.trials),
                         ", ".join(batch.trials[i].name for i, _ in members))  # fmt: skip
            # The cost of fetching and loading the base model is charged to the first trial (or fused group) that
            # runs in this process: its clock starts before the fetch. A trial skipped as done is charged nothing.
            clock = Clock()
            # Shared by several trials, the base's weights are checked unchanged after each adapter comes off.
            base = base or Base(batch.trials[0], Path(tmp) / "cache", dist, shared=len(batch.trials) > 1)
            specs = [(batch.trials[i], store) for i, store in members]
            if len(specs) > 1 and base.vision is not None:
                log.info("vision-language trials train one after another, not fused")
            if len(specs) == 1 or base.vision is not None:
                for (index, _), (spec, store) in zip(members, specs, strict=True):
                    outcomes[index] = _one(spec, store, base, Path(tmp), dist, clock, alone=alone)
                    clock = Clock()
            else:
                for (index, _), outcome in zip(members, _fused(specs, base, Path(tmp), dist, clock), strict=True):
                    outcomes[index] = outcome
            dist.wait_for_main()  # the next trial's collectives start once rank 0 has published this one
    ordered = [outcomes[i] for i in range(len(batch.trials))]
    if not alone:
        failed = [o.trial for o in ordered if isinstance(o, TrialFailure)]
        log.info("batch done: %d trials, %d failed for good%s", len(ordered), len(failed),
                 f" ({', '.join(failed)}: see their failure.json)" if failed else "")  # fmt: skip
    return ordered


def _one(
    spec: TrialSpec, store: Store, base: Base, tmp: Path, dist: Distributed, clock: Clock, *, alone: bool,
    trained: Trained | PermanentTrialError | None = None,
) -> Outcome:
    try:
        with tempfile.TemporaryDirectory(prefix="trial-", dir=tmp) as trial_tmp, storage_errors():
            if isinstance(trained, PermanentTrialError):  # its fused group's training stopped it
                raise trained
            # Everything that can be wrong with the inputs is checked before a weight is loaded.
            targets = base.targets(spec)
            data = base.data(spec)
            return run_on_base(spec, store, base, targets, data, Path(trial_tmp), clock, trained)
    except PermanentTrialError as error:  # DataError too; transient errors end the process
        if not alone:  # alone, the process's own last line (cli) says it once
            log.error("trial %s failed: %s (exit %d); the batch goes on", spec.name, error, error.exit_code)
        if dist.is_main:
            failure = TrialFailure(trial=spec.name, message=str(error)[:4000], exit_code=error.exit_code,
                                   finished_at=now())  # fmt: skip
            with storage_errors():
                write_failure(store, failure)
        if alone:
            raise _Failed(error) from error
        return failure if dist.is_main else None


def _fused(specs: list[tuple[TrialSpec, Store]], base: Base, tmp: Path, dist: Distributed, clock: Clock
           ) -> list[Outcome]:  # fmt: skip
    """Train a group's trials together, then evaluate, time and publish each alone. The group's time (with the
    base's fetch and load when it came first) is shared equally among its trials; each then pays its own
    evaluation, timing and upload. A trial whose inputs are wrong, or whose training diverged, gets its
    failure.json; the others go on."""
    members: list[Member] = []
    trained: dict[str, Trained | PermanentTrialError] = {}
    for spec, store in specs:
        try:
            with storage_errors():
                targets, data = base.targets(spec), base.data(spec)
                features = training_features(spec, base, data)
        except PermanentTrialError as error:
            trained[spec.name] = error
            continue
        progress = ProgressReporter(store, spec.name) if dist.is_main else None  # rank 0 alone reports
        members.append(Member(spec=spec, store=store, targets=targets, features=features, progress=progress))
    if len(members) == 1:  # the others' inputs were wrong: it trains alone, reporting its own progress
        if members[0].progress is not None:
            members[0].progress.close()
        members = []
    model = None
    try:
        if members:
            with storage_errors():
                model = attach_group(members, base.model())
                log.info("training %d trials together: %s", len(members), ", ".join(m.spec.name for m in members))
                metrics = train_fused(model, members, base.tokenizer.pad_token_id, base.device, dist=dist)
            for member in members:
                done = member.error or Trained(metrics[member.spec.name], member.steps,
                                               adapter_weights(model, member), member.progress)  # fmt: skip
                trained[member.spec.name] = done
    except PermanentTrialError as error:  # the group's recipe itself (packing on this architecture, ...)
        for member in members:
            trained[member.spec.name] = error
    finally:
        base.release(model)
    share_wall = (time.perf_counter() - clock.wall) / max(len(specs), 1)
    share_cpu = (time.process_time() - clock.cpu) / max(len(specs), 1)
    outcomes = []
    for spec, store in specs:
        own = Clock(started_at=clock.started_at, wall=time.perf_counter() - share_wall,
                    cpu=time.process_time() - share_cpu)  # fmt: skip
        outcome = _one(spec, store, base, tmp, dist, own, alone=False, trained=trained.get(spec.name))
        member = next((m for m in members if m.spec is spec), None)
        if isinstance(outcome, TrialFailure) and member is not None and member.progress is not None:
            member.progress.close()
        outcomes.append(outcome)
    return outcomes
