"""The one module that talks to the Kubernetes API (besides Kopf itself, which watches): create, stop and
suspend an ablation's Jobs, patch its status, post its Events. Every call is idempotent: AlreadyExists and NotFound
are outcomes, not errors; a refusal that retrying cannot fix soon is JobRefused, with the API server's own message.
All calls share one token bucket (settings apiQps/apiBurst), as client-go's QPS and burst protect the API server."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from lora_ablation.api.base import GROUP, PLURAL, VERSION
from lora_ablation_operator.metrics import API_ERRORS, API_REQUESTS
from lora_ablation_operator.multinode import KINDS

# Refusals that say the request itself cannot be accepted as it stands (invalid, forbidden by admission or
# quota, a missing namespace); 409 is "exists already", and 429 and 5xx are worth retrying as they are.
REFUSED = frozenset({400, 403, 404, 422})


class JobRefused(Exception):
    """The API server refused to create a Job; the message is its own (`jobs "x" is forbidden: ...`)."""


@lru_cache(maxsize=1)
def _client() -> kubernetes.client.ApiClient:
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # read now, not at import
    client = kubernetes.client.ApiClient()
    client.user_agent = "lora-ablation-operator/0.1"  # tells our requests apart in API server audit logs
    return client


def batch_api() -> kubernetes.client.BatchV1Api:
    return kubernetes.client.BatchV1Api(_client())


def core_api() -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(_client())


def api_message(error: ApiException) -> str:
    """The Status message of an API error, or its HTTP reason; bounded, for a condition message."""
    try:
        message = json.loads(error.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return f"{error.status} {error.reason}: {message or error.reason or 'no message'}"[:600]


class RateLimiter:
    """A token bucket: `burst` requests at once, then `qps` per second; callers past it sleep. qps <= 0: no limit."""

    def __init__(self, qps: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:  # fmt: skip
        self.qps, self.burst, self._clock, self._sleep = qps, max(1, burst), clock, sleep
        self._tokens, self._last = float(self.burst), clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token, waiting if none is left; the seconds waited."""
        if self.qps <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
            self._last = now
            self._tokens -= 1  # reserved now; a negative balance is the queue of waiting callers
            wait = -self._tokens / self.qps if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


LIMITER = RateLimiter(0, 1)


def configure(qps: float, burst: int) -> None:
    global LIMITER
    LIMITER = RateLimiter(qps, burst)


def _call(verb: str, fn, *args, resource: str = "jobs", **kwargs):
    LIMITER.acquire()
    API_REQUESTS.labels(verb, resource).inc()
    try:
        return fn(*args, **kwargs)
    except ApiException as error:
        API_ERRORS.labels(verb, resource, str(error.status)).inc()
        raise


def custom_api() -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(_client())


def create_job(body: dict[str, Any]) -> bool:
    """True when created, False when a Job of that name already exists (a restart or a duplicate event);
    JobRefused when the API server will not accept it as it stands. A JobSet or TrainJob (a multi-node trial) goes
    the same way, as a custom object."""
    namespace = body["metadata"]["namespace"]
    try:
        if body.get("kind", "Job") == "Job":
            _call("create", batch_api().create_namespaced_job, namespace, body, _preload_content=False)
        else:
            kind = KINDS[body["kind"]]
            _call("create", custom_api().create_namespaced_custom_object, kind.group, kind.version, namespace,
                  kind.plural, body, resource=kind.plural, _preload_content=False)  # fmt: skip
    except ApiException as error:
        if error.status == 409:
            return False
        if error.status in REFUSED:
            raise JobRefused(api_message(error)) from None
        raise
    return True


def delete_job(namespace: str, name: str, kind: str = "Job") -> bool:
    """Stop a Job (or a multi-node trial's JobSet or TrainJob) and its pods; False when it is already gone."""
    try:
        if kind == "Job":
            _call("delete", batch_api().delete_namespaced_job, name, namespace, propagation_policy="Background",
                  _preload_content=False)  # fmt: skip
        else:
            custom = KINDS[kind]
            _call("delete", custom_api().delete_namespaced_custom_object, custom.group, custom.version, namespace,
                  custom.plural, name, propagation_policy="Background", resource=custom.plural,
                  _preload_content=False)  # fmt: skip
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def set_suspend(namespace: str, name: str, suspend: bool, kind: str = "Job") -> None:
    """Suspend or resume; a JobSet and a TrainJob have spec.suspend too, and pass it on to their Jobs."""
    patch = {"spec": {"suspend": suspend}}
    try:
        if kind == "Job":
            _call("patch", batch_api().patch_namespaced_job, name, namespace, patch, _preload_content=False)
        else:
            custom = KINDS[kind]
            _call("patch", custom_api().patch_namespaced_custom_object, custom.group, custom.version, namespace,
                  custom.plural, name, patch, resource=custom.plural, _preload_content=False)  # fmt: skip
    except ApiException as error:
        if error.status != 404:
            raise


def patch_status(namespace: str, name: str, patch: dict[str, Any]) -> tuple[dict[str, Any], str | None] | None:
    """Merge-patch the ablation's status subresource: (the status as stored, the object's new resourceVersion),
    or None when the object is gone."""
    custom = custom_api()
    try:
        response = _call("patch", custom.patch_namespaced_custom_object_status, GROUP, VERSION, namespace, PLURAL,
                         name, {"status": patch}, resource=PLURAL, _preload_content=False)  # fmt: skip
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    stored = json.loads(response.data)
    status = stored.get("status")
    return (status if isinstance(status, dict) else {}), (stored.get("metadata") or {}).get("resourceVersion")


def post_event(involved: dict[str, Any], event_type: str, reason: str, message: str) -> bool:
    """One core/v1 Event about the ablation (what `kubectl describe` shows); False when the API refused it, which
    is logged by the caller and never fails a reconcile."""
    now = datetime.now(timezone.utc)
    body = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{involved['name']}.", "namespace": involved["namespace"]},
        "involvedObject": involved, "type": event_type, "reason": reason, "message": message,
        "action": reason, "reportingComponent": "lora-ablation-operator", "reportingInstance": "lora-ablation-operator",
        "source": {"component": "lora-ablation-operator"}, "count": 1,
        "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }  # fmt: skip
    try:
        _call("create", core_api().create_namespaced_event, involved["namespace"], body, resource="events",
              _preload_content=False)  # fmt: skip
    except ApiException:
        return False
    return True
