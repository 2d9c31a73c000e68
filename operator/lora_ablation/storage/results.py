"""Read trial results back from storage: the one place the runner, `report` and the operator do it.

Every file read here was written by a trial image, so it is evidence, not authority: a file that breaks a bound
reads as invalid, a file in another trial's folder is refused, and with the plan at hand (`planned`) a result is
credited to the configuration the plan ran under that trial name, whatever the file says it ran."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from lora_ablation.api.base import format_location
from lora_ablation.api.bounds import MAX_TEXT
from lora_ablation.api.contract import FAILURE, PROGRESS, STAGE_ONE
from lora_ablation.api.progress import TrialProgress
from lora_ablation.api.render_safe import plain_text
from lora_ablation.api.stages import StageOneResult, TrialFailure
from lora_ablation.api.trial import TrialResult
from lora_ablation.planning.plan import PlannedTrial
from lora_ablation.storage.store import ObjectTooLarge, Store

log = logging.getLogger(__name__)
RESULT_FILE = "result.json"
# A real result is a few KiB (tens with thousands of module names); anything far larger is broken or hostile,
# and the operator reading it is shared by every ablation in the cluster.
MAX_RESULT_BYTES = 4 * 1024 * 1024
SUMMARY_FILE = "summary.json"
MAX_SMALL_BYTES = 64 * 1024  # stage-one.json and failure.json are a few hundred bytes
MAX_PROGRESS_BYTES = 8 * 1024  # progress.json is a few hundred bytes, and it is read again every 30 s


@dataclass
class ResultRead:
    result: TrialResult | None
    problem: str | None = None  # why a result.json that exists cannot be used


def labelled(result: TrialResult, trial: PlannedTrial) -> TrialResult:
    """`result` credited to the configuration the plan ran as `trial`: dataset, modules, rank, alpha, variant,
    layers, seed and the eval metric's name come from the plan, never from the file (which could credit its
    score to a configuration it never ran). ValueError when the result is another trial's."""
    if result.trial != trial.name:
        raise ValueError(f"result of trial {result.trial!r} is not trial {trial.name!r}")
    spec = trial.spec
    evaluation = result.eval.model_copy(update={"metric": _metric(trial)})
    identity = {"dataset": spec.dataset.name, "modules": list(spec.modules), "rank": spec.rank, "alpha": spec.alpha,
                "variant": spec.variant, "layers": spec.layers, "seed": trial.seed, "eval": evaluation}  # fmt: skip
    return result.model_copy(update=identity)


def labelled_stage_one(stage_one: StageOneResult, trial: PlannedTrial) -> StageOneResult:
    """stage-one.json credited to the plan's trial: its dataset and metric names come from the plan."""
    if stage_one.trial != trial.name:
        raise ValueError(f"stage one of trial {stage_one.trial!r} is not trial {trial.name!r}")
    return stage_one.model_copy(update={"dataset": trial.spec.dataset.name, "metric": _metric(trial)})


MAX_DEPTH = 32  # a real result nests 4 levels; deeper JSON is refused whatever the interpreter's recursion limit


def _depth(value: Any) -> int:
    """How deeply `value` nests lists and objects, found without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, level)
            if level <= MAX_DEPTH:
                stack.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def _metric(trial: PlannedTrial) -> str:
    metric = trial.spec.dataset.metric
    return str(getattr(metric, "value", metric))


def read_result(store: Store, trial: str, *, planned: Mapping[str, PlannedTrial] | None = None) -> ResultRead:
    """The trial's result, None when absent, or a problem when present but invalid (never success).
    With `planned` (trial name -> planned trial), the result is relabelled by the plan (labelled), and a trial the
    plan does not have is a problem."""
    key = f"{trial}/{RESULT_FILE}"
    if planned is not None and trial not in planned:
        return ResultRead(None, f"{key} is not a result of a planned trial")
    try:
        raw = _utf8(store.read_json(key, MAX_RESULT_BYTES))
    except FileNotFoundError:
        return ResultRead(None)
    except ObjectTooLarge as error:
        return ResultRead(None, f"{key} is too large ({error})")
    except (ValueError, RecursionError) as error:  # not JSON, not UTF-8, NaN/Infinity, or nested past reason
        return ResultRead(None, f"{key} is not valid JSON ({plain_text(error, 200)})")
    if _depth(raw) > MAX_DEPTH:
        return ResultRead(None, f"{key} is not a valid result (nested deeper than {MAX_DEPTH} levels)")
    try:
        result = TrialResult.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        where, why = plain_text(format_location(tuple(first["loc"])), 200), plain_text(first["msg"], 300)
        return ResultRead(None, f"{key} is not a valid result ({error.error_count()} problem(s); {where}: {why})")
    except RecursionError:  # JSON the parser took, nested too deep for the checks
        return ResultRead(None, f"{key} is not a valid result (nested too deep)")
    if result.trial != trial:
        return ResultRead(None, f"{key} belongs to trial {plain_text(result.trial, 80)!r}")
    return ResultRead(labelled(result, planned[trial]) if planned is not None else result)


def read_stage_one(
    store: Store, trial: str, *, planned: Mapping[str, PlannedTrial] | None = None
) -> StageOneResult | None:
    """A two-stage trial's stage-one.json, or None when absent or unusable (the trial then counts as not scored).
    With `planned`, relabelled by the plan (labelled_stage_one); None for a trial the plan does not have."""
    found = _read_small(store, trial, STAGE_ONE, StageOneResult, planned)
    return labelled_stage_one(found, planned[trial]) if found is not None and planned is not None else found


def read_failure(store: Store, trial: str, *, planned: Mapping[str, PlannedTrial] | None = None) -> TrialFailure | None:
    """failure.json of a trial that failed inside a multi-trial pod, or None. Its message becomes a status message
    and an event, so it comes back as one line of plain text; None for a trial `planned` does not have."""
    found = _read_small(store, trial, FAILURE, TrialFailure, planned)
    return found.model_copy(update={"message": plain_text(found.message, MAX_TEXT)}) if found is not None else None


def read_progress(
    store: Store, trial: str, *, planned: Mapping[str, PlannedTrial] | None = None
) -> TrialProgress | None:
    """A running trial's progress.json, or None when absent or unusable (too large, not JSON, a figure out of
    bounds, another trial's): progress is advisory, so a bad file is logged and reads as no progress."""
    return _read_small(store, trial, PROGRESS, TrialProgress, planned, MAX_PROGRESS_BYTES)


def _read_small(store: Store, trial: str, name: str, model: type, planned: Mapping[str, PlannedTrial] | None,
                limit: int = MAX_SMALL_BYTES) -> Any:  # fmt: skip
    key = f"{trial}/{name}"
    if planned is not None and trial not in planned:
        log.warning("ignoring %s: not a planned trial", key)
        return None
    try:
        raw = _utf8(store.read_json(key, limit))
        if _depth(raw) > MAX_DEPTH:
            raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
        found = model.model_validate(raw)
    except FileNotFoundError:
        return None
    except (ObjectTooLarge, ValueError, RecursionError) as error:  # ValidationError is a ValueError
        log.warning("ignoring %s: %s", key, plain_text(error, 200))
        return None
    if found.trial != trial:
        log.warning("ignoring %s: it belongs to trial %r", key, plain_text(found.trial, 80))
        return None
    return found


def _utf8(raw: Any) -> Any:
    """The document, or ValueError when a string in it has no UTF-8 form (a lone surrogate escape such as
    \\ud800, which JSON allows): summary.json, summary.md and the status could not be written with it."""
    json.dumps(raw, ensure_ascii=False).encode("utf-8")  # UnicodeEncodeError is a ValueError
    return raw


def read_all_results(store: Store, *, planned: Mapping[str, PlannedTrial] | None = None) -> list[TrialResult]:
    """Every valid result under an ablation's prefix (<storage>/<namespace>/<ablation>); with `planned`, only the
    planned trials', relabelled by the plan."""
    trials = sorted({key.split("/", 1)[0] for key in store.list() if key.endswith("/" + RESULT_FILE)})
    results = []
    for trial in trials:
        read = read_result(store, trial, planned=planned)
        if read.result is not None:
            results.append(read.result)
        elif read.problem:
            log.warning("skipping %s", read.problem)
    return results
