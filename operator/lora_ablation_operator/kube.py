"""The one module that talks to the Kubernetes API (besides Kopf itself): list, create, stop and
suspend an ablation's Jobs. Every call is idempotent: AlreadyExists and NotFound are outcomes, not errors."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from lora_ablation_operator.jobs import ABLATION_LABEL
from lora_ablation_operator.metrics import API_ERRORS, API_REQUESTS


@lru_cache(maxsize=1)
def batch_api() -> kubernetes.client.BatchV1Api:
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return kubernetes.client.BatchV1Api()


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
    """True when created, False when a Job of that name already exists (a restart or a duplicate event)."""
    try:
        _call("create", batch_api().create_namespaced_job, body["metadata"]["namespace"], body, _preload_content=False)
    except ApiException as error:
        if error.status == 409:
            return False
        raise
    return True


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
