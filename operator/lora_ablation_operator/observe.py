"""Reading what the cluster reports: Job conditions, failure reasons, and pods that cannot start. Pure functions
over the plain dicts the API returns; nothing here trusts a field to be present or well-typed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from lora_ablation_operator.jobs import COMPONENT_LABEL, STAGE_ANNOTATION, TRIAL_LABEL, TRIALS_ANNOTATION

# Container waiting reasons that do not clear by waiting: the image, its pull secret or the pod's config is wrong.
STUCK_WAITING = frozenset({
    "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError",
    "CreateContainerError", "RunContainerError",
})  # fmt: skip
# The trial label first (set on every trial pod by the operator): a multi-node trial's pods belong to child Jobs
# the JobSet controller names, but the operator knows the trial by its name; then what the Job controller sets.
JOB_NAME_LABELS = (TRIAL_LABEL, "batch.kubernetes.io/job-name", "job-name")
UNIT_ANNOTATIONS = (TRIALS_ANNOTATION, STAGE_ANNOTATION)  # which trials a workload runs, which stage
MAX_TERMINATION_MESSAGE = 1024  # the kubelet keeps at most 4096 bytes; status messages are cut at 512 anyway


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def job_finished(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The Job's Complete or Failed condition when it is True."""
    for cond in _list(_dict(job.get("status")).get("conditions")):
        if _dict(cond).get("type") == kind and cond.get("status") == "True":
            return cond
    return None


def is_trial_job(job: dict[str, Any]) -> bool:
    return bool(_dict(_dict(job.get("metadata")).get("labels")).get(TRIAL_LABEL))


def is_preflight_job(job: dict[str, Any]) -> bool:
    return _dict(_dict(job.get("metadata")).get("labels")).get(COMPONENT_LABEL) == "preflight"


def completed_trials(jobs: dict[str, dict[str, Any]]) -> list[str]:
    """Trial names whose Job completed: the handler reads their result.json before reconciling."""
    return [n for n, j in jobs.items() if is_trial_job(j) and job_finished(j, "Complete")]


def failure_message(job: dict[str, Any]) -> str:
    cond = job_finished(job, "Failed") or {}
    reason, message = str(cond.get("reason") or ""), str(cond.get("message") or "")
    if reason == "PodFailurePolicy":
        return f"permanent error (trainer exit code 42): {message}".strip()
    if reason == "DeadlineExceeded":
        return "exceeded execution.activeDeadlineSeconds"
    if reason == "BackoffLimitExceeded":
        limit = _dict(job.get("spec")).get("backoffLimit")
        tries = f"{limit + 1} attempts" if isinstance(limit, int) else "its retries"
        return f"failed after {tries}: {message}".strip(": ")
    return f"{reason}: {message}".strip(": ") or "failed"


def _seconds_since(timestamp: Any, now: str) -> float | None:
    try:
        then = datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
        return (datetime.fromisoformat(now.replace("Z", "+00:00")) - then).total_seconds()
    except ValueError:
        return None


def pod_problem(pod: dict[str, Any], now: str, unschedulable_after: float) -> str | None:
    """Why a pod cannot start, naming it and quoting the kubelet or scheduler, or None while it may still start.

    Image and configuration errors count at once (waiting does not fix them); Unschedulable only after
    `unschedulable_after` seconds, since a cluster autoscaler may be adding the GPU node it waits for.
    """
    name = _dict(pod.get("metadata")).get("name", "?")
    status = _dict(pod.get("status"))
    if status.get("phase") not in (None, "Pending"):
        return None
    for container in [*_list(status.get("initContainerStatuses")), *_list(status.get("containerStatuses"))]:
        waiting = _dict(_dict(_dict(container).get("state")).get("waiting"))
        if waiting.get("reason") in STUCK_WAITING:
            detail = str(waiting.get("message") or "")[:300]
            return f"pod {name}: {waiting['reason']}" + (f": {detail}" if detail else "")
    for cond in _list(status.get("conditions")):
        cond = _dict(cond)
        if (cond.get("type"), cond.get("status"), cond.get("reason")) == ("PodScheduled", "False", "Unschedulable"):
            waited = _seconds_since(cond.get("lastTransitionTime"), now)
            if waited is not None and waited >= unschedulable_after:
                detail = str(cond.get("message") or "")[:300]
                return f"pod {name}: Unschedulable for {int(waited)}s" + (f": {detail}" if detail else "")
    return None


def stuck_jobs(pods: list[dict[str, Any]], now: str, unschedulable_after: float) -> dict[str, str]:
    """Job name -> why its pod cannot start, for the pods that cannot."""
    out: dict[str, str] = {}
    for pod in pods:
        labels = _dict(_dict(pod.get("metadata")).get("labels"))
        job = next((labels[k] for k in JOB_NAME_LABELS if k in labels), None)
        problem = pod_problem(pod, now, unschedulable_after) if job else None
        if job and problem:
            out.setdefault(str(job), problem)
    return out


def compact_job(job: dict[str, Any]) -> dict[str, Any]:
    """What the operator reads of a Job, and nothing else: what the watch cache keeps per Job (a full Job with its
    pod template and trial contract is ~10x larger, and 10,000 of them are held at once)."""
    meta, spec, status = _dict(job.get("metadata")), _dict(job.get("spec")), _dict(job.get("status"))
    labels = _dict(meta.get("labels"))
    return {
        "metadata": {
            "name": meta.get("name"),
            "labels": {k: labels[k] for k in (TRIAL_LABEL, COMPONENT_LABEL) if k in labels},
            "annotations": {k: str(v) for k, v in _dict(meta.get("annotations")).items() if k in UNIT_ANNOTATIONS},
        },
        "spec": {k: spec[k] for k in ("suspend", "backoffLimit") if k in spec},
        "status": {
            "conditions": [
                {k: _dict(cond).get(k) for k in ("type", "status", "reason", "message")}
                for cond in _list(status.get("conditions"))
            ],
            **{k: status[k] for k in ("active", "ready", "startTime") if k in status},
        },
    }


def _failed_containers(status: dict[str, Any]) -> list[dict[str, Any]]:
    """Containers that ended with a non-zero exit code, reduced to their termination (message bounded)."""
    out = []
    for container in _list(status.get("containerStatuses")):
        ended = _dict(_dict(_dict(container).get("state")).get("terminated"))
        if isinstance(ended.get("exitCode"), int) and ended["exitCode"] != 0:
            message = str(ended.get("message") or "")[:MAX_TERMINATION_MESSAGE]
            terminated = {"exitCode": ended["exitCode"], "reason": ended.get("reason"), "message": message}
            out.append({"name": _dict(container).get("name"), "state": {"terminated": terminated}})
    return out


def compact_pod(pod: dict[str, Any]) -> dict[str, Any] | None:
    """A pod that may be unable to start (pending with an image/config error or unschedulable, however long so
    far), reduced to what pod_problem reads, or one whose container failed (its termination message: the
    trainer writes why there, e.g. the step where the loss diverged); None for the others, which the cache
    then does not hold."""
    meta, status = _dict(pod.get("metadata")), _dict(pod.get("status"))
    labels = {k: v for k, v in _dict(meta.get("labels")).items() if k in JOB_NAME_LABELS}
    if pod_problem(pod, "9999-12-31T00:00:00Z", 0.0) is not None:
        keys = ("phase", "initContainerStatuses", "containerStatuses", "conditions")
        kept = {k: status[k] for k in keys if k in status}
    elif failed := _failed_containers(status):
        kept = {"phase": status.get("phase"), "containerStatuses": failed}
    else:
        return None
    return {"metadata": {"name": meta.get("name"), "labels": labels}, "status": kept}


def termination_messages(pods: list[dict[str, Any]]) -> dict[str, str]:
    """Job name -> the termination message of its pod's failed container (the last pod's wins), when it wrote one."""
    out: dict[str, str] = {}
    for pod in pods:
        labels = _dict(_dict(pod.get("metadata")).get("labels"))
        job = next((labels[k] for k in JOB_NAME_LABELS if k in labels), None)
        for container in _failed_containers(_dict(pod.get("status"))):
            message = container["state"]["terminated"]["message"].strip()
            if job and message:
                out[str(job)] = message
    return out


def next_stuck_check(pods: list[dict[str, Any]], now: str, unschedulable_after: float) -> float | None:
    """Seconds until the first unschedulable pod has waited `unschedulable_after` (nothing changes on the pod at
    that moment, so no event comes: the controller rechecks then); None when no pod is waiting for that."""
    waits = []
    for pod in pods:
        for cond in _list(_dict(pod.get("status")).get("conditions")):
            cond = _dict(cond)
            if (cond.get("type"), cond.get("status"), cond.get("reason")) == ("PodScheduled", "False", "Unschedulable"):
                waited = _seconds_since(cond.get("lastTransitionTime"), now)
                if waited is not None and waited < unschedulable_after:
                    waits.append(unschedulable_after - waited)
    return min(waits) if waits else None
