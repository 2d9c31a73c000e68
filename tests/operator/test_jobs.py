"""The Job builders: what a trial pod gets, validated against the real Kubernetes schema offline."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest

from conftest import minimal_manifest
from lora_ablation.api import parse_ablation
from lora_ablation.api.contract import PREFLIGHT_ENV, TRIAL_ENV
from lora_ablation.api.trial import PreflightSpec, TrialSpec
from lora_ablation.planning.plan import plan_trials
from lora_ablation_operator.jobs import preflight_job, preflight_name, trial_job
from lora_ablation_operator.settings import Settings

SETTINGS = Settings(trainer_image="registry.example/trainer:1")


def build(**overrides):
    ablation = parse_ablation(minimal_manifest(**overrides))
    plan = plan_trials("demo", "ns", ablation.spec)
    return ablation.spec, plan


def env(job, name):
    return next(e for e in job["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == name)


def test_trial_job_is_valid_and_locked_down():
    spec, plan = build(storage={"uri": "s3://results/x", "credentialsSecretRef": {"name": "s3"}},
                       baseModel={"uri": "hf://o/m", "tokenSecretRef": {"name": "hf", "key": "token"}})  # fmt: skip
    job = trial_job("demo", "ns", spec, plan.trials[1], SETTINGS)
    kubernetes_validate.validate(job, "1.33.0", strict=True)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}  # fmt: skip
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [42]},
    }
    # Credentials only by reference; nothing secret in the Job.
    assert env(job, "AWS_SECRET_ACCESS_KEY")["valueFrom"]["secretKeyRef"] == {
        "name": "s3",
        "key": "AWS_SECRET_ACCESS_KEY",
    }
    assert env(job, "HF_TOKEN")["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
    trial = TrialSpec.model_validate_json(env(job, TRIAL_ENV)["value"])
    assert trial.name == plan.trials[1].name == job["metadata"]["name"]
    assert job["metadata"]["labels"]["lora.ablation.dev/trial"] == trial.name
    assert job["metadata"]["annotations"]["lora.ablation.dev/config"] == "o_proj r16 lora"
    assert container["image"] == "registry.example/trainer:1"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"  # why it failed, in the pod status
    assert container["resources"]["limits"] == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": 1}


def test_scheduling_fields_queue_and_volumes():
    spec, plan = build(
        baseModel={"uri": "pvc://models/llama"},
        execution={
            "image": "mine:2", "parallelism": 2, "backoffLimit": 5, "activeDeadlineSeconds": 600,
            "nodeSelector": {"gpu": "h100"}, "priorityClassName": "research", "serviceAccountName": "trainer",
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
            "queueName": "gpu-queue", "modelCacheClaim": "hf-cache",
            "resources": {"gpus": 2, "gpuResourceName": "amd.com/gpu", "cpu": "16", "memory": "128Gi"},
        },
    )  # fmt: skip
    job = trial_job("demo", "ns", spec, plan.trials[1], SETTINGS)
    kubernetes_validate.validate(job, "1.33.0", strict=True)
    pod = job["spec"]["template"]["spec"]
    assert job["spec"]["suspend"] is True, "Kueue admits queued Jobs by unsuspending them"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert job["spec"]["backoffLimit"] == 5 and job["spec"]["activeDeadlineSeconds"] == 600
    assert pod["nodeSelector"] == {"gpu": "h100"} and pod["priorityClassName"] == "research"
    assert pod["serviceAccountName"] == "trainer" and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["affinity"]["nodeAffinity"]
    assert pod["containers"][0]["resources"]["limits"]["amd.com/gpu"] == 2
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/models"]["readOnly"] and mounts["/mnt/pvc/models"]["readOnly"] and "/tmp" in mounts
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"hf-cache", "models"}


def test_preflight_job_is_cpu_only_and_checks_everything():
    spec, _ = build(execution={"priorityClassName": "gpu-high"})
    job = preflight_job("demo", "ns", spec, SETTINGS)
    kubernetes_validate.validate(job, "1.33.0", strict=True)
    pod = job["spec"]["template"]["spec"]
    assert "priorityClassName" not in pod
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "1", "memory": "4Gi"}
    payload = PreflightSpec.model_validate(json.loads(env(job, PREFLIGHT_ENV)["value"]))
    assert payload.module_sets == [["o_proj"], ["o_proj", "fc2"]]
    assert payload.storage.uri == "s3://results/ablations/ns/demo/preflight"
    assert job["metadata"]["name"] == preflight_name("demo", spec)


def test_preflight_name_changes_only_with_what_it_checks():
    spec, _ = build()
    same, _ = build(execution={"parallelism": 9})
    other, _ = build(search={"moduleSets": [["qkv"]]})
    assert preflight_name("demo", spec) == preflight_name("demo", same) != preflight_name("demo", other)


@pytest.mark.parametrize("gpus", [0, 1])
def test_cpu_trials_request_no_gpu(gpus):
    spec, plan = build(execution={"resources": {"gpus": gpus}})
    limits = trial_job("demo", "ns", spec, plan.trials[0], SETTINGS)["spec"]["template"]["spec"]["containers"][0]
    assert ("nvidia.com/gpu" in limits["resources"]["limits"]) == bool(gpus)


def test_each_seed_is_its_own_job_and_the_trainer_gets_its_seed():
    spec, plan = build(search={"moduleSets": [["o_proj"]], "seeds": [7, 8]})
    jobs = [trial_job("demo", "ns", spec, trial, SETTINGS) for trial in plan.trials[1:]]
    payloads = [TrialSpec.model_validate_json(env(job, TRIAL_ENV)["value"]) for job in jobs]
    assert [p.training.seed for p in payloads] == [7, 8]
    assert [j["metadata"]["annotations"]["lora.ablation.dev/seed"] for j in jobs] == ["7", "8"]
    assert len({j["metadata"]["name"] for j in jobs}) == 2
    baseline = trial_job("demo", "ns", spec, plan.trials[0], SETTINGS)
    assert "lora.ablation.dev/seed" not in baseline["metadata"]["annotations"]


def test_tracking_credentials_reach_trial_pods_by_reference_only():
    mlflow = {"trackingUri": "https://mlflow.corp", "experimentName": "team-a/llama",
              "credentialsSecretRef": {"name": "mlflow-creds", "tokenKey": "api-token"}}  # fmt: skip
    spec, plan = build(tracking={"mlflow": mlflow})
    job = trial_job("demo", "ns", spec, plan.trials[1], SETTINGS)
    kubernetes_validate.validate(job, "1.33.0", strict=True)
    for name, key in (("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_USERNAME"),
                      ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_PASSWORD"), ("MLFLOW_TRACKING_TOKEN", "api-token")):
        # Optional: a Secret with a token only (or a username and password only) starts the pod all the same.
        assert env(job, name) == {"name": name, "valueFrom": {"secretKeyRef": {"name": "mlflow-creds", "key": key,
                                                                               "optional": True}}}  # fmt: skip
    trial = TrialSpec.model_validate_json(env(job, TRIAL_ENV)["value"])
    assert trial.tracking.tracking_uri == "https://mlflow.corp" and trial.tracking.experiment_name == "team-a/llama"
    assert "mlflow-creds" not in env(job, TRIAL_ENV)["value"]  # the payload names no Secret and holds no credential
    # Every trial of the ablation shares one parent key: its storage folder's.
    assert len({t.spec.tracking.ablation_key for t in plan.trials}) == 1
    preflight = preflight_job("demo", "ns", spec, SETTINGS)  # the preflight logs nothing: no credentials
    names = {e["name"] for e in preflight["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert not {n for n in names if n.startswith("MLFLOW_")}


def test_without_tracking_the_trial_payload_and_env_are_unchanged():
    spec, plan = build()
    job = trial_job("demo", "ns", spec, plan.trials[1], SETTINGS)
    assert "tracking" not in env(job, TRIAL_ENV)["value"]
    names = {e["name"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert not {n for n in names if n.startswith("MLFLOW_")}
