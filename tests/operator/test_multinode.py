"""Multi-node trials: the JobSet and TrainJob builders checked against the engines' published CRDs (pruning,
types, defaults and CEL rules, as the API server would), their pods against Kubernetes' own schema, and the
compact form reconcile judges them by."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from conftest import minimal_manifest
from lora_ablation.api import parse_ablation
from lora_ablation.api.base import SpecError
from lora_ablation.api.contract import TRIAL_ENV
from lora_ablation.api.resource import parse_spec
from lora_ablation.planning.plan import plan_trials
from lora_ablation_operator import conditions as c
from lora_ablation_operator.jobs import single
from lora_ablation_operator.multinode import (
    MAX_OBJECT_NAME,
    compact_multi_node,
    object_name,
    target,
    trial_jobset,
    trial_workload,
)
from lora_ablation_operator.observe import failure_message, job_finished, stuck_jobs
from lora_ablation_operator.planning import plan_for
from lora_ablation_operator.policy import Policy
from lora_ablation_operator.reconcile import reconcile
from lora_ablation_operator.settings import Settings, multi_node_engine
from support.kube_schema import CrdSchema
from support.reconcile_cases import observed

CRDS = Path(__file__).resolve().parents[1] / "fixtures" / "crds"
SETTINGS = Settings(
    trainer_image="registry.example/trainer:1", multi_node_enabled=True, preflight=False, policy=Policy.open()
)  # policy: tests/operator/test_policy.py
SECRETS = {"storage": {"uri": "s3://results/x", "credentialsSecretRef": {"name": "s3"}},
           "baseModel": {"uri": "hf://o/m", "tokenSecretRef": {"name": "hf", "key": "token"}}}  # fmt: skip


def crd_schema(file: str) -> CrdSchema:
    crd = yaml.safe_load((CRDS / file).read_text())
    return CrdSchema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


JOBSET = crd_schema("jobset.x-k8s.io_jobsets.yaml")
TRAINJOB = crd_schema("trainer.kubeflow.org_trainjobs.yaml")


def build(nodes=2, gpus=4, **overrides):
    execution = {"nodes": nodes, "resources": {"gpus": gpus}, "backoffLimit": 3, **overrides.pop("execution", {})}
    ablation = parse_ablation(minimal_manifest(execution=execution, **{**SECRETS, **overrides}))
    return ablation.spec, plan_trials("demo", "ns", ablation.spec)


def admitted(schema: CrdSchema, body: dict) -> dict:
    """What the API server would store: nothing pruned (every field we set is one the engine knows), no error."""
    schema.pruned.clear()
    stored, errors = schema.admit(body)
    assert not errors, [str(e) for e in errors]
    assert not schema.pruned, f"fields the CRD does not know, dropped by the API server: {sorted(schema.pruned)}"
    return stored


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_jobset_is_schema_valid_gang_of_indexed_pods_with_torchrun_rendezvous():
    spec, plan = build(execution={"queueName": "gpu-queue"})
    trial = plan.trials[1]
    body = trial_jobset("demo", "ns", spec, single(trial), SETTINGS)
    stored = admitted(JOBSET, body)
    name = body["metadata"]["name"]
    assert name == trial.name and stored["spec"]["network"]["enableDNSHostnames"] is True
    (replicated,) = body["spec"]["replicatedJobs"]
    job = replicated["template"]["spec"]
    assert replicated["replicas"] == 1 and job["completionMode"] == "Indexed"
    assert job["completions"] == job["parallelism"] == 2 and job["backoffLimit"] == 0
    # The gang restarts as a whole, backoffLimit times, never after the trainer's permanent error (exit 42).
    assert body["spec"]["failurePolicy"]["maxRestarts"] == 3
    assert body["spec"]["failurePolicy"]["rules"][0]["onJobFailureReasons"] == ["PodFailurePolicy"]
    assert body["spec"]["successPolicy"] == {"operator": "All", "targetReplicatedJobs": ["node"]}
    # Kueue: the queue on the JobSet, created suspended for Kueue to admit.
    assert body["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue" and body["spec"]["suspend"] is True
    # Each pod is the single-pod trial's pod (Kubernetes' own schema, strictly) plus torchrun's variables.
    kubernetes_validate.validate({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"}, "spec": job},
                                 "1.33.0", strict=True)  # fmt: skip
    pod = job["template"]["spec"]
    container = pod["containers"][0]
    env = env_of(container)
    assert env["PET_NNODES"] == "2" and env["PET_NPROC_PER_NODE"] == "4" and env["PET_MASTER_PORT"] == "29500"
    assert env["PET_MASTER_ADDR"] == f"{name}-node-0-0.{name}"  # the index-0 pod under the JobSet's subdomain
    assert env["PET_NODE_RANK"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
    }
    assert json.loads(env[TRIAL_ENV])["name"] == trial.name
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    # Locked down as a single-pod trial; credentials only by reference.
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "s3", "key": "AWS_SECRET_ACCESS_KEY"}}
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    # Pods carry the ablation and trial labels (the pod watch); child Jobs none (the Job watch must not see them).
    labels = job["template"]["metadata"]["labels"]
    assert labels["lora.ablation.dev/ablation"] == "demo" and labels["lora.ablation.dev/trial"] == trial.name
    assert "metadata" not in replicated["template"]


def test_trainjob_is_schema_valid_on_the_configured_runtime():
    spec, plan = build(nodes=4, gpus=8, execution={"nodeSelector": {"pool": "h100"}, "serviceAccountName": "trainer"})
    settings = Settings(trainer_image="registry.example/trainer:1", multi_node_enabled=True,
                        multi_node_engine="TrainJob", training_runtime="torch-lora")  # fmt: skip
    body = trial_workload("demo", "ns", spec, plan.trials[1], settings)
    assert body["kind"] == "TrainJob"
    stored = admitted(TRAINJOB, body)
    assert stored["spec"]["runtimeRef"] == {"name": "torch-lora", "apiGroup": "trainer.kubeflow.org",
                                            "kind": "ClusterTrainingRuntime"}  # fmt: skip
    trainer = body["spec"]["trainer"]
    assert trainer["numNodes"] == 4 and trainer["numProcPerNode"] == 8
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 8
    assert trainer["command"] == ["python", "-m", "lora_ablation_trainer"] and trainer["image"].endswith("trainer:1")
    env = env_of(trainer)
    assert not [n for n in env if n.startswith("PET_")]  # the torch runtime sets them (its webhook refuses ours)
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "s3", "key": "AWS_SECRET_ACCESS_KEY"}}
    (patch,) = body["spec"]["runtimePatches"]
    pod = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    assert pod["metadata"]["labels"]["lora.ablation.dev/trial"] == plan.trials[1].name
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["nodeSelector"] == {"pool": "h100"} and pod["spec"]["serviceAccountName"] == "trainer"
    assert pod["spec"]["containers"][0]["name"] == "node"  # the runtime's trainer container
    assert not [r.rule for r in TRAINJOB.skipped if "runtimePatches" in r.where or "trainer" in r.where]
    # Kubeflow Trainer's own published models (kubeflow-trainer-api) keep every field: none is unknown to them (a
    # field they do not know is dropped, as the second line shows). Imported here: the package loads ~4 s of models.
    from kubeflow_trainer_api.models.trainer_v1alpha1_train_job import TrainerV1alpha1TrainJob

    assert TrainerV1alpha1TrainJob.from_dict(body).to_dict() == body
    unknown = {**body, "spec": {**body["spec"], "podSpecOverrides": []}}
    assert TrainerV1alpha1TrainJob.from_dict(unknown).to_dict() == body


def test_one_node_is_still_a_job():
    spec, plan = build(nodes=1)
    assert trial_workload("demo", "ns", spec, plan.trials[0], SETTINGS)["kind"] == "Job"


@pytest.mark.parametrize("trial", ["a" * 63, "9" * 40, "short-name", "x" * 47, "x" * 48])
def test_object_names_fit_the_engines_pod_names(trial):
    name = object_name(trial)
    assert len(name) <= MAX_OBJECT_NAME and name[0].isalpha() and name == object_name(trial)
    assert (name == trial) == (len(trial) <= MAX_OBJECT_NAME and trial[0].isalpha())


def test_a_long_trial_name_keeps_its_trial_label_and_is_judged_by_it():
    spec, _ = build(execution={})
    trial = plan_trials("a-long-ablation-name-of-a-module-study", "ns", spec).trials[1]
    assert len(trial.name) > MAX_OBJECT_NAME
    body = trial_jobset("a-long-ablation-name-of-a-module-study", "ns", spec, single(trial), SETTINGS)
    admitted(JOBSET, body)
    compact = compact_multi_node(body)
    assert compact["metadata"]["name"] == trial.name and target(compact, trial.name) == (
        "JobSet",
        body["metadata"]["name"],
    )
    assert target(None, "plain") == ("Job", "plain")


@pytest.mark.parametrize(
    ("kind", "condition", "state"),
    [
        ("JobSet", {"type": "Completed", "status": "True", "reason": "AllJobsCompleted", "message": "jobset completed"},
         "Complete"),
        ("JobSet", {"type": "Failed", "status": "True", "reason": "ReachedMaxRestarts",
                    "message": "jobset failed due to reaching max number of restarts"}, "Failed"),
        ("TrainJob", {"type": "Complete", "status": "True", "reason": "JobsCompleted", "message": "done"}, "Complete"),
        ("TrainJob", {"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "x"}, "Failed"),
    ],
)  # fmt: skip
def test_conditions_map_to_a_jobs(kind, condition, state):
    compact = compact_multi_node({"kind": kind, "metadata": {"name": "t1", "labels": {"lora.ablation.dev/trial": "t1"}},
                                  "spec": {"suspend": False}, "status": {"conditions": [condition]}})  # fmt: skip
    assert job_finished(compact, state)
    if state == "Failed" and condition["reason"] == "ReachedMaxRestarts":
        assert failure_message(compact) == (
            "ReachedMaxRestarts: JobSet t1: jobset failed due to reaching max number of restarts"
        )
    elif state == "Failed":
        assert failure_message(compact) == "exceeded execution.activeDeadlineSeconds"


def test_reconcile_judges_a_multi_node_trial_as_it_judges_a_job():
    raw = parse_ablation(minimal_manifest(execution={"nodes": 2, "parallelism": 1, "maxFailedTrials": 5}, **SECRETS))
    first = reconcile(observed(raw.spec.to_wire(), now="2026-01-01T00:00:00Z"), SETTINGS)
    assert [b["kind"] for b in first.create] == ["JobSet"]  # parallelism 1: one gang at a time
    name = first.create[0]["metadata"]["name"]
    failed = compact_multi_node({**first.create[0], "status": {"conditions": [
        {"type": "Failed", "status": "True", "reason": "FailedJobs", "message": "job node-0 failed"}]}})  # fmt: skip
    pod = {
        "metadata": {
            "name": f"{name}-node-0-1-abcde",
            "labels": {"lora.ablation.dev/trial": name, "batch.kubernetes.io/job-name": f"{name}-node-0"},
        },
        "status": {"phase": "Pending", "containerStatuses": [{"state": {"waiting": {"reason": "ErrImagePull"}}}]},
    }
    assert stuck_jobs([pod], "2026-01-01T00:00:00Z", 600) == {name: f"pod {name}-node-0-1-abcde: ErrImagePull"}
    second = reconcile(
        observed(raw.spec.to_wire(), status=first.status, jobs={name: failed}, now="2026-01-01T00:01:00Z"),
        SETTINGS,
    )
    entry = next(t for t in second.status["trialStatuses"] if t["name"] == name)
    assert entry["state"] == c.FAILED and "FailedJobs: JobSet" in entry["message"]
    assert [b["kind"] for b in second.create] == ["JobSet"] and second.create[0]["metadata"]["name"] != name


def test_the_operator_refuses_multi_node_specs_it_cannot_run():
    manifest = minimal_manifest(execution={"nodes": 2})["spec"]
    off = plan_for("demo", "ns", manifest, Settings(policy=Policy.open()))
    assert off.spec is None and off.reason == c.INVALID_SPEC
    assert "execution.nodes: 2" in off.problem and "multiNode.enabled" in off.problem
    other = {**manifest, "execution": {"nodes": 2, "multiNode": {"engine": "TrainJob"}}}
    mismatch = plan_for("demo", "ns", other, SETTINGS)
    assert "execution.multiNode.engine: TrainJob" in mismatch.problem and "as JobSet" in mismatch.problem
    assert plan_for("demo", "ns", manifest, SETTINGS).plan is not None


@pytest.mark.parametrize(
    ("execution", "field"),
    [
        ({"nodes": 0}, "execution.nodes"),
        ({"nodes": 65}, "execution.nodes"),
        ({"multiNode": {"engine": "MPIJob"}}, "execution.multiNode.engine"),
    ],
)
def test_bad_multi_node_fields_name_the_field(execution, field):
    with pytest.raises(SpecError) as error:
        parse_spec(minimal_manifest(execution=execution)["spec"])
    assert any(p.startswith(f"spec.{field}") for p in error.value.problems), error.value.problems


def test_an_unknown_engine_setting_stops_the_operator():
    with pytest.raises(ValueError, match="MULTI_NODE_ENGINE='MPIJob'"):
        multi_node_engine("MPIJob")
