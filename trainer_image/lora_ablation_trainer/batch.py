"""Several trials in one process (execution.trialsPerPod): the base model is fetched and loaded once, the
trials run one after another on it, each with its own adapter, taken off again before the next.

Per trial the outcome is what a one-trial Job leaves: result.json (or stage-one.json), or, for a permanent
failure, failure.json, and the batch goes on. A transient failure ends the process with the transient exit
code; the restarted pod skips every trial that already has its result, stage-one score or failure."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from lora_ablation.api.stages import StageOneResult, TrialFailure
from lora_ablation.api.trial import TrialBatch, TrialResult, TrialSpec
from lora_ablation_trainer.base import Base
from lora_ablation_trainer.errors import PermanentTrialError
from lora_ablation_trainer.outputs import existing_failure, now, write_failure
from lora_ablation_trainer.run import already_done, open_trial_store, storage_errors
from lora_ablation_trainer.train import Distributed
from lora_ablation_trainer.trial import Clock, run_on_base

log = logging.getLogger(__name__)
Outcome = TrialResult | StageOneResult | TrialFailure | None


def run_batch(batch: TrialBatch, workdir: Path | None = None, dist: Distributed | None = None) -> list[Outcome]:
    """Each trial's outcome, in order (None on ranks other than 0)."""
    dist = dist or Distributed()
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="batch-", dir=workdir) as tmp:
        base: Base | None = None
        for index, spec in enumerate(batch.trials, 1):
            log.info("trial %d of %d: %s", index, len(batch.trials), spec.name)
            store = open_trial_store(spec)
            done = already_done(store, spec)
            if done is None:
                with storage_errors():
                    done = existing_failure(store, spec)
            if done is not None:
                log.info("trial %s: skipped, it already has a %s", spec.name, type(done).__name__)
                outcomes.append(done)
                continue
            base = base or Base(batch.trials[0], Path(tmp) / "cache", dist, shared=True)
            outcomes.append(_one(spec, store, base, Path(tmp), dist))
            if dist.world > 1:
                torch.distributed.barrier()  # every rank decides the next trial's skip on the same storage
    failed = [o.trial for o in outcomes if isinstance(o, TrialFailure)]
    log.info("batch done: %d trials, %d failed for good%s", len(outcomes), len(failed),
             f" ({', '.join(failed)}: see their failure.json)" if failed else "")  # fmt: skip
    return outcomes


def _one(spec: TrialSpec, store, base: Base, tmp: Path, dist: Distributed) -> Outcome:
    clock = Clock()
    try:
        with tempfile.TemporaryDirectory(prefix="trial-", dir=tmp) as trial_tmp, storage_errors():
            targets = base.targets(spec)
            data = base.data(spec)
            return run_on_base(spec, store, base, targets, data, Path(trial_tmp), clock)
    except PermanentTrialError as error:  # DataError too; transient errors end the process
        log.error("trial %s failed: %s (exit %d); the batch goes on", spec.name, error, error.exit_code)
        if not dist.is_main:
            return None
        failure = TrialFailure(trial=spec.name, message=str(error)[:4000], exit_code=error.exit_code,
                               finished_at=now())  # fmt: skip
        with storage_errors():
            write_failure(store, failure)
        return failure
