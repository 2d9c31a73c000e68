"""Pure builders and readers for trials of more than one node (execution.nodes > 1), run by an engine the
cluster already has: a JobSet (jobset.x-k8s.io) built from the same pod as the single-pod trial Job, or a Kubeflow
Trainer TrainJob through its torch runtime. No API calls here; kube.py creates, stops and suspends them.

A compact multi-node object has the shape of observe.compact_job, keyed by its trial's name, with its conditions
mapped to a Job's (Complete, Failed), so reconcile judges it exactly as it judges a Job."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lora_ablation.api.contract import EXIT_PERMANENT
from lora_ablation.api.naming import config_hash
from lora_ablation.api.spec import LoraAblationSpec
from lora_ablation.planning.plan import PlannedTrial
from lora_ablation.run.schedule import Unit
from lora_ablation_operator.jobs import (
    COMPONENT_LABEL,
    CONTAINER,
    GROUP,
    QUEUE_LABEL,
    TRIAL_LABEL,
    single,
    unit_job,
    unit_pod,
)
from lora_ablation_operator.observe import UNIT_ANNOTATIONS
from lora_ablation_operator.settings import Settings

REPLICATED_JOB = "node"  # as Kubeflow Trainer's torch runtime names it, so both engines give the same pod names
MASTER_PORT = 29500  # torchrun's default, and the port Kubeflow Trainer's torch plugin uses
# Pod names are <jobset>-node-0-<index>-<5 random>; JobSet's webhook refuses a name that would make them longer
# than 63 characters, so with up to 64 nodes (two index digits) the object's name has at most 47.
MAX_OBJECT_NAME = 63 - len(f"-{REPLICATED_JOB}-0-63-abcde")
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
TRAINER_COMMAND = ["python", "-m", "lora_ablation_trainer"]  # the trainer image's ENTRYPOINT
RUNTIME_CONTAINER = "node"  # the trainer container of Kubeflow Trainer's torch-distributed runtime
PATCH_MANAGER = f"{GROUP}/operator"
# A child Job failed by the trainer's permanent-error exit code (its podFailurePolicy): no gang restart can help.
PERMANENT_ERROR_RULE = {"name": "permanent-error", "action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]}


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


KINDS = {
    "JobSet": Kind("jobset.x-k8s.io", "v1alpha2", "jobsets"),
    "TrainJob": Kind("trainer.kubeflow.org", "v1alpha1", "trainjobs"),
}
DONE = {"Completed": "Complete", "Complete": "Complete", "Failed": "Failed"}  # JobSet's, TrainJob's -> a Job's


def object_name(trial: str) -> str:
    """The trial's name when the engine's pod names leave room for it (and it starts with a letter, DNS-1035),
    else a readable prefix and a hash of it: deterministic, so a restart finds the object it created."""
    if len(trial) <= MAX_OBJECT_NAME and trial[:1].isalpha():
        return trial
    head = trial[: MAX_OBJECT_NAME - 9].rstrip("-")
    head = head if head[:1].isalpha() else f"t{head}"[: MAX_OBJECT_NAME - 9].rstrip("-")
    return f"{head}-{config_hash(trial)}"


def engine_of(spec: LoraAblationSpec, settings: Settings) -> str:
    multi = spec.execution.multi_node
    return (multi.engine if multi and multi.engine else None) or settings.multi_node_engine


def torch_env(name: str, nodes: int, gpus: int) -> list[dict[str, Any]]:
    """torchrun's PET_* variables, as Kubeflow Trainer's torch plugin sets them for a TrainJob: the node rank is
    the pod's completion index, the rendezvous is the first pod's stable DNS name under the JobSet's subdomain."""
    return [
        {"name": "PET_NNODES", "value": str(nodes)},
        {"name": "PET_NPROC_PER_NODE", "value": str(max(1, gpus))},
        {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}},
        {"name": "PET_MASTER_ADDR", "value": f"{name}-{REPLICATED_JOB}-0-0.{name}"},
        {"name": "PET_MASTER_PORT", "value": str(MASTER_PORT)},
    ]


def _metadata(name: str, namespace: str, pod_labels: dict[str, str], annotations: dict[str, str],
              spec: LoraAblationSpec) -> dict[str, Any]:  # fmt: skip
    top = dict(pod_labels)
    if spec.execution.queue_name:  # Kueue reads the queue from the top object and admits it by unsuspending it
        top[QUEUE_LABEL] = spec.execution.queue_name
    return {"name": name, "namespace": namespace, "labels": top, "annotations": annotations}


def trial_jobset(ablation: str, namespace: str, spec: LoraAblationSpec, unit: Unit, settings: Settings,
                 suspend: bool = False) -> dict[str, Any]:  # fmt: skip
    """One replicated Job of `nodes` indexed pods, each the single-pod trial's pod plus torchrun's variables.

    Only the pods carry our labels (the pod problems watch finds them); the child Jobs the JobSet controller makes
    carry none, so the Job watch never mistakes them for trials. Gang restarts are the JobSet's (a lone pod retried
    could not rejoin the rendezvous): each Job fails on its first pod failure and the JobSet restarts all of them,
    at most execution.backoffLimit times, except after the trainer's permanent-error exit code."""
    execution = spec.execution
    pod_labels, annotations, pod = unit_pod(ablation, spec, unit, settings)
    name = object_name(unit.name)
    container = pod["containers"][0]
    container["env"] += torch_env(name, execution.nodes, execution.resources.gpus)
    container["ports"] = [{"name": "rendezvous", "containerPort": MASTER_PORT}]
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": execution.nodes,
        "parallelism": execution.nodes,
        "backoffLimit": 0,
        "podFailurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": {
            "containerName": CONTAINER, "operator": "In", "values": [EXIT_PERMANENT]}}]},
        "template": {"metadata": {"labels": pod_labels}, "spec": pod},
    }  # fmt: skip
    if execution.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = execution.active_deadline_seconds
    return {
        "apiVersion": KINDS["JobSet"].api_version,
        "kind": "JobSet",
        "metadata": _metadata(name, namespace, pod_labels, annotations, spec),
        "spec": {
            "suspend": suspend or bool(execution.queue_name),
            "network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True},
            "successPolicy": {"operator": "All", "targetReplicatedJobs": [REPLICATED_JOB]},
            "failurePolicy": {
                "maxRestarts": execution.backoff_limit,
                "rules": [PERMANENT_ERROR_RULE],
            },
            "replicatedJobs": [{"name": REPLICATED_JOB, "replicas": 1, "template": {"spec": job_spec}}],
        },
    }


def trial_trainjob(ablation: str, namespace: str, spec: LoraAblationSpec, unit: Unit, settings: Settings,
                   suspend: bool = False) -> dict[str, Any]:  # fmt: skip
    """A TrainJob on the configured ClusterTrainingRuntime: image, command, env and resources as the trainer's;
    the pod's labels, security context, volumes and scheduling as runtime patches. The runtime sets the PET_*
    variables itself (its webhook refuses them in the TrainJob) and decides retries and the priority class."""
    execution = spec.execution
    pod_labels, annotations, pod = unit_pod(ablation, spec, unit, settings)
    container = pod["containers"][0]
    pod_patch: dict[str, Any] = {
        "securityContext": pod["securityContext"],
        "volumes": pod["volumes"],
        "containers": [{"name": RUNTIME_CONTAINER, "volumeMounts": container["volumeMounts"],
                        "securityContext": container["securityContext"]}],
    }  # fmt: skip
    pod_patch.update({k: pod[k] for k in ("serviceAccountName", "nodeSelector", "affinity", "tolerations") if k in pod})
    body: dict[str, Any] = {
        "apiVersion": KINDS["TrainJob"].api_version,
        "kind": "TrainJob",
        "metadata": _metadata(object_name(unit.name), namespace, pod_labels, annotations, spec),
        "spec": {
            "runtimeRef": {"name": settings.training_runtime, "apiGroup": KINDS["TrainJob"].group,
                           "kind": "ClusterTrainingRuntime"},
            "suspend": suspend or bool(execution.queue_name),
            "trainer": {
                "image": container["image"],
                "command": TRAINER_COMMAND,
                "env": container["env"],
                "numNodes": execution.nodes,
                "numProcPerNode": max(1, execution.resources.gpus),
                "resourcesPerNode": container["resources"],
            },
            "runtimePatches": [{"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {
                "replicatedJobs": [{"name": REPLICATED_JOB, "template": {"spec": {"template": {
                    "metadata": {"labels": pod_labels}, "spec": pod_patch}}}}],
            }}}}],
        },
    }  # fmt: skip
    if execution.active_deadline_seconds:
        body["spec"]["activeDeadlineSeconds"] = execution.active_deadline_seconds
    return body


BUILDERS = {"JobSet": trial_jobset, "TrainJob": trial_trainjob}


def unit_workload(ablation: str, namespace: str, spec: LoraAblationSpec, unit: Unit, settings: Settings,
                  suspend: bool = False) -> dict[str, Any]:  # fmt: skip
    """What runs one unit (a trial, or its stage): a Job for one node, the engine's object for more."""
    if spec.execution.nodes <= 1:
        return unit_job(ablation, namespace, spec, unit, settings, suspend)
    return BUILDERS[engine_of(spec, settings)](ablation, namespace, spec, unit, settings, suspend)


def trial_workload(ablation: str, namespace: str, spec: LoraAblationSpec, trial: PlannedTrial, settings: Settings,
                   suspend: bool = False) -> dict[str, Any]:  # fmt: skip
    """What runs one trial whole."""
    return unit_workload(ablation, namespace, spec, single(trial), settings, suspend)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def compact_multi_node(obj: dict[str, Any]) -> dict[str, Any]:
    """A JobSet or TrainJob as observe.compact_job keeps a Job, keyed by its trial (metadata.name is the trial's
    name; `target` is the object's own kind and name, for stopping and suspending it). Completed/Complete and
    Failed become a Job's Complete and Failed; a failure message names the object, for `kubectl describe`."""
    meta, spec, status = _dict(obj.get("metadata")), _dict(obj.get("spec")), _dict(obj.get("status"))
    labels = _dict(meta.get("labels"))
    kind, name = str(obj.get("kind") or ""), meta.get("name")
    conditions = []
    for cond in status.get("conditions") if isinstance(status.get("conditions"), list) else []:
        cond = _dict(cond)
        mapped = DONE.get(str(cond.get("type")), cond.get("type"))
        message = str(cond.get("message") or "")
        if mapped == "Failed":
            message = f"{kind} {name}: {message}".rstrip(": ")
        conditions.append({"type": mapped, "status": cond.get("status"), "reason": cond.get("reason"),
                           "message": message})  # fmt: skip
    restarts = _dict(spec.get("failurePolicy")).get("maxRestarts")
    return {
        "metadata": {
            "name": labels.get(TRIAL_LABEL) or name,
            "labels": {k: labels[k] for k in (TRIAL_LABEL, COMPONENT_LABEL) if k in labels},
            "annotations": {k: str(v) for k, v in _dict(meta.get("annotations")).items() if k in UNIT_ANNOTATIONS},
        },
        "target": {"kind": kind, "name": name},
        "spec": {"suspend": spec.get("suspend"), **({"backoffLimit": restarts} if isinstance(restarts, int) else {})},
        "status": {"conditions": conditions},
    }


def target(job: dict[str, Any] | None, name: str) -> tuple[str, str]:
    """(kind, object name) of what a trial runs as: a Job of that name unless the compact form says otherwise."""
    found = _dict(_dict(job).get("target"))
    return str(found.get("kind") or "Job"), str(found.get("name") or name)


def key_of(body: dict[str, Any]) -> str:
    """The name a pass keys an object by: its trial's (a multi-node object's own name may be shortened), else its
    own (the preflight Job)."""
    meta = _dict(body.get("metadata"))
    return str(_dict(meta.get("labels")).get(TRIAL_LABEL) or meta.get("name"))


def multi_node_problem(spec: LoraAblationSpec, settings: Settings) -> str | None:
    """Why this operator cannot run the spec's multi-node trials (an InvalidSpec message), or None."""
    nodes = spec.execution.nodes
    if nodes <= 1:
        return None
    if not settings.multi_node_enabled:
        return (f"execution.nodes: {nodes} asks for multi-node trials, which this operator does not run (its chart "
                "value multiNode.enabled is false: the cluster needs JobSet or Kubeflow Trainer, and the operator "
                "the right to create them); set execution.nodes to 1 or ask your cluster admin")  # fmt: skip
    wanted = spec.execution.multi_node.engine if spec.execution.multi_node else None
    if wanted and wanted != settings.multi_node_engine:
        return (f"execution.multiNode.engine: {wanted}, but this operator runs multi-node trials as "
                f"{settings.multi_node_engine} (chart value multiNode.engine); leave it unset or set "
                f"{settings.multi_node_engine}")  # fmt: skip
    return None
