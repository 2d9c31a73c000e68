"""The ablation's record in its storage prefix: what has happened, written once and read back, never re-derived
from the workloads that happen to exist. Trial files (result.json, stage-one.json, failure.json) are the trainer's;
the operator (or local runner) adds failure.json for a run that ended without one, and one decision file per
dataset once its two-stage elimination is made. One listing of the prefix (a request per 1,000 keys) tells a
restarted operator everything that happened while it was away."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from lora_ablation.api.contract import FAILURE, RESULT, STAGE_ONE
from lora_ablation.api.stages import EliminationDecision, TrialFailure
from lora_ablation.storage.store import ObjectTooLarge, Store

log = logging.getLogger(__name__)
DECISIONS = "decisions"
TRIAL_FILES = (RESULT, STAGE_ONE, FAILURE)
MAX_DECISION_BYTES = 4 * 1024 * 1024  # survivors and reasons of up to 10,000 trials


def elimination_key(dataset: str) -> str:
    return f"{DECISIONS}/elimination-{dataset}.json"  # dataset names are DNS-1123 labels (the API's pattern)


@dataclass
class Listing:
    """What one listing of the prefix found: each trial's files, and the recorded decisions."""

    # trial -> each of TRIAL_FILES it has -> the version the listing saw ("" for a file added since)
    files: dict[str, dict[str, str]] = field(default_factory=dict)
    eliminations: dict[str, EliminationDecision] = field(default_factory=dict)  # dataset -> its decision
    keys: int = 0  # objects under the prefix when listed: what listing it again costs (a request per 1,000)

    def has(self, trial: str, file: str) -> bool:
        return file in self.files.get(trial, ())

    def add(self, trial: str, file: str, version: str = "") -> None:
        self.files.setdefault(trial, {}).setdefault(file, version)

    def versions(self, file: str) -> dict[str, str]:
        """trial -> the listed version of its `file` ("" for a file added since the listing was taken)."""
        return {trial: v for trial, files in self.files.items() if (v := files.get(file)) is not None}


def list_record(store: Store, known: dict[str, EliminationDecision] | None = None) -> Listing:
    """`known`: decisions read before (a decision is written once): their files are not read again."""
    out = Listing()
    decisions = []
    known = known or {}
    out.eliminations.update(known)
    listed = store.list_versions()
    out.keys = len(listed)
    for key, version in listed.items():
        head, _, tail = key.partition("/")
        if head == DECISIONS:
            if not any(key == elimination_key(dataset) for dataset in known):
                decisions.append(key)
        elif tail in TRIAL_FILES:
            out.add(head, tail, version)
    for key in decisions:
        if (decision := read_elimination(store, key)) is not None:
            out.eliminations[decision.dataset] = decision
    return out


def read_elimination(store: Store, key: str) -> EliminationDecision | None:
    try:
        decision = EliminationDecision.model_validate(store.read_json(key, MAX_DECISION_BYTES))
    except FileNotFoundError:
        return None
    except (ObjectTooLarge, ValueError, RecursionError) as error:  # ValidationError is a ValueError
        log.warning("ignoring %s: %s", key, str(error)[:200])
        return None
    if key != elimination_key(decision.dataset):
        log.warning("ignoring %s: it records dataset %r", key, decision.dataset)
        return None
    return decision


def write_elimination(store: Store, decision: EliminationDecision) -> None:
    store.write_json(elimination_key(decision.dataset), decision.model_dump(mode="json", by_alias=True))


def write_failure(store: Store, failure: TrialFailure) -> None:
    store.write_json(f"{failure.trial}/{FAILURE}", failure.model_dump(mode="json", by_alias=True, exclude_none=True))


def write_all(store: Store, *, failures: Iterable[TrialFailure] = (),
              eliminations: Iterable[EliminationDecision] = ()) -> None:  # fmt: skip
    """Record what a pass decided, before any workload it implies is created (a round-two Job without its
    recorded decision would let a later pass decide otherwise)."""
    for failure in failures:
        write_failure(store, failure)
    for decision in eliminations:
        write_elimination(store, decision)
