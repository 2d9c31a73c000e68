"""The Helm chart, checked with a real helm binary: lint, render, validate the rendered manifests against
the Kubernetes schemas offline, and assert least privilege and a locked-down operator pod."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from support.chart import helm, of_kind

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "lora-ablation-operator"
EXAMPLE_VALUES = ROOT / "examples" / "helm" / "values-namespaced-minio.yaml"


def render(*values: str, **sets: str) -> list[dict]:
    args = ["template", "release", str(CHART), "--namespace", "lora-system"]
    for path in values:
        args += ["-f", path]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    done = helm(*args)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.mark.parametrize("values", [[], [str(EXAMPLE_VALUES)]], ids=["defaults", "namespaced-minio"])
def test_lint_passes(values):
    args = ["lint", str(CHART), "--strict"] + [a for v in values for a in ("-f", v)]
    done = helm(*args)
    assert done.returncode == 0, done.stdout + done.stderr


def test_values_schema_rejects_nonsense():
    done = helm("template", "r", str(CHART), "--set", "replicaCount=0")
    assert done.returncode != 0 and "replicaCount" in done.stderr
    done = helm("template", "r", str(CHART), "--set", "storage.endpoint=minio:9000")
    assert done.returncode != 0 and "endpoint" in done.stderr


@pytest.mark.parametrize("values", [[], [str(EXAMPLE_VALUES)]], ids=["defaults", "namespaced-minio"])
def test_rendered_manifests_are_valid_kubernetes(values):
    for doc in render(*values):
        if doc["apiVersion"].startswith(("monitoring.coreos.com", "kopf.dev")):
            continue  # prometheus-operator's and Kopf's CRD kinds; not in the built-in schemas
        kubernetes_validate.validate(doc, "1.33.0", strict=True)


@pytest.mark.parametrize("values", [[], [str(EXAMPLE_VALUES)]], ids=["defaults", "namespaced-minio"])
def test_rbac_is_least_privilege(values):
    docs = render(*values)
    for role in of_kind(docs, "ClusterRole") + of_kind(docs, "Role"):
        for rule in role["rules"]:
            for field in ("verbs", "resources", "apiGroups"):
                assert "*" not in rule.get(field, []), f"wildcard {field} in {role['metadata']['name']}"
            assert "secrets" not in rule["resources"], "the operator never needs Secrets"


def test_namespaced_mode_grants_jobs_only_in_listed_namespaces():
    docs = render(str(EXAMPLE_VALUES))
    roles = of_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml-prod", "ml-research"]
    for cluster_role in of_kind(docs, "ClusterRole"):
        assert all("jobs" not in rule["resources"] for rule in cluster_role["rules"])
    cluster_wide = render()
    assert of_kind(cluster_wide, "Role") == []
    assert any("jobs" in r["resources"] for cr in of_kind(cluster_wide, "ClusterRole") for r in cr["rules"])


def test_operator_pod_is_locked_down():
    (deployment,) = of_kind(render(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "--standalone" in container["args"] and "--all-namespaces" in container["args"]


def test_replicas_use_peering_and_credentials_are_references():
    (deployment,) = of_kind(render(str(EXAMPLE_VALUES)), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--peering=release-lora-ablation-operator" in container["args"]
    assert {"--namespace=ml-research", "--namespace=ml-prod"} <= set(container["args"])
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "ablation-s3"
    assert "value" not in env["AWS_SECRET_ACCESS_KEY"]
    assert env["LORA_ABLATION_STORAGE_ENDPOINT"]["value"] == "http://minio.minio.svc:9000"


def test_helm_test_hook_and_notes():
    docs = render()
    hooks = [d for d in docs if d.get("metadata", {}).get("annotations", {}).get("helm.sh/hook") == "test"]
    assert len(hooks) == 1 and hooks[0]["kind"] == "Pod"
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    assert notes.count("kubectl get loraablations") == 1
    # A newcomer is pointed at the page that goes from install to answer, and the page is there.
    (page,) = re.findall(r"docs/[\w-]+\.md", notes)
    assert (CHART.parents[1] / page).is_file() and "get lab -w" in (CHART.parents[1] / page).read_text()


def test_every_value_has_a_comment():
    lines = (CHART / "values.yaml").read_text().splitlines()
    keys = [i for i, line in enumerate(lines) if re.match(r"^\s*[A-Za-z][\w]*:", line)]
    assert len(keys) > 30
    for index in keys:
        assert lines[index - 1].strip().startswith("#"), f"values.yaml line {index + 1} has no comment: {lines[index]}"


def test_pods_are_read_only_and_every_setting_reaches_the_operator():
    docs = render()
    rules = [r for role in of_kind(docs, "ClusterRole") for r in role["rules"] if "pods" in r["resources"]]
    assert rules and all(set(r["verbs"]) == {"get", "list", "watch"} for r in rules)  # TrialStuck reads pods only
    (deployment,) = of_kind(docs, "Deployment")
    names = {e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    operator_source = "\n".join(p.read_text() for p in (ROOT / "operator" / "lora_ablation_operator").glob("*.py"))
    for name in sorted(n for n in names if n.startswith("LORA_ABLATION_")):
        short = name.removeprefix("LORA_ABLATION_")
        assert f'"{short}"' in operator_source or f'"{name}"' in operator_source, f"{name} is set but never read"
