"""Kopf handlers: a few lines each. Kopf watches the ablations, their Jobs and their pods; every event queues the
owning ablation in the controller's work queue (controller.py), whose workers run one level-based pass per
ablation (reconcile_pass.py). A daemon per ablation gates its passes on Kopf handling it (peering, deletion) and is
the slow safety net for anything a watch could miss."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from lora_ablation.api.base import GROUP, PLURAL, VERSION
from lora_ablation.storage.store import StorageError
from lora_ablation_operator import collector, kube, metrics
from lora_ablation_operator.controller import Controller
from lora_ablation_operator.jobs import ABLATION_LABEL
from lora_ablation_operator.multinode import KINDS, compact_multi_node
from lora_ablation_operator.observe import compact_job, compact_pod
from lora_ablation_operator.settings import Settings

SETTINGS = Settings.from_env()
CONTROLLER = Controller(SETTINGS)
MULTI_NODE = KINDS[SETTINGS.multi_node_engine]
OURS = {ABLATION_LABEL: kopf.PRESENT}
QUIET = ("job_event", "pod_event", "ablation_event", "multi_node_event")  # run on every watch event: success is no news


class _QuietEventHandlers(logging.Filter):
    """Kopf logs every handler's success at INFO: one line per Job and pod event would drown the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.endswith("succeeded.") and any(f"'{name}'" in message for name in QUIET))


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Kopf's own bookkeeping goes to annotations, so status holds only what the CRD schema describes.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    logging.getLogger("kopf.objects").addFilter(_QuietEventHandlers())
    settings.execution.max_workers = SETTINGS.workers
    # Server-side selectors: the API server streams only our Jobs and pods, not every pod of the cluster.
    settings.watching.label_selectors["batch", "v1", "jobs"] = ABLATION_LABEL
    settings.watching.label_selectors["v1", "pods"] = ABLATION_LABEL
    if SETTINGS.multi_node_enabled:
        settings.watching.label_selectors[MULTI_NODE.group, MULTI_NODE.version, MULTI_NODE.plural] = ABLATION_LABEL
    settings.watching.server_timeout = SETTINGS.watch_timeout
    settings.watching.client_timeout = SETTINGS.watch_timeout + 60
    settings.peering.priority = SETTINGS.peering_priority  # each replica its own (chart: replicaCount > 1)
    kube.configure(SETTINGS.api_qps, SETTINGS.api_burst)
    if SETTINGS.metrics_port:
        metrics.serve(SETTINGS.metrics_port)
    CONTROLLER.start()


@kopf.on.cleanup()
async def shutdown(**_: Any) -> None:
    await CONTROLLER.stop()


@kopf.index("batch", "v1", "jobs", labels=OURS)
async def trial_jobs(namespace: str, labels: Any, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """The watch cache of Jobs: (namespace, ablation label) -> the few fields a pass reads of each."""
    return {(namespace, labels[ABLATION_LABEL]): compact_job(dict(body))}


@kopf.index("v1", "pods", labels=OURS)
async def problem_pods(namespace: str, labels: Any, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """Only pods that may be unable to start are kept (an empty result drops a pod that recovered)."""
    pod = compact_pod(dict(body))
    return {(namespace, labels[ABLATION_LABEL]): pod} if pod else {}


@kopf.on.event("batch", "v1", "jobs", labels=OURS)
async def job_event(event: dict[str, Any], namespace: str, labels: Any, **kwargs: Any) -> None:
    CONTROLLER.bind(kwargs["trial_jobs"], kwargs["problem_pods"], kwargs.get("multi_node_trials"))
    CONTROLLER.child_event(namespace, labels[ABLATION_LABEL], deleted=event.get("type") == "DELETED")


@kopf.on.event("v1", "pods", labels=OURS)
async def pod_event(event: dict[str, Any], namespace: str, labels: Any, body: kopf.Body, **kwargs: Any) -> None:
    if compact_pod(dict(body)) is not None:  # a pod starting normally changes its Job too: that event suffices
        CONTROLLER.bind(kwargs["trial_jobs"], kwargs["problem_pods"], kwargs.get("multi_node_trials"))
        CONTROLLER.child_event(namespace, labels[ABLATION_LABEL], deleted=False)


# Multi-node trials (JobSet or TrainJob) are watched only when enabled: the kind exists only where the engine is
# installed, and the chart grants the verbs on it only then.
if SETTINGS.multi_node_enabled:

    @kopf.index(MULTI_NODE.group, MULTI_NODE.version, MULTI_NODE.plural, labels=OURS)
    async def multi_node_trials(namespace: str, labels: Any, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {(namespace, labels[ABLATION_LABEL]): compact_multi_node(dict(body))}

    @kopf.on.event(MULTI_NODE.group, MULTI_NODE.version, MULTI_NODE.plural, labels=OURS)
    async def multi_node_event(event: dict[str, Any], namespace: str, labels: Any, **kwargs: Any) -> None:
        CONTROLLER.bind(kwargs["trial_jobs"], kwargs["problem_pods"], kwargs["multi_node_trials"])
        CONTROLLER.child_event(namespace, labels[ABLATION_LABEL], deleted=event.get("type") == "DELETED")


@kopf.on.event(GROUP, VERSION, PLURAL)
async def ablation_event(event: dict[str, Any], **kwargs: Any) -> None:
    """Created, edited, first seen after a start, deleted; our own status writes too (ignored unless the spec
    changed). Runs only once Kopf has listed every Job and pod, so a pass never mistakes a cold cache for none."""
    CONTROLLER.bind(kwargs["trial_jobs"], kwargs["problem_pods"], kwargs.get("multi_node_trials"))
    CONTROLLER.ablation_event(event.get("type"), event.get("object") or {})


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=5.0)
async def active(stopped: kopf.DaemonStopped, body: kopf.Body, namespace: str, name: str, **_: Any) -> None:
    """Runs while Kopf handles this ablation: passes run only then (Kopf stops daemons when a peer with a higher
    priority takes over and before the object is deleted), and it is the safety-net resync, rarely."""
    CONTROLLER.activate(dict(body))
    try:
        while not stopped:
            await stopped.wait(SETTINGS.resync_interval)
            if not stopped:
                CONTROLLER.resync((namespace, name))
    finally:
        CONTROLLER.deactivate((namespace, name))


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
