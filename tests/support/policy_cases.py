"""One table of admin-policy cases, run against both enforcement points: the operator's policy.py
(tests/operator/test_policy.py) and the chart's ValidatingAdmissionPolicy in CEL (tests/chart/test_admission_policy.py).
Each case: chart `policy` values over BASE_POLICY, a spec patch over a manifest that BASE_POLICY allows, and the
field paths that must be refused (dataset indexes written [*]: the CEL rule names the list, not the item)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

TRAINER_IMAGE = "ghcr.io/lora-ablation/trainer:0.1.0"
DEFAULT_ENDPOINT = "http://minio.minio.svc:9000"
DEFAULT_SECRET = "ablation-s3"
# The chart's values around the policy: the operator's own image, endpoint and Secret are always allowed.
CONTEXT = {"trainerImage": TRAINER_IMAGE,
           "storage": {"endpoint": DEFAULT_ENDPOINT, "credentialsSecret": DEFAULT_SECRET}}  # fmt: skip
# Spelled out rather than imported from policy.py: the chart's defaults (tested against these) must match them.
EFFECTS = ["NoSchedule", "PreferNoSchedule", "NoExecute"]
GPU_LABELS = ["nvidia.com/gpu.product", "nvidia.com/gpu.memory", "cloud.google.com/gke-accelerator"]
# The chart's defaults, but for two buckets (the chart allows none until an admin lists them).
BASE_POLICY: dict[str, Any] = {
    "allowedImageRepositories": [],
    "allowedImageDigests": [],
    "allowedServiceAccounts": [],
    "allowedSecrets": [],
    "allowedBuckets": ["data", "results"],
    "allowedStorageEndpoints": [],
    "allowedTrackingUris": [],
    "allowedClaims": [],
    "allowedPriorityClasses": [],
    "allowedTolerationKeys": ["nvidia.com/gpu"],
    "allowedTolerationEffects": EFFECTS,
    "allowedNodeSelectors": GPU_LABELS,
    "allowAffinity": False,
}
DIGEST = "sha256:" + "a" * 64
OTHER_DIGEST = "sha256:" + "b" * 64


def manifest(**spec: Any) -> dict[str, Any]:
    """A LoraAblation BASE_POLICY allows, with `spec` merged in one level deep."""
    body: dict[str, Any] = {
        "baseModel": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct"},
        "datasets": [{"name": "med", "train": "s3://data/med/train.jsonl", "eval": "s3://data/med/eval.jsonl"}],
        "search": {"moduleSets": [["o_proj"], ["o_proj", "fc2"]]},
        "storage": {"uri": "s3://results/ablations"},
    }
    for key, value in copy.deepcopy(spec).items():
        body[key] = {**body[key], **value} if isinstance(body.get(key), dict) and isinstance(value, dict) else value
    return {"apiVersion": "lora.ablation.dev/v1alpha1", "kind": "LoraAblation",
            "metadata": {"name": "demo", "namespace": "team-a"}, "spec": body}  # fmt: skip


IMAGE = "spec.execution.image"
SA = "spec.execution.serviceAccountName"
CREDS = "spec.storage.credentialsSecretRef.name"
TOKEN = "spec.baseModel.tokenSecretRef.name"
STORE, ENDPOINT, BASE = "spec.storage.uri", "spec.storage.endpoint", "spec.baseModel.uri"
TRAIN, EVAL = "spec.datasets[*].train", "spec.datasets[*].eval"
CACHE, PRIORITY = "spec.execution.modelCacheClaim", "spec.execution.priorityClassName"
TOL_KEY, TOL_EFFECT = "spec.execution.tolerations[*].key", "spec.execution.tolerations[*].effect"
NODES, AFFINITY = "spec.execution.nodeSelector", "spec.execution.affinity"
TRACKING, TRACKING_CREDS = "spec.tracking.mlflow.trackingUri", "spec.tracking.mlflow.credentialsSecretRef.name"
MLFLOW = "http://mlflow.mlflow:5000"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
TEAM_B_NODES = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
    {"matchExpressions": [{"key": "dedicated", "operator": "In", "values": ["team-b"]}]}]}}}

# (id, policy overrides, spec patch, refused field paths)
CASES: list[tuple[str, dict[str, Any], dict[str, Any], set[str]]] = [
    ("allowed-as-is", {}, {}, set()),
    ("bucket-not-listed", {}, {"storage": {"uri": "s3://other-team/x"}}, {STORE}),
    ("bucket-name-is-a-prefix-of-an-allowed-one", {}, {"storage": {"uri": "s3://result/x"}}, {STORE}),
    ("bucket-any", {"allowedBuckets": ["*"]}, {"storage": {"uri": "s3://other-team/x"}}, set()),
    ("no-bucket-allowed", {"allowedBuckets": []}, {}, {STORE, TRAIN, EVAL}),
    ("dataset-bucket", {"allowedClaims": ["claim"]}, {"datasets": [
        {"name": "a", "train": "s3://data/a.jsonl", "eval": "s3://data/b.jsonl"},
        {"name": "b", "train": "s3://secret-data/a.jsonl", "eval": "pvc://claim/b.jsonl"}]}, {TRAIN}),
    ("base-model-bucket", {}, {"baseModel": {"uri": "s3://models-of-b/llama/"}}, {BASE}),
    ("base-model-allowed-bucket", {}, {"baseModel": {"uri": "s3://data/llama/"}}, set()),
    ("trainer-repository-other-tag", {}, {"execution": {"image": "ghcr.io/lora-ablation/trainer:0.2.0"}}, set()),
    ("trainer-repository-by-digest", {}, {"execution": {"image": f"ghcr.io/lora-ablation/trainer@{DIGEST}"}}, set()),
    ("image-elsewhere", {}, {"execution": {"image": "docker.io/evil/miner:latest"}}, {IMAGE}),
    ("image-repository-with-a-suffix", {}, {"execution": {"image": "ghcr.io/lora-ablation/trainer-evil:1"}}, {IMAGE}),
    ("image-deeper-than-an-exact-repository", {}, {"execution": {"image": "ghcr.io/lora-ablation/trainer/x:1"}},
     {IMAGE}),
    ("image-prefix", {"allowedImageRepositories": ["registry.corp/ml/"]},
     {"execution": {"image": "registry.corp/ml/team/trainer:7"}}, set()),
    ("image-prefix-sibling", {"allowedImageRepositories": ["registry.corp/ml/"]},
     {"execution": {"image": "registry.corp/ml-evil/trainer:7"}}, {IMAGE}),
    ("image-registry-port-is-not-a-tag", {"allowedImageRepositories": ["registry"]},
     {"execution": {"image": "registry:5000/evil:1"}}, {IMAGE}),
    ("image-exact-repository-with-port", {"allowedImageRepositories": ["registry:5000/ml/trainer"]},
     {"execution": {"image": "registry:5000/ml/trainer:1"}}, set()),
    ("image-any", {"allowedImageRepositories": ["*"]}, {"execution": {"image": "anything:1"}}, set()),
    ("digest-required-and-given", {"allowedImageDigests": [DIGEST]},
     {"execution": {"image": f"ghcr.io/lora-ablation/trainer:0.1.0@{DIGEST}"}}, set()),
    ("digest-required-tag-only", {"allowedImageDigests": [DIGEST]},
     {"execution": {"image": "ghcr.io/lora-ablation/trainer:0.1.0"}}, {IMAGE}),
    ("digest-required-other-digest", {"allowedImageDigests": [DIGEST]},
     {"execution": {"image": f"ghcr.io/lora-ablation/trainer@{OTHER_DIGEST}"}}, {IMAGE}),
    ("digest-rule-leaves-the-default-image-alone", {"allowedImageDigests": [DIGEST]}, {}, set()),
    ("service-account-not-listed", {}, {"execution": {"serviceAccountName": "cluster-admin-ish"}}, {SA}),
    ("service-account-listed", {"allowedServiceAccounts": ["trainer"]},
     {"execution": {"serviceAccountName": "trainer"}}, set()),
    ("service-account-any", {"allowedServiceAccounts": ["*"]}, {"execution": {"serviceAccountName": "x"}}, set()),
    ("credentials-secret-not-listed", {}, {"storage": {"credentialsSecretRef": {"name": "db-password"}}}, {CREDS}),
    ("credentials-secret-default", {}, {"storage": {"credentialsSecretRef": {"name": DEFAULT_SECRET}}}, set()),
    ("credentials-secret-listed", {"allowedSecrets": ["team-s3"]},
     {"storage": {"credentialsSecretRef": {"name": "team-s3"}}}, set()),
    ("token-secret-not-listed", {}, {"baseModel": {"tokenSecretRef": {"name": "hf", "key": "token"}}}, {TOKEN}),
    ("token-secret-any", {"allowedSecrets": ["*"]}, {"baseModel": {"tokenSecretRef": {"name": "hf", "key": "t"}}},
     set()),
    ("endpoint-metadata-service", {}, {"storage": {"endpoint": "http://169.254.169.254"}}, {ENDPOINT}),
    ("endpoint-default", {}, {"storage": {"endpoint": DEFAULT_ENDPOINT}}, set()),
    ("endpoint-listed", {"allowedStorageEndpoints": ["https://s3.corp:9000"]},
     {"storage": {"endpoint": "https://s3.corp:9000"}}, set()),
    ("endpoint-listed-is-exact", {"allowedStorageEndpoints": ["https://s3.corp"]},
     {"storage": {"endpoint": "https://s3.corp.evil.com"}}, {ENDPOINT}),
    # Volumes: every claim a trial pod mounts.
    ("claim-base-model-not-listed", {}, {"baseModel": {"uri": "pvc://team-b-models/llama"}}, {BASE}),
    ("claim-base-model-listed", {"allowedClaims": ["models"]}, {"baseModel": {"uri": "pvc://models/llama"}}, set()),
    ("claim-whole-volume", {"allowedClaims": ["models"]}, {"baseModel": {"uri": "pvc://models"}}, set()),
    ("claim-name-is-a-prefix-of-an-allowed-one", {"allowedClaims": ["models"]},
     {"baseModel": {"uri": "pvc://models-b/llama"}}, {BASE}),
    ("claim-dataset-not-listed", {"allowedClaims": ["data"]}, {"datasets": [
        {"name": "a", "train": "pvc://payroll-db-backup/a.jsonl", "eval": "pvc://data/b.jsonl"}]}, {TRAIN}),
    ("claim-model-cache-not-listed", {}, {"execution": {"modelCacheClaim": "team-b-private"}}, {CACHE}),
    ("claim-model-cache-listed", {"allowedClaims": ["hf-cache"]}, {"execution": {"modelCacheClaim": "hf-cache"}},
     set()),
    ("claim-any", {"allowedClaims": ["*"]}, {"baseModel": {"uri": "pvc://x/m"},
                                             "execution": {"modelCacheClaim": "y"}}, set()),
    # Experiment tracking: where trial pods (and the operator) send MLflow credentials.
    ("tracking-uri-not-listed", {}, {"tracking": {"mlflow": {"trackingUri": "http://169.254.169.254",
                                                             "experimentName": "e"}}}, {TRACKING}),
    ("tracking-uri-listed", {"allowedTrackingUris": [MLFLOW]},
     {"tracking": {"mlflow": {"trackingUri": MLFLOW, "experimentName": "e"}}}, set()),
    ("tracking-uri-listed-is-exact", {"allowedTrackingUris": [MLFLOW]},
     {"tracking": {"mlflow": {"trackingUri": MLFLOW + ".evil.com", "experimentName": "e"}}}, {TRACKING}),
    ("tracking-secret-not-listed", {"allowedTrackingUris": ["*"]}, {"tracking": {"mlflow": {
        "trackingUri": MLFLOW, "experimentName": "e", "credentialsSecretRef": {"name": "team-b-mlflow"}}}},
     {TRACKING_CREDS}),
    ("tracking-secret-listed", {"allowedTrackingUris": ["*"], "allowedSecrets": ["mlflow"]}, {"tracking": {"mlflow": {
        "trackingUri": MLFLOW, "experimentName": "e", "credentialsSecretRef": {"name": "mlflow"}}}}, set()),
    ("tracking-unset", {}, {"tracking": {}}, set()),
    # Placement: whom trials may preempt, which taints they tolerate, which nodes they pick.
    ("priority-class-not-listed", {}, {"execution": {"priorityClassName": "system-cluster-critical"}}, {PRIORITY}),
    ("priority-class-listed", {"allowedPriorityClasses": ["research"]},
     {"execution": {"priorityClassName": "research"}}, set()),
    ("toleration-gpu-taint", {}, {"execution": {"tolerations": [GPU_TOLERATION]}}, set()),
    ("toleration-every-taint", {}, {"execution": {"tolerations": [{"operator": "Exists"}]}}, {TOL_KEY}),
    ("toleration-every-taint-allowed-by-any-key", {"allowedTolerationKeys": ["*"]},
     {"execution": {"tolerations": [{"operator": "Exists"}]}}, set()),
    ("toleration-other-key", {}, {"execution": {"tolerations": [
        GPU_TOLERATION, {"key": "dedicated", "operator": "Equal", "value": "team-b", "effect": "NoSchedule"}]}},
     {TOL_KEY}),
    ("toleration-effect-not-listed", {"allowedTolerationEffects": ["NoSchedule"]},
     {"execution": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"}]}},
     {TOL_EFFECT}),
    ("toleration-without-effect-needs-every-effect", {"allowedTolerationEffects": ["NoSchedule", "NoExecute"]},
     {"execution": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}}, {TOL_EFFECT}),
    ("toleration-without-effect-all-effects-listed", {},
     {"execution": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}}, set()),
    ("node-selector-gpu-product", {}, {"execution": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100"}}},
     set()),
    ("node-selector-other-key", {}, {"execution": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100",
                                                                    "dedicated": "team-b"}}}, {NODES}),
    ("node-selector-key-value", {"allowedNodeSelectors": ["pool=shared"]},
     {"execution": {"nodeSelector": {"pool": "shared"}}}, set()),
    ("node-selector-other-value", {"allowedNodeSelectors": ["pool=shared"]},
     {"execution": {"nodeSelector": {"pool": "shared-b"}}}, {NODES}),
    ("node-selector-any", {"allowedNodeSelectors": ["*"]}, {"execution": {"nodeSelector": {"dedicated": "b"}}},
     set()),
    ("affinity-not-allowed", {}, {"execution": {"affinity": TEAM_B_NODES}}, {AFFINITY}),
    ("affinity-empty", {}, {"execution": {"affinity": {}}}, set()),
    ("affinity-allowed", {"allowAffinity": True}, {"execution": {"affinity": TEAM_B_NODES}}, set()),
    ("placement-all-at-once", {}, {"execution": {
        "priorityClassName": "system-cluster-critical", "tolerations": [{"operator": "Exists"}],
        "nodeSelector": {"dedicated": "team-b"}, "affinity": TEAM_B_NODES}}, {PRIORITY, TOL_KEY, NODES, AFFINITY}),
    ("explicit-nulls-are-unset", {}, {"execution": {
        "image": None, "serviceAccountName": None, "priorityClassName": None, "modelCacheClaim": None,
        "tolerations": None, "nodeSelector": None, "affinity": None}}, set()),
    ("everything-at-once", {}, {"execution": {"image": "x:1", "serviceAccountName": "sa"},
                                "storage": {"uri": "s3://zz-bucket/p", "endpoint": "http://10.0.0.1",
                                            "credentialsSecretRef": {"name": "s"}}},
     {IMAGE, SA, STORE, ENDPOINT, CREDS}),
]


def params() -> list[Any]:
    return [pytest.param(policy, patch, refused, id=name) for name, policy, patch, refused in CASES]


def policy_values(overrides: dict[str, Any]) -> dict[str, Any]:
    return {**BASE_POLICY, **overrides}
