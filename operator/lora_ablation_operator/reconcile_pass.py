"""One pass over one ablation, in a worker thread: from what the watches cached (a Snapshot) to Jobs created,
stopped or suspended, results collected, the summary stored, Events posted and the status patched where it
changed. The decisions are reconcile.py's (pure); this is the one place they meet the API and storage."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import kopf

from lora_ablation.api.contract import FAILURE
from lora_ablation.api.tracking import trial_tracking
from lora_ablation.api.trial_state import ACTIVE
from lora_ablation.planning.trials import ablation_uri
from lora_ablation.storage.publish import write_summary
from lora_ablation.storage.record import write_all
from lora_ablation.storage.store import StorageError
from lora_ablation.tracking import log_summary
from lora_ablation_operator import collector, kube, metrics, workload
from lora_ablation_operator.events import aggregate
from lora_ablation_operator.gather import Gathered, gather
from lora_ablation_operator.multinode import key_of, target
from lora_ablation_operator.observe import (
    is_preflight_job,
    job_finished,
    next_stuck_check,
    stuck_jobs,
    termination_messages,
)
from lora_ablation_operator.patches import merge_patch
from lora_ablation_operator.planning import PlanCache, Planned
from lora_ablation_operator.reconcile import Decision, Observed, reconcile
from lora_ablation_operator.settings import Settings

log = logging.getLogger(__name__)
MAX_LOGGED_MESSAGE = 1000  # a Forbidden or InvalidSpec message lists every field; one log line stays readable
ACTIVE_STATES = frozenset(state.value for state in ACTIVE)


@dataclass(kw_only=True)
class Snapshot:
    body: dict[str, Any]  # the ablation as the watch last delivered it
    status: dict[str, Any]  # its freshest status: the body's, or what this process wrote after it
    jobs: dict[str, dict[str, Any]]  # its Jobs by name (compact), including those created but not yet watched
    pods: list[dict[str, Any]]  # its pods that may be unable to start (compact)
    previous_states: dict[str, str] | None = None
    queued_at: float | None = None
    summary_written: int | None = None  # succeeded trials in the summary.json last written (None: unknown)
    summary_written_at: float = float("-inf")  # monotonic time of that write


@dataclass(kw_only=True)
class Outcome:
    states: dict[str, str] | None = None  # trial states after this pass
    written_status: tuple[dict[str, Any], str | None] | None = None  # (status stored, resourceVersion)
    created: dict[str, dict[str, Any]] = field(default_factory=dict)  # Jobs created by name
    retry: bool = False  # a refused Job or unreachable storage: try again after a backoff
    recheck_after: float | None = None  # nothing will send an event, but something changes then (a pod's wait)
    summary_written: int | None = None  # succeeded trials in the summary.json this pass wrote


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def observe(snapshot: Snapshot, planned: Planned, results_cache: collector.ResultCache,
            settings: Settings) -> Observed:  # fmt: skip
    """Everything reconcile needs; storage failures become an observation, not an error."""
    meta, now = snapshot.body.get("metadata") or {}, _now()
    jobs = snapshot.jobs
    active = any(not (job_finished(j, "Complete") or job_finished(j, "Failed")) for j in jobs.values())
    stuck = stuck_jobs(snapshot.pods, now, settings.unschedulable_after) if active else {}
    gathered = Gathered()
    problems, storage_problem = None, None
    if planned.spec is not None:
        try:
            store = collector.ablation_store(planned.spec, meta["namespace"], meta["name"], settings)
            if planned.plan is not None:
                gathered = gather(planned, jobs, store, results_cache, meta.get("uid") or "", meta["name"],
                                  vanished=vanished(snapshot))  # fmt: skip
            if any(job_finished(j, "Failed") for j in jobs.values() if is_preflight_job(j)):
                problems = collector.preflight_problems(store)
        except StorageError as error:
            metrics.STORAGE_ERRORS.inc()
            storage_problem = collector.describe(error)
    return Observed(
        name=meta["name"],
        namespace=meta["namespace"],
        generation=meta.get("generation"),
        spec=dict(snapshot.body.get("spec") or {}),
        status=snapshot.status,
        jobs=jobs,
        results=gathered.results,
        preflight_problems=problems,
        now=now,
        planned=planned,
        storage_problem=storage_problem,
        stuck=stuck,
        terminations=termination_messages(snapshot.pods),
        previous_states=snapshot.previous_states,
        stage_ones=gathered.stage_ones,
        failures=gathered.failures,
        schedule=gathered.schedule,
        eliminations=gathered.eliminations,
        progress=gathered.progress,
    )


def vanished(snapshot: Snapshot) -> list[str]:
    """Trials that had a workload at the last pass and have none now (deleted, or finished and deleted between two
    passes): storage is asked about them before their unit is created again."""
    previous = snapshot.previous_states
    if previous is None:
        previous = {t.get("name"): t.get("state") for t in snapshot.status.get("trialStatuses") or []}
    covered = {n for name, job in snapshot.jobs.items() for n in [name, *workload.trial_names(job)]}
    return sorted(n for n, state in previous.items() if isinstance(n, str) and state in ACTIVE_STATES
                  and n not in covered)  # fmt: skip


def record(
    decision: Decision,
    planned: Planned,
    namespace: str,
    name: str,
    uid: str,
    settings: Settings,
    results_cache: collector.ResultCache,
) -> str | None:
    """Write what the pass decided into the record (failures of runs that left no file, elimination decisions)
    before any workload is created; the StorageUnavailable message when storage refused."""
    if not (decision.failures or decision.eliminations) or planned.spec is None:
        return None
    try:
        store = collector.ablation_store(planned.spec, namespace, name, settings)
        write_all(store, failures=decision.failures, eliminations=decision.eliminations)
    except StorageError as error:
        metrics.STORAGE_ERRORS.inc()
        return collector.describe(error)
    for failure in decision.failures:
        results_cache.note(uid, failure.trial, FAILURE, failure)
    for elimination in decision.eliminations:
        results_cache.note_decision(uid, elimination)
    return None


def run_pass(snapshot: Snapshot, settings: Settings, results_cache: collector.ResultCache,
             plans: PlanCache) -> Outcome:  # fmt: skip
    started = time.perf_counter()
    meta = snapshot.body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    planned = plans.get(meta.get("uid") or "", meta.get("generation"), name, namespace,
                        dict(snapshot.body.get("spec") or {}), settings)  # fmt: skip
    observed = observe(snapshot, planned, results_cache, settings)
    decision = reconcile(observed, settings)
    if unrecorded := record(decision, planned, namespace, name, meta.get("uid") or "", settings, results_cache):
        # Nothing is created on a decision that is not recorded: a later pass could decide otherwise.
        observed = dataclasses.replace(observed, storage_problem=unrecorded)
        decision = reconcile(observed, settings)
    created, rejected = create_jobs(decision, snapshot.body)
    if rejected:  # judge again, knowing what the API server refused: the status says so, nothing else is created
        again = reconcile(dataclasses.replace(observed, jobs={**observed.jobs, **created}, rejected=rejected), settings)
        # Start events name their Job first ("<job>: ..."): keep those of the Jobs that were really created.
        started_events = [e for e in decision.events if e[2].split(":", 1)[0] in created]
        decision = dataclasses.replace(again, events=started_events + again.events)
    waited = time.monotonic() - snapshot.summary_written_at
    wanted = summary_wanted(decision, snapshot.summary_written, waited, settings)
    unstored = store_summary(decision, planned, namespace, name, settings) if wanted else None
    if unstored:
        # Unstored, a finished ablation must not look finished (its timer would stop and the summary never come):
        # the status says storage is unavailable and keeps what it knew; a later pass writes the summary.
        later = reconcile(dataclasses.replace(observed, storage_problem=unstored), settings)
        decision = dataclasses.replace(decision, status=later.status, events=decision.events + later.events)
    outcome = apply(decision, snapshot)
    outcome.created = created
    if wanted and not unstored:
        outcome.summary_written = (decision.status.get("trials") or {}).get("succeeded")
        if decision.finished:  # once per finished ablation (and once more after a restart: artifacts are replaced)
            track_summary(decision, planned, namespace, name)
    outcome.retry = bool(rejected or observed.storage_problem or unstored or unrecorded)
    # Nothing sends an event when these change, so the pass itself says when to look again: a result.json that may
    # be rewritten (checked every result_recheck_seconds) and a pod that will have waited too long.
    rechecks = [next_stuck_check(snapshot.pods, observed.now, settings.unschedulable_after)]
    if observed.results and not decision.finished:
        rechecks.append(settings.result_recheck_seconds)
    if not decision.finished:  # trials run: their progress is read again when its period is over
        rechecks.append(results_cache.progress.next_due(meta.get("uid") or ""))
    if wanted is None:  # results added, summary.json written recently: write it when the interval is over
        rechecks.append(settings.summary_interval - waited)
    outcome.recheck_after = min((r for r in rechecks if r is not None), default=None)
    metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
    return outcome


def create_jobs(decision: Decision, owner: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Create the decided Jobs in order, stopping at the first refusal: (created by name, refused name -> why)."""
    created: dict[str, dict[str, Any]] = {}
    for job in decision.create:
        kopf.append_owner_reference(job, owner=owner)  # deleting the ablation deletes its Jobs; no labels copied
        try:
            kube.create_job(job)
        except kube.JobRefused as error:
            return created, {key_of(job): str(error)}
        created[key_of(job)] = job  # by trial: a multi-node object's own name may be shortened
    return created, {}


def summary_wanted(decision: Decision, written: int | None, waited: float, settings: Settings) -> bool | None:
    """Whether this pass writes summary.json: when results were added since the last write, at once if the
    ablation finished, else at most every `summary_interval` seconds (None: one is owed, but later)."""
    succeeded = (decision.status.get("trials") or {}).get("succeeded")
    if decision.summary is None or succeeded == written:
        return False
    if decision.finished:
        return True
    return True if waited >= settings.summary_interval else None


def store_summary(decision: Decision, planned: Planned, namespace: str, name: str,
                  settings: Settings) -> str | None:  # fmt: skip
    """Write summary.json (and the whole trial list when status holds a capped one); the StorageUnavailable
    message when storage refused."""
    if decision.summary is None or planned.spec is None:
        return None
    try:
        store = collector.ablation_store(planned.spec, namespace, name, settings)
        write_summary(store, decision.summary)
        if decision.status.get("trialStatusesTruncated"):  # status holds a capped list; storage the whole
            collector.write_trial_statuses(store, decision.all_trial_statuses)
    except StorageError as error:
        metrics.STORAGE_ERRORS.inc()
        return collector.describe(error)
    return None


def track_summary(decision: Decision, planned: Planned, namespace: str, name: str) -> None:
    """The finished ablation's summary on its MLflow run (spec.tracking.mlflow), with the operator's own MLflow
    credentials (its environment); advisory: a tracking server that fails costs a warning, nothing else."""
    spec = planned.spec
    if spec is None or spec.tracking is None or decision.summary is None:
        return
    folder = ablation_uri(spec.storage.uri, namespace, name)
    tracking = trial_tracking(spec.tracking, folder)
    if tracking is not None:
        log_summary(tracking, decision.summary, storage_uri=folder)


def apply(decision: Decision, snapshot: Snapshot) -> Outcome:
    meta = snapshot.body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    for job_name in decision.delete:  # a trial may run as a JobSet or TrainJob: target() names what to act on
        kind, obj = target(snapshot.jobs.get(job_name), job_name)
        kube.delete_job(namespace, obj, kind)
    for job_name, suspend in [(n, True) for n in decision.suspend] + [(n, False) for n in decision.resume]:
        kind, obj = target(snapshot.jobs.get(job_name), job_name)
        kube.set_suspend(namespace, obj, suspend, kind)
    involved = {"apiVersion": snapshot.body.get("apiVersion"), "kind": snapshot.body.get("kind"), "name": name,
                "namespace": namespace, "uid": meta.get("uid")}  # fmt: skip
    for event_type, reason, message in aggregate(decision.events):
        if event_type == "Warning":  # an admin reads the operator's log, not each tenant's Events
            log.warning("%s/%s: %s: %s", namespace, name, reason, message[:MAX_LOGGED_MESSAGE])
        if not kube.post_event(involved, event_type, reason, message):
            log.warning("%s/%s: the API refused an Event (%s %s)", namespace, name, event_type, reason)
    outcome = Outcome(states=decision.trial_states)
    patch = merge_patch(snapshot.status, decision.status)
    if patch:
        stored = kube.patch_status(namespace, name, patch)
        if stored is not None:
            outcome.written_status = stored
            if snapshot.queued_at is not None:
                metrics.EVENT_TO_STATUS_SECONDS.observe(time.perf_counter() - snapshot.queued_at)
    metrics.record_trials(namespace, name, decision.status.get("trials"))
    metrics.record_progress(namespace, name, decision.status.get("liveProgress"))
    return outcome
