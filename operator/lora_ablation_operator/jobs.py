"""Pure builders for the Jobs an ablation runs: one per unit (a trial, or several in one pod), and the CPU
preflight. No API calls here."""

from __future__ import annotations

from typing import Any

from lora_ablation.api.contract import EXIT_PERMANENT, PREFLIGHT_ENV
from lora_ablation.api.naming import bounded_name, label_value
from lora_ablation.api.spec import LoraAblationSpec
from lora_ablation.api.tracking import PASSWORD_ENV, TOKEN_ENV, USERNAME_ENV
from lora_ablation.api.trial import PreflightSpec, TrialStorage
from lora_ablation.planning.plan import PlannedTrial
from lora_ablation.run.schedule import ROUND_ONE, Unit
from lora_ablation_operator.settings import Settings

GROUP = "lora.ablation.dev"
ABLATION_LABEL = f"{GROUP}/ablation"
TRIAL_LABEL = f"{GROUP}/trial"
COMPONENT_LABEL = "app.kubernetes.io/component"
CONFIG_ANNOTATION = f"{GROUP}/config"
TRIALS_ANNOTATION = f"{GROUP}/trials"  # a multi-trial Job's trials, comma-separated
STAGE_ANNOTATION = f"{GROUP}/stage"  # stage-one or stage-two in a two-stage ablation
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
CONTAINER = "trainer"
PVC_ROOT = "/mnt/pvc"


def labels(ablation: str, component: str, settings: Settings, trial: str | None = None) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "lora-ablation-trainer",
        "app.kubernetes.io/part-of": "lora-ablation",
        "app.kubernetes.io/managed-by": "lora-ablation-operator",
        COMPONENT_LABEL: component,
        ABLATION_LABEL: label_value(ablation),
        **settings.extra_labels,
    }
    if trial:
        out[TRIAL_LABEL] = trial
    return out


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _env(spec: LoraAblationSpec, settings: Settings, payload_name: str, payload: str) -> list[dict[str, Any]]:
    """Configuration by value, credentials only by reference: nothing secret is in the Job spec."""
    env = [
        {"name": payload_name, "value": payload},
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/tmp/hf"},
        {"name": "LORA_ABLATION_MODEL_CACHE", "value": "/models"},
        {"name": "LORA_ABLATION_PVC_ROOT", "value": PVC_ROOT},
    ]
    credentials = spec.storage.credentials_secret_ref
    if credentials:
        env += [
            _secret_env("AWS_ACCESS_KEY_ID", credentials.name, credentials.access_key_id_key),
            _secret_env("AWS_SECRET_ACCESS_KEY", credentials.name, credentials.secret_access_key_key),
        ]
    elif settings.default_credentials_secret:
        env += [
            _secret_env("AWS_ACCESS_KEY_ID", settings.default_credentials_secret, "AWS_ACCESS_KEY_ID"),
            _secret_env("AWS_SECRET_ACCESS_KEY", settings.default_credentials_secret, "AWS_SECRET_ACCESS_KEY"),
        ]
    token = spec.base_model.token_secret_ref
    if token:
        env.append(_secret_env("HF_TOKEN", token.name, token.key))
    return env + (tracking_env(spec) if payload_name != PREFLIGHT_ENV else [])  # preflight logs nothing


def tracking_env(spec: LoraAblationSpec) -> list[dict[str, Any]]:
    """MLflow's credentials, by reference: each key optional (a username and password, or a token)."""
    mlflow = spec.tracking.mlflow if spec.tracking else None
    if mlflow is None or mlflow.credentials_secret_ref is None:
        return []
    ref = mlflow.credentials_secret_ref
    keys = ((USERNAME_ENV, ref.username_key), (PASSWORD_ENV, ref.password_key), (TOKEN_ENV, ref.token_key))
    return [{"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": key, "optional": True}}}
            for name, key in keys]  # fmt: skip


def _claims(spec: LoraAblationSpec) -> list[str]:
    uris = [spec.base_model.uri, *(d.train for d in spec.datasets), *(d.eval for d in spec.datasets)]
    return sorted({u[len("pvc://") :].split("/", 1)[0] for u in uris if u.startswith("pvc://")})


def _volumes(spec: LoraAblationSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A writable /tmp and /dev/shm on a read-only root filesystem; claims mounted read-only."""
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {}},
        {"name": "shm", "emptyDir": {"medium": "Memory"}},  # NCCL and dataloader workers need more than 64Mi
    ]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "shm", "mountPath": "/dev/shm"}]
    if spec.execution.model_cache_claim:
        volumes.append({"name": "model-cache", "persistentVolumeClaim": {"claimName": spec.execution.model_cache_claim,
                                                                          "readOnly": True}})  # fmt: skip
        mounts.append({"name": "model-cache", "mountPath": "/models", "readOnly": True})
    for index, claim in enumerate(_claims(spec)):
        volumes.append({"name": f"claim-{index}", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": f"claim-{index}", "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True})
    return volumes, mounts


def _container(spec: LoraAblationSpec, settings: Settings, payload_env: str, payload: str,
               limits: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    return {
        "name": CONTAINER,
        "image": spec.execution.image or settings.trainer_image,
        "imagePullPolicy": "IfNotPresent",
        "env": _env(spec, settings, payload_env, payload),
        "resources": {"requests": dict(limits), "limits": limits},  # requests = limits: Guaranteed QoS
        # The trainer writes why it failed there (a diverged trial names its step); a crash leaves its log tail.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _pod_spec(spec: LoraAblationSpec, settings: Settings, container: dict[str, Any]) -> dict[str, Any]:
    execution = spec.execution
    volumes, mounts = _volumes(spec)
    container["volumeMounts"] = mounts
    container["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",  # the Job's backoffLimit retries; podFailurePolicy needs Never
        "automountServiceAccountToken": False,  # the trainer never talks to the Kubernetes API
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_user,
            "fsGroup": settings.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    optional = {
        "serviceAccountName": execution.service_account_name,
        "priorityClassName": execution.priority_class_name,
        "nodeSelector": execution.node_selector,
        "affinity": execution.affinity,
        "tolerations": [t.to_wire() for t in execution.tolerations] if execution.tolerations else None,
    }
    pod.update({k: v for k, v in optional.items() if v})
    return pod


def _job(name: str, namespace: str, job_labels: dict[str, str], pod: dict[str, Any], spec: LoraAblationSpec,
         annotations: dict[str, str], suspend: bool) -> dict[str, Any]:  # fmt: skip
    execution = spec.execution
    job_spec: dict[str, Any] = {
        "backoffLimit": execution.backoff_limit,
        "completions": 1,
        "parallelism": 1,
        "suspend": suspend,
        "podFailurePolicy": {
            "rules": [
                # The trainer's permanent-error exit code: retrying cannot help, fail the Job now.
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_PERMANENT]},
                },
                # Preemption, eviction and node drains are not the trial's fault.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
        "template": {"metadata": {"labels": job_labels}, "spec": pod},
    }
    if execution.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = execution.active_deadline_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": job_labels, "annotations": annotations},
        "spec": job_spec,
    }


def single(trial: PlannedTrial) -> Unit:
    """A trial run whole in its own Job (no batching, no stages)."""
    return Unit(trial.name, ROUND_ONE, trial.spec.dataset.name, (trial,))


def unit_pod(ablation: str, spec: LoraAblationSpec, unit: Unit, settings: Settings,
             ) -> tuple[dict[str, str], dict[str, str], dict[str, Any]]:  # fmt: skip
    """A unit's labels, annotations and pod spec: the single-pod Job's, and each node's of a multi-node trial."""
    resources = spec.execution.resources
    limits: dict[str, Any] = {"cpu": resources.cpu, "memory": resources.memory}
    if resources.gpus:
        limits[resources.gpu_resource_name] = resources.gpus
    if resources.ephemeral_storage:
        limits["ephemeral-storage"] = resources.ephemeral_storage
    # The trainer re-resolves modules on the real model, so the (possibly long) name lists stay out of the env.
    env_name, payload = unit.payload(spec, strip_targets=True)
    container = _container(spec, settings, env_name, payload, limits)
    first = unit.trials[0]
    annotations = {f"{GROUP}/dataset": unit.dataset}
    if len(unit.trials) == 1:
        annotations[CONFIG_ANNOTATION] = first.label
    # Which trials the workload runs: an edit regroups only trials without one (trialsPerPod), and it is how the
    # operator knows a running unit after a restart whatever the spec says now.
    annotations[TRIALS_ANNOTATION] = ",".join(unit.trial_names)
    if unit.stage_one or unit.round != ROUND_ONE:
        annotations[STAGE_ANNOTATION] = "stage-one" if unit.stage_one else "stage-two"
    if len(unit.trials) == 1 and first.seed is not None:  # the trainer reads the seed from the payload
        annotations[f"{GROUP}/seed"] = str(first.seed)
    return labels(ablation, "trial", settings, unit.name), annotations, _pod_spec(spec, settings, container)


def trial_pod(ablation: str, spec: LoraAblationSpec, trial: PlannedTrial, settings: Settings,
              ) -> tuple[dict[str, str], dict[str, str], dict[str, Any]]:  # fmt: skip
    return unit_pod(ablation, spec, single(trial), settings)


def unit_job(ablation: str, namespace: str, spec: LoraAblationSpec, unit: Unit, settings: Settings,
             suspend: bool = False) -> dict[str, Any]:  # fmt: skip
    """The Job of one unit: one trial, or several run one after another in one pod (execution.trialsPerPod)."""
    job_labels, annotations, pod = unit_pod(ablation, spec, unit, settings)
    queued = bool(spec.execution.queue_name)
    if queued:
        job_labels[QUEUE_LABEL] = spec.execution.queue_name
    # Kueue admits a queued Job by unsuspending it, so queued Jobs are always created suspended.
    return _job(unit.name, namespace, job_labels, pod, spec, annotations, suspend or queued)


def trial_job(ablation: str, namespace: str, spec: LoraAblationSpec, trial: PlannedTrial, settings: Settings,
              suspend: bool = False) -> dict[str, Any]:  # fmt: skip
    return unit_job(ablation, namespace, spec, single(trial), settings, suspend)


def preflight_name(ablation: str, spec: LoraAblationSpec) -> str:
    """Changes when anything the preflight checks changes, so an edited spec is checked again."""
    identity = {
        "model": spec.base_model.to_wire(),
        "datasets": [d.to_wire() for d in spec.datasets],
        "moduleSets": spec.search.module_sets,
    }
    return bounded_name([ablation, "preflight"], identity)


def preflight_storage_uri(spec: LoraAblationSpec, namespace: str, ablation: str) -> str:
    return f"{spec.storage.uri.rstrip('/')}/{namespace}/{ablation}/preflight"


def preflight_job(ablation: str, namespace: str, spec: LoraAblationSpec, settings: Settings) -> dict[str, Any]:
    payload = PreflightSpec(
        ablation=ablation,
        namespace=namespace,
        base_model=spec.base_model,
        datasets=spec.datasets,
        module_sets=spec.search.module_sets,
        storage=TrialStorage(
            uri=preflight_storage_uri(spec, namespace, ablation),
            endpoint=spec.storage.endpoint,
            region=spec.storage.region,
        ),
    )
    limits = {"cpu": settings.preflight_cpu, "memory": settings.preflight_memory}
    container = _container(
        spec, settings, PREFLIGHT_ENV, payload.model_dump_json(by_alias=True, exclude_none=True), limits
    )
    cpu_only = spec.model_copy(deep=True)
    cpu_only.execution.priority_class_name = None  # a CPU check does not need the GPU priority class
    pod = _pod_spec(cpu_only, settings, container)
    name = preflight_name(ablation, spec)
    return _job(name, namespace, labels(ablation, "preflight", settings), pod, spec, {}, suspend=False)
