"""One trial, start to finish: resolve, fetch, train, evaluate, time, publish. result.json goes last.
A stage-one trial (spec.stage_one) stops at its stage-one checkpoint and writes stage-one.json instead."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lora_ablation.api.contract import RESULT
from lora_ablation.api.stages import StageOneResult
from lora_ablation.api.trial import TrialResult, TrialSpec
from lora_ablation.storage.open import open_store
from lora_ablation.storage.store import StorageAccessDenied, StorageUnavailable, Store
from lora_ablation_trainer.base import Base
from lora_ablation_trainer.errors import PermanentTrialError, TransientTrialError
from lora_ablation_trainer.outputs import existing_result, existing_stage_one, publish
from lora_ablation_trainer.train import Distributed
from lora_ablation_trainer.trial import Clock, environment, run_on_base

__all__ = ["RESULT", "environment", "open_trial_store", "publish", "run_trial", "storage_errors"]
log = logging.getLogger(__name__)


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


def already_done(store: Store, spec: TrialSpec) -> TrialResult | StageOneResult | None:
    """What a previous run left for this trial that makes this run a no-op: its result, or (for a stage-one
    run) its stage-one score."""
    with storage_errors():
        done = existing_result(store, spec)
        if done is None and spec.stage_one is not None:
            return existing_stage_one(store, spec)
    return done


def run_trial(
    spec: TrialSpec,
    workdir: Path | None = None,
    dist: Distributed | None = None,
) -> TrialResult | StageOneResult | None:
    dist = dist or Distributed()
    store = open_trial_store(spec)
    done = already_done(store, spec)
    if done is not None:
        log.info("trial %s already has a valid %s; nothing to do", spec.name, type(done).__name__)
        return done
    clock = Clock()  # the trial's cost includes fetching and loading the base model
    with tempfile.TemporaryDirectory(prefix="trial-", dir=workdir) as tmp, storage_errors():
        # Everything that can be wrong with the inputs is checked before a weight is loaded.
        base = Base(spec, Path(tmp) / "cache", dist)
        targets = base.targets(spec)
        data = base.data(spec)
        return run_on_base(spec, store, base, targets, data, Path(tmp), clock)
