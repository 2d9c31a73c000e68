"""Kopf handlers: a few lines each. Every trigger (create, update, resume, timer) runs the same
level-based reconcile; logic lives in reconcile.py, API calls in kube.py, storage in collector.py."""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime, timezone
from typing import Any

import kopf

from lora_ablation.api.base import GROUP, PLURAL, VERSION, SpecError
from lora_ablation.api.resource import parse_spec
from lora_ablation.store import StorageError
from lora_ablation_operator import collector, kube, metrics
from lora_ablation_operator import conditions as c
from lora_ablation_operator.reconcile import Decision, Observed, completed_trials, job_finished, reconcile
from lora_ablation_operator.settings import Settings

SETTINGS = Settings.from_env()
RESULTS = collector.ResultCache()
log = logging.getLogger(__name__)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Kopf's own bookkeeping goes to annotations, so status holds only what the CRD schema describes.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.execution.max_workers = int(os.environ.get("LORA_ABLATION_WORKERS", "8"))
    port = int(os.environ.get("LORA_ABLATION_METRICS_PORT", "0"))
    if port:
        metrics.serve(port)


def _finished(status: dict[str, Any], generation: int | None) -> bool:
    ready = next((x for x in status.get("conditions") or [] if x.get("type") == c.READY), {})
    final = {c.COMPLETED, c.COMPLETED_WITH_FAILURES, c.TOO_MANY_FAILURES, c.PREFLIGHT_FAILED, c.INVALID_SPEC}
    return ready.get("reason") in final and status.get("observedGeneration") == generation


def run_reconcile(body: kopf.Body, name: str, namespace: str, uid: str, meta: Any, spec: Any, status: Any,
                  patch: kopf.Patch) -> None:  # fmt: skip
    started = time.perf_counter()
    spec_dict, status_dict = dict(spec), dict(status)
    jobs = kube.list_jobs(namespace, name)
    results: dict[str, Any] = {}
    problems = None
    store = None
    try:
        parsed = parse_spec(spec_dict)
        if not parsed.storage.uri.startswith("file://"):
            store = collector.ablation_store(parsed, namespace, name, SETTINGS.default_storage_endpoint)
            results = RESULTS.collect(uid, store, completed_trials(jobs))
            if any(job_finished(j, "Failed") for n, j in jobs.items() if "-preflight-" in n):
                problems = collector.preflight_problems(store)
    except SpecError:
        pass  # reconcile reports it as a condition
    except StorageError as error:
        metrics.STORAGE_ERRORS.inc()
        raise kopf.TemporaryError(f"results storage unavailable: {error}", delay=30) from None
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    observed = Observed(name, namespace, meta.get("generation"), spec_dict, status_dict, jobs, results, problems, now)
    decision = reconcile(observed, SETTINGS)
    apply(decision, body, patch, store, status_dict)
    metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)


def apply(decision: Decision, body: kopf.Body, patch: kopf.Patch, store: Any, previous: dict[str, Any]) -> None:
    namespace, name = body.metadata.namespace, body.metadata.name
    for job in decision.create:
        kopf.adopt(job, owner=body)  # ownerReferences: deleting the ablation deletes its Jobs
        kube.create_job(job)
    for job_name in decision.delete:
        kube.delete_job(namespace, job_name)
    for job_name in decision.suspend:
        kube.set_suspend(namespace, job_name, True)
    for job_name in decision.resume:
        kube.set_suspend(namespace, job_name, False)
    succeeded = (decision.status.get("trials") or {}).get("succeeded")
    if (
        decision.summary is not None
        and store is not None
        and (decision.finished or succeeded != (previous.get("trials") or {}).get("succeeded"))
    ):
        collector.write_summary(store, decision.summary)
        if decision.status.get("trialStatusesTruncated"):  # status holds a capped list; storage the whole
            collector.write_trial_statuses(store, decision.all_trial_statuses)
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


@kopf.on.delete(GROUP, VERSION, PLURAL,
                when=lambda spec, **_: (spec.get("storage") or {}).get("retainOnDelete") is False)  # fmt: skip
def on_delete(name: str, namespace: str, uid: str, spec: Any, logger: Any, **_: Any) -> None:
    """Jobs go with their owner (ownerReferences); results go only when the spec asks for it."""
    store = collector.ablation_store(parse_spec(dict(spec)), namespace, name, SETTINGS.default_storage_endpoint)
    removed = store.delete_prefix("")
    logger.info("storage.retainOnDelete is false: removed %d objects under %s", removed, store.uri)
    RESULTS.forget(uid)
    metrics.record_trials(namespace, name, None)
