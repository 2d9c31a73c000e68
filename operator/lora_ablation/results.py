"""Read trial results back from storage: the one place the runner, `report` and the operator do it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydantic import ValidationError

from lora_ablation.api.base import format_location
from lora_ablation.api.stages import StageOneResult, TrialFailure
from lora_ablation.api.trial import TrialResult
from lora_ablation.contract import FAILURE, STAGE_ONE
from lora_ablation.store import ObjectTooLarge, Store

log = logging.getLogger(__name__)
RESULT_FILE = "result.json"
# A real result is a few KiB (tens with thousands of module names); anything far larger is broken or hostile,
# and the operator reading it is shared by every ablation in the cluster.
MAX_RESULT_BYTES = 4 * 1024 * 1024
SUMMARY_FILE = "summary.json"
MAX_SMALL_BYTES = 64 * 1024  # stage-one.json and failure.json are a few hundred bytes


@dataclass
class ResultRead:
    result: TrialResult | None
    problem: str | None = None  # why a result.json that exists cannot be used


def read_result(store: Store, trial: str) -> ResultRead:
    """The trial's result, None when absent, or a problem when present but invalid (never success)."""
    key = f"{trial}/{RESULT_FILE}"
    try:
        raw = store.read_json(key, MAX_RESULT_BYTES)
    except FileNotFoundError:
        return ResultRead(None)
    except ObjectTooLarge as error:
        return ResultRead(None, f"{key} is too large ({error})")
    except (ValueError, RecursionError) as error:  # not JSON, not UTF-8, NaN/Infinity, or nested past reason
        return ResultRead(None, f"{key} is not valid JSON ({str(error)[:200]})")
    try:
        result = TrialResult.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        where = format_location(tuple(first["loc"]))
        return ResultRead(
            None, f"{key} is not a valid result ({error.error_count()} problem(s); {where}: {first['msg']})"
        )
    if result.trial != trial:
        return ResultRead(None, f"{key} belongs to trial {result.trial!r}")
    return ResultRead(result)


def read_stage_one(store: Store, trial: str) -> StageOneResult | None:
    """A two-stage trial's stage-one.json, or None when absent or unusable (the trial then counts as not scored)."""
    return _read_small(store, trial, STAGE_ONE, StageOneResult)


def read_failure(store: Store, trial: str) -> TrialFailure | None:
    """failure.json of a trial that failed inside a multi-trial pod, or None."""
    return _read_small(store, trial, FAILURE, TrialFailure)


def _read_small(store: Store, trial: str, name: str, model: type) -> object | None:
    key = f"{trial}/{name}"
    try:
        raw = store.read_json(key, MAX_SMALL_BYTES)
        found = model.model_validate(raw)
    except FileNotFoundError:
        return None
    except (ObjectTooLarge, ValueError, RecursionError) as error:  # ValidationError is a ValueError
        log.warning("ignoring %s: %s", key, str(error)[:200])
        return None
    if getattr(found, "trial", None) != trial:
        log.warning("ignoring %s: it belongs to trial %r", key, getattr(found, "trial", None))
        return None
    return found


def read_all_results(store: Store) -> list[TrialResult]:
    """Every valid result under an ablation's prefix (<storage>/<namespace>/<ablation>)."""
    trials = sorted({key.split("/", 1)[0] for key in store.list() if key.endswith("/" + RESULT_FILE)})
    results = []
    for trial in trials:
        read = read_result(store, trial)
        if read.result is not None:
            results.append(read.result)
        elif read.problem:
            log.warning("skipping %s", read.problem)
    return results
