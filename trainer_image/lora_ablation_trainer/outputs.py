"""What a trial leaves in its storage folder besides adapter/ and checkpoints/: result.json (last, so its
presence means done), stage-one.json (a two-stage trial's first stage) and failure.json (a permanent failure
inside a multi-trial pod). Each is strict JSON, and each is taken as done only when valid and for this trial."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from pydantic import BaseModel

from lora_ablation.api.contract import FAILURE, RESULT, STAGE_ONE
from lora_ablation.api.stages import StageOneResult, TrialFailure
from lora_ablation.api.trial import TrialResult, TrialSpec
from lora_ablation.storage.store import Store

log = logging.getLogger(__name__)


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write(store: Store, key: str, model: BaseModel) -> None:
    # The models cannot hold NaN or Infinity; allow_nan=False says so again.
    store.write_text(key, json.dumps(model.to_wire(), indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def _existing(store: Store, key: str, model: type, spec: TrialSpec):
    if not store.exists(key):
        return None
    try:
        found = model.model_validate(store.read_json(key))  # strict: NaN an older trainer wrote is invalid
    except ValueError:
        log.warning("ignoring an invalid %s at %s", key, store.uri)
        return None
    return found if found.trial == spec.name else None


def publish(store: Store, result: TrialResult) -> None:
    _write(store, RESULT, result)


def existing_result(store: Store, spec: TrialSpec) -> TrialResult | None:
    """A valid result for this very trial, if a previous run finished it."""
    return _existing(store, RESULT, TrialResult, spec)


def write_stage_one(store: Store, stage_one: StageOneResult) -> None:
    _write(store, STAGE_ONE, stage_one)


def existing_stage_one(store: Store, spec: TrialSpec) -> StageOneResult | None:
    return _existing(store, STAGE_ONE, StageOneResult, spec)


def write_failure(store: Store, failure: TrialFailure) -> None:
    _write(store, FAILURE, failure)


def existing_failure(store: Store, spec: TrialSpec) -> TrialFailure | None:
    return _existing(store, FAILURE, TrialFailure, spec)
