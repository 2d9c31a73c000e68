"""Kopf handlers: a few lines each. Every trigger (create, update, resume, timer) runs the same
level-based reconcile; logic lives in reconcile.py, API calls in kube.py, storage in collector.py."""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import datetime, timezone
from typing import Any

import kopf

from lora_ablation.api.base import GROUP, PLURAL, VERSION
from lora_ablation.naming import label_value
from lora_ablation.store import StorageError
from lora_ablation_operator import collector, kube, metrics
from lora_ablation_operator import conditions as c
from lora_ablation_operator.observe import completed_trials, is_preflight_job, job_finished, stuck_jobs
from lora_ablation_operator.planning import PlanCache, Planned
from lora_ablation_operator.reconcile import Decision, Observed, reconcile
from lora_ablation_operator.settings import Settings

SETTINGS = Settings.from_env()
RESULTS = collector.ResultCache(SETTINGS.result_recheck_seconds)
PLANS = PlanCache()
log = logging.getLogger(__name__)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Kopf's own bookkeeping goes to annotations, so status holds only what the CRD schema describes.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.execution.max_workers = SETTINGS.workers
    settings.peering.priority = SETTINGS.peering_priority  # each replica its own (chart: replicaCount > 1)
    if SETTINGS.metrics_port:
        metrics.serve(SETTINGS.metrics_port)


def _finished(status: dict[str, Any], generation: int | None) -> bool:
    ready = next((x for x in status.get("conditions") or [] if x.get("type") == c.READY), {})
    final = {c.COMPLETED, c.COMPLETED_WITH_FAILURES, c.TOO_MANY_FAILURES, c.PREFLIGHT_FAILED, c.INVALID_SPEC,
             c.FORBIDDEN}
    return ready.get("reason") in final and status.get("observedGeneration") == generation


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def observe(planned: Planned, name: str, namespace: str, uid: str, meta: Any, spec: Any, status: Any) -> Observed:
    """Everything reconcile needs from the API and storage; storage failures become an observation, not an error."""
    now, ablation = _now(), label_value(name)
    jobs = kube.list_jobs(namespace, ablation)
    active = any(not (job_finished(j, "Complete") or job_finished(j, "Failed")) for j in jobs.values())
    stuck = stuck_jobs(kube.list_pods(namespace, ablation), now, SETTINGS.unschedulable_after) if active else {}
    results: dict[str, Any] = {}
    problems, storage_problem = None, None
    if planned.spec is not None:
        try:
            store = collector.ablation_store(planned.spec, namespace, name, SETTINGS)
            results = RESULTS.collect(uid, store, completed_trials(jobs))
            if any(job_finished(j, "Failed") for j in jobs.values() if is_preflight_job(j)):
                problems = collector.preflight_problems(store)
        except StorageError as error:
            metrics.STORAGE_ERRORS.inc()
            storage_problem = collector.describe(error)
    return Observed(name, namespace, meta.get("generation"), dict(spec), dict(status), jobs, results, problems, now,
                    planned, storage_problem, stuck=stuck)  # fmt: skip


def run_reconcile(body: kopf.Body, name: str, namespace: str, uid: str, meta: Any, spec: Any, status: Any,
                  patch: kopf.Patch) -> None:  # fmt: skip
    started = time.perf_counter()
    planned = PLANS.get(uid, meta.get("generation"), name, namespace, dict(spec), SETTINGS)
    observed = observe(planned, name, namespace, uid, meta, spec, status)
    decision = reconcile(observed, SETTINGS)
    created, rejected = create_jobs(decision, body)
    if rejected:  # judge again, knowing what the API server refused: the status says so, nothing else is created
        again = reconcile(dataclasses.replace(observed, jobs={**observed.jobs, **created}, rejected=rejected), SETTINGS)
        # Start events name their Job first ("<job>: ..."): keep those of the Jobs that were really created.
        started_events = [e for e in decision.events if e[2].split(":", 1)[0] in created]
        decision = dataclasses.replace(again, events=started_events + again.events)
    if problem := store_summary(decision, planned, namespace, name, dict(status)):
        # Unstored, a finished ablation must not look finished (its timer would stop and the summary never come):
        # the status says storage is unavailable and keeps what it knew; a later reconcile writes the summary.
        unstored = reconcile(dataclasses.replace(observed, storage_problem=problem), SETTINGS)
        decision = dataclasses.replace(decision, status=unstored.status, events=decision.events + unstored.events)
    apply(decision, body, patch)
    metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)


def create_jobs(decision: Decision, body: kopf.Body) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Create the decided Jobs in order, stopping at the first refusal: (created by name, refused name -> why)."""
    created: dict[str, dict[str, Any]] = {}
    for job in decision.create:
        kopf.append_owner_reference(job, owner=body)  # deleting the ablation deletes its Jobs; no labels copied
        try:
            kube.create_job(job)
        except kube.JobRefused as error:
            return created, {job["metadata"]["name"]: str(error)}
        created[job["metadata"]["name"]] = job
    return created, {}


def store_summary(decision: Decision, planned: Planned, namespace: str, name: str,
                  previous: dict[str, Any]) -> str | None:  # fmt: skip
    """Write summary.json (and the whole trial list) when a result was added or the ablation finished; the
    StorageUnavailable message when storage refused."""
    succeeded = (decision.status.get("trials") or {}).get("succeeded")
    if decision.summary is None or planned.spec is None:
        return None
    if not decision.finished and succeeded == (previous.get("trials") or {}).get("succeeded"):
        return None
    try:
        store = collector.ablation_store(planned.spec, namespace, name, SETTINGS)
        collector.write_summary(store, decision.summary)
        if decision.status.get("trialStatusesTruncated"):  # status holds a capped list; storage the whole
            collector.write_trial_statuses(store, decision.all_trial_statuses)
    except StorageError as error:
        metrics.STORAGE_ERRORS.inc()
        return collector.describe(error)
    return None


def apply(decision: Decision, body: kopf.Body, patch: kopf.Patch) -> None:
    namespace, name = body.metadata.namespace, body.metadata.name
    for job_name in decision.delete:
        kube.delete_job(namespace, job_name)
    for job_name in decision.suspend:
        kube.set_suspend(namespace, job_name, True)
    for job_name in decision.resume:
        kube.set_suspend(namespace, job_name, False)
    for event_type, reason, message in decision.events:
        (kopf.warn if event_type == "Warning" else kopf.info)(body, reason=reason, message=message)
    patch.status.update(decision.status)
    metrics.record_trials(namespace, name, decision.status.get("trials"))


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def on_change(body: kopf.Body, name: str, namespace: str, uid: str, meta: Any, spec: Any, status: Any,
              patch: kopf.Patch, **_: Any) -> None:  # fmt: skip
    run_reconcile(body, name, namespace, uid, meta, spec, status, patch)


@kopf.timer(GROUP, VERSION, PLURAL, interval=SETTINGS.reconcile_interval, initial_delay=SETTINGS.reconcile_interval,
            when=lambda status, meta, **_: not _finished(dict(status), meta.get("generation")))  # fmt: skip
def on_timer(body: kopf.Body, name: str, namespace: str, uid: str, meta: Any, spec: Any, status: Any,
             patch: kopf.Patch, **_: Any) -> None:  # fmt: skip
    run_reconcile(body, name, namespace, uid, meta, spec, status, patch)


def _removes_results(spec: Any, **_: Any) -> bool:
    storage = spec.get("storage") if hasattr(spec, "get") else None
    return isinstance(storage, dict) and storage.get("retainOnDelete") is False


@kopf.on.delete(GROUP, VERSION, PLURAL, when=_removes_results)
def on_delete(body: kopf.Body, name: str, namespace: str, spec: Any, retry: int, logger: Any, **_: Any) -> None:
    """Jobs go with their owner (ownerReferences); results go only when the spec asks for it. Bounded: after
    settings.delete_retries failed tries the object is let go with a Warning, so deletion never hangs."""
    try:
        removed, uri = collector.delete_results(spec.get("storage"), namespace, name, SETTINGS)
    except ValueError as error:  # nothing usable to delete from: say so and let the object go
        kopf.warn(body, reason="ResultsKept", message=f"results not deleted: {error}")
        return
    except StorageError as error:
        if retry + 1 < SETTINGS.delete_retries:
            raise kopf.TemporaryError(f"results not deleted yet: {error}", delay=SETTINGS.delete_retry_delay) from None
        kopf.warn(body, reason="ResultsKept", message=f"results not deleted after {retry + 1} tries: {error}")
        return
    logger.info("storage.retainOnDelete is false: removed %d objects under %s", removed, uri)


@kopf.on.event(GROUP, VERSION, PLURAL)
def on_event(event: dict[str, Any], namespace: str, name: str, uid: str, **_: Any) -> None:
    """Every deletion, whatever retainOnDelete says, drops what the process holds for the object."""
    if event.get("type") == "DELETED":
        RESULTS.forget(uid)
        PLANS.forget(uid)
        metrics.record_trials(namespace, name, None)
