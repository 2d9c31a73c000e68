"""End to end on a real cluster (kind or any kubeconfig): install the chart, run a CPU-sized quickstart,
wait for the answer in status. Opt-in: it needs a cluster, images and an S3 endpoint reachable from
both this machine and the cluster, so it is skipped (with the reason) unless configured:

    LORA_ABLATION_E2E=1 KUBECONFIG=~/.kube/config \\
    LORA_ABLATION_E2E_OPERATOR_IMAGE=registry/lora-ablation-operator:dev \\
    LORA_ABLATION_E2E_TRAINER_IMAGE=registry/lora-ablation-trainer:dev \\
    LORA_ABLATION_E2E_S3_ENDPOINT=http://minio.example:9000 LORA_ABLATION_E2E_BUCKET=ablations \\
    AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \\
    python -m pytest tests/e2e -ra

The chart is installed into namespace lora-e2e with a Secret holding the same S3 credentials.
The multi-node case also needs the engine in the cluster: LORA_ABLATION_E2E_MULTI_NODE=JobSet (the JobSet
controller installed) or =TrainJob (Kubeflow Trainer with its torch-distributed ClusterTrainingRuntime).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = [
    "KUBECONFIG",
    "LORA_ABLATION_E2E_OPERATOR_IMAGE",
    "LORA_ABLATION_E2E_TRAINER_IMAGE",
    "LORA_ABLATION_E2E_S3_ENDPOINT",
    "LORA_ABLATION_E2E_BUCKET",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
]
missing = [name for name in REQUIRED if not os.environ.get(name)]
pytestmark = pytest.mark.skipif(
    os.environ.get("LORA_ABLATION_E2E") != "1" or bool(missing),
    reason="real-cluster e2e is opt-in: set LORA_ABLATION_E2E=1 and "
    + (", ".join(missing) if missing else "the variables in tests/e2e/test_real_cluster.py"),
)
NAMESPACE = "lora-e2e"


def run(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=600).stdout


def kubectl(*args: str) -> str:
    return run("kubectl", "--namespace", NAMESPACE, *args)


def install(tmp_path: Path, **extra: str) -> tuple[str, str]:
    """Upload the tiny model and data, create the namespace and S3 Secret, install the chart; (endpoint, bucket)."""
    import boto3

    endpoint, bucket = os.environ["LORA_ABLATION_E2E_S3_ENDPOINT"], os.environ["LORA_ABLATION_E2E_BUCKET"]
    s3 = boto3.client("s3", endpoint_url=endpoint)
    run("python", "-m", "lora_ablation_demo.quickstart", str(tmp_path))  # the tiny model and data
    for path in (tmp_path / "models" / "tiny-llama").iterdir():
        s3.upload_file(str(path), bucket, f"e2e/models/tiny-llama/{path.name}")
    for path in (tmp_path / "data").rglob("*.jsonl"):
        s3.upload_file(str(path), bucket, f"e2e/data/{path.relative_to(tmp_path / 'data')}")

    subprocess.run(["kubectl", "create", "namespace", NAMESPACE], capture_output=True, check=False)
    subprocess.run(["kubectl", "-n", NAMESPACE, "create", "secret", "generic", "e2e-s3",
                    f"--from-literal=AWS_ACCESS_KEY_ID={os.environ['AWS_ACCESS_KEY_ID']}",
                    f"--from-literal=AWS_SECRET_ACCESS_KEY={os.environ['AWS_SECRET_ACCESS_KEY']}"],
                   capture_output=True, check=False)  # fmt: skip
    repository, _, tag = os.environ["LORA_ABLATION_E2E_OPERATOR_IMAGE"].rpartition(":")
    chart = str(ROOT / "helm" / "lora-ablation-operator")
    settings = {
        "image.repository": repository,
        "image.tag": tag,
        "trainerImage": os.environ["LORA_ABLATION_E2E_TRAINER_IMAGE"],
        "storage.endpoint": endpoint,
        "storage.credentialsSecret": "e2e-s3",
        "watchNamespaces": f"{{{NAMESPACE}}}",
        "policy.allowedBuckets": f"{{{bucket}}}",  # the admin policy allows no bucket by default
        **extra,
    }
    sets = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    run("bash", str(ROOT / "scripts" / "helm.sh"), "upgrade", "--install", "lora-e2e", chart, "--namespace", NAMESPACE,
        "--wait", *sets)  # fmt: skip
    return endpoint, bucket


def quickstart(name: str, endpoint: str, bucket: str) -> dict:
    manifest = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    manifest["metadata"] = {"name": name, "namespace": NAMESPACE}
    spec = manifest["spec"]
    spec["baseModel"]["uri"] = f"s3://{bucket}/e2e/models/tiny-llama/"
    for dataset in spec["datasets"]:
        for split in ("train", "eval"):
            dataset[split] = f"s3://{bucket}/e2e/data/{dataset['name']}/{split}.jsonl"
    spec["storage"] = {
        "uri": f"s3://{bucket}/e2e/results",
        "endpoint": endpoint,
        "credentialsSecretRef": {"name": "e2e-s3"},
    }
    return manifest


def apply_and_wait(manifest: dict, tmp_path: Path) -> dict:
    """Apply the ablation and wait (30 min at most) until it is Ready or cannot be; its status."""
    name = manifest["metadata"]["name"]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    kubectl("apply", "-f", str(path))
    deadline = time.monotonic() + 1800
    status: dict = {}
    while time.monotonic() < deadline:
        status = yaml.safe_load(kubectl("get", "loraablation", name, "-o", "yaml")).get("status") or {}
        ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
        if ready.get("status") == "True" or ready.get("reason") in {
            "InvalidSpec",
            "PreflightFailed",
            "TooManyFailedTrials",
        }:
            break
        time.sleep(15)
    return status


def test_quickstart_on_a_real_cluster(tmp_path):
    endpoint, bucket = install(tmp_path)
    status = apply_and_wait(quickstart("e2e-quickstart", endpoint, bucket), tmp_path)
    ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
    assert ready.get("reason") == "Completed", status
    assert status["trials"]["succeeded"] == 12 and status["recommendation"]["balanced"]
    assert status["leaderboard"] and status["resultsUri"].endswith(f"/{NAMESPACE}/e2e-quickstart")


@pytest.mark.skipif(os.environ.get("LORA_ABLATION_E2E_MULTI_NODE") not in {"JobSet", "TrainJob"},
                    reason="set LORA_ABLATION_E2E_MULTI_NODE=JobSet or =TrainJob: a cluster with that engine")
def test_two_node_trials_on_a_real_cluster(tmp_path):
    """Each trial on two CPU pods (gloo) through the cluster's engine: the operator creates, watches and collects
    it; the trainer's launcher joins the rendezvous from the PET_* variables."""
    engine = os.environ["LORA_ABLATION_E2E_MULTI_NODE"]
    endpoint, bucket = install(tmp_path, **{"multiNode.enabled": "true", "multiNode.engine": engine})
    manifest = quickstart("e2e-two-nodes", endpoint, bucket)
    spec = manifest["spec"]
    spec["datasets"] = spec["datasets"][:1]
    spec["search"]["moduleSets"] = [["o_proj"]]
    spec["search"]["includeBaseline"] = False
    spec.setdefault("execution", {}).update({"nodes": 2, "resources": {**spec["execution"].get("resources", {}),
                                                                       "gpus": 0}})  # fmt: skip
    status = apply_and_wait(manifest, tmp_path)
    ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
    assert ready.get("reason") == "Completed", status
    assert status["trials"]["succeeded"] == status["trials"]["total"] >= 1
    kind = {"JobSet": "jobsets.jobset.x-k8s.io", "TrainJob": "trainjobs.trainer.kubeflow.org"}[engine]
    objects = yaml.safe_load(kubectl("get", kind, "-l", "lora.ablation.dev/ablation=e2e-two-nodes", "-o", "yaml"))
    assert len(objects["items"]) == status["trials"]["total"]
    pods = yaml.safe_load(kubectl("get", "pods", "-l", "lora.ablation.dev/ablation=e2e-two-nodes,"
                                  "app.kubernetes.io/component=trial", "-o", "yaml"))["items"]  # fmt: skip
    assert len(pods) >= 2 * status["trials"]["total"]  # every trial ran on two pods
