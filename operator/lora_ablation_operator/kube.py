"""The one module that talks to the Kubernetes API (besides Kopf itself): list, create, stop and
suspend an ablation's Jobs, list its pods. Every call is idempotent: AlreadyExists and NotFound are outcomes,
not errors; a refusal that retrying cannot fix soon is JobRefused, with the API server's own message."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from lora_ablation_operator.jobs import ABLATION_LABEL
from lora_ablation_operator.metrics import API_ERRORS, API_REQUESTS

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
        kubernetes.config.load_kube_config()
    return kubernetes.client.ApiClient()


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


def _call(verb: str, fn, *args, **kwargs):
    API_REQUESTS.labels(verb).inc()
    try:
        return fn(*args, **kwargs)
    except ApiException as error:
        API_ERRORS.labels(verb, str(error.status)).inc()
        raise


def list_jobs(namespace: str, ablation: str) -> dict[str, dict[str, Any]]:
    """The ablation's Jobs (trials and preflight) as plain camelCase dicts, by name."""
    response = _call(
        "list",
        batch_api().list_namespaced_job,
        namespace,
        label_selector=f"{ABLATION_LABEL}={ablation}",
        _preload_content=False,
    )
    items = json.loads(response.data).get("items") or []
    return {item["metadata"]["name"]: item for item in items}


def create_job(body: dict[str, Any]) -> bool:
    """True when created, False when a Job of that name already exists (a restart or a duplicate event);
    JobRefused when the API server will not accept it as it stands."""
    try:
        _call("create", batch_api().create_namespaced_job, body["metadata"]["namespace"], body, _preload_content=False)
    except ApiException as error:
        if error.status == 409:
            return False
        if error.status in REFUSED:
            raise JobRefused(api_message(error)) from None
        raise
    return True


def list_pods(namespace: str, ablation: str) -> list[dict[str, Any]]:
    """The pods of the ablation's Jobs (they carry the Jobs' labels), as plain dicts."""
    response = _call(
        "list",
        core_api().list_namespaced_pod,
        namespace,
        label_selector=f"{ABLATION_LABEL}={ablation}",
        _preload_content=False,
    )
    return json.loads(response.data).get("items") or []


def delete_job(namespace: str, name: str) -> bool:
    """Stop a Job and its pods; False when it is already gone."""
    try:
        _call("delete", batch_api().delete_namespaced_job, name, namespace, propagation_policy="Background",
              _preload_content=False)  # fmt: skip
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def set_suspend(namespace: str, name: str, suspend: bool) -> None:
    try:
        _call("patch", batch_api().patch_namespaced_job, name, namespace, {"spec": {"suspend": suspend}},
              _preload_content=False)  # fmt: skip
    except ApiException as error:
        if error.status != 404:
            raise
