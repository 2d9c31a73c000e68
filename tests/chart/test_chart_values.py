"""Each chart value an operator chart is expected to have (cert-manager and kuberay-operator as the yardstick),
rendered by the real helm binary: it lands where it should, the schema refuses nonsense, and one replica never
overlaps another (Recreate; more than one: Kopf peering with a priority per pod)."""

from __future__ import annotations

import json

import pytest
from test_chart import render

from lora_ablation_operator.settings import peering_priority
from support.chart import CHART, helm, of_kind


def render_json(values: dict) -> list[dict]:
    import yaml

    done = helm("template", "release", str(CHART), "--namespace", "lora-system", "--values", "-",
                input_text=json.dumps(values))  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def deployment(docs: list[dict]) -> dict:
    (found,) = of_kind(docs, "Deployment")
    return found


def container(docs: list[dict]) -> dict:
    return deployment(docs)["spec"]["template"]["spec"]["containers"][0]


def test_one_replica_recreates_and_runs_standalone_without_a_peering_object():
    docs = render()
    assert deployment(docs)["spec"]["strategy"] == {"type": "Recreate"}
    assert "--standalone" in container(docs)["args"]
    assert not [d for d in docs if "KopfPeering" in d["kind"]]
    assert "LORA_ABLATION_POD_NAME" not in {e["name"] for e in container(docs)["env"]}


def test_replicas_get_the_peering_object_and_a_priority_each():
    docs = render_json({"replicaCount": 3})
    (peering,) = of_kind(docs, "ClusterKopfPeering")
    assert f"--peering={peering['metadata']['name']}" in container(docs)["args"]
    env = {e["name"]: e for e in container(docs)["env"]}
    assert env["LORA_ABLATION_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    pods = [f"release-lora-ablation-operator-7d9f8b6c5-{s}" for s in ("x2k9p", "q8w4z", "m5n7b")]
    priorities = {peering_priority(p) for p in pods}
    assert len(priorities) == 3 and 0 not in priorities and peering_priority("") == 0
    namespaced = render_json({"replicaCount": 2, "watchNamespaces": ["ml-a", "ml-b"]})
    assert sorted(p["metadata"]["namespace"] for p in of_kind(namespaced, "KopfPeering")) == ["ml-a", "ml-b"]
    assert not of_kind(namespaced, "ClusterKopfPeering")
    rolling = render_json({"replicaCount": 2, "strategy": {"type": "RollingUpdate"}})
    assert deployment(rolling)["spec"]["strategy"] == {"type": "RollingUpdate"}


def test_name_overrides():
    docs = render_json({"nameOverride": "lab"})
    assert deployment(docs)["metadata"]["name"] == "release-lab"
    assert deployment(docs)["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "lab"
    docs = render_json({"fullnameOverride": "ablations"})
    assert deployment(docs)["metadata"]["name"] == "ablations"
    assert {d["metadata"]["name"] for d in of_kind(docs, "Service")} == {"ablations"}


def test_image_digest_pins_operator_and_test_pod():
    digest = "sha256:" + "d" * 64
    docs = render_json({"image": {"repository": "registry.corp/lao", "digest": digest}})
    assert container(docs)["image"] == f"registry.corp/lao@{digest}"
    (test_pod,) = of_kind(docs, "Pod")
    assert test_pod["spec"]["containers"][0]["image"] == f"registry.corp/lao@{digest}"
    assert container(render())["image"] == "ghcr.io/lora-ablation/operator:0.1.0"
    assert helm("template", "r", str(CHART), "--set", "image.digest=latest").returncode != 0


def test_priority_class_pdb_labels_annotations():
    docs = render_json({"priorityClassName": "system-cluster-critical", "podLabels": {"team": "ml"},
                        "podAnnotations": {"a": "b"}, "podDisruptionBudget": {"enabled": True}})  # fmt: skip
    pod = deployment(docs)["spec"]["template"]
    assert pod["spec"]["priorityClassName"] == "system-cluster-critical"
    assert pod["metadata"]["labels"]["team"] == "ml" and pod["metadata"]["annotations"] == {"a": "b"}
    (pdb,) = of_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1 and pdb["spec"]["selector"] == deployment(docs)["spec"]["selector"]
    (pdb,) = of_kind(render_json({"podDisruptionBudget": {"enabled": True, "maxUnavailable": "50%"}}),
                     "PodDisruptionBudget")  # fmt: skip
    assert pdb["spec"] == {**pdb["spec"], "maxUnavailable": "50%"} and "minAvailable" not in pdb["spec"]
    assert not of_kind(render(), "PodDisruptionBudget") and "priorityClassName" not in deployment(render())["spec"]


def test_security_contexts_are_values_with_locked_down_defaults():
    # Helm merges maps with the defaults: a value adds or changes keys, and null removes one.
    docs = render_json({"podSecurityContext": {"runAsUser": 2000, "fsGroup": 2000},
                        "containerSecurityContext": {"capabilities": None, "runAsUser": 2000}})  # fmt: skip
    pod = deployment(docs)["spec"]["template"]["spec"]["securityContext"]
    assert pod == {"runAsNonRoot": True, "runAsUser": 2000, "runAsGroup": 10001, "fsGroup": 2000,
                   "seccompProfile": {"type": "RuntimeDefault"}}  # fmt: skip
    assert container(docs)["securityContext"] == {"readOnlyRootFilesystem": True, "runAsNonRoot": True,
                                                  "allowPrivilegeEscalation": False, "runAsUser": 2000}  # fmt: skip


def test_extra_env_args_volumes_and_mounts():
    docs = render_json({"extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
                        "extraArgs": ["--verbose"],
                        "extraVolumes": [{"name": "ca", "configMap": {"name": "corp-ca"}}],
                        "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/corp", "readOnly": True}],
                        })  # fmt: skip
    c = container(docs)
    assert {"name": "HTTPS_PROXY", "value": "http://proxy:3128"} in c["env"] and c["args"][-1] == "--verbose"
    assert {"name": "ca", "mountPath": "/etc/ssl/corp", "readOnly": True} in c["volumeMounts"]
    assert {"name": "ca", "configMap": {"name": "corp-ca"}} in deployment(docs)["spec"]["template"]["spec"]["volumes"]
    assert helm("template", "r", str(CHART), "--set", "extraEnv[0].value=x").returncode != 0  # an EnvVar needs a name


def test_service_monitor_labels_and_namespace():
    docs = render_json({"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"},
                                                       "namespace": "monitoring"}}})  # fmt: skip
    (monitor,) = of_kind(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kps" and monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["lora-system"]}
    (same_ns,) = of_kind(render_json({"metrics": {"serviceMonitor": {"enabled": True}}}), "ServiceMonitor")
    assert same_ns["metadata"]["namespace"] == "lora-system" and "namespaceSelector" not in same_ns["spec"]


def test_aggregated_view_and_edit_roles():
    roles = {r["metadata"]["name"]: r for r in of_kind(render(), "ClusterRole")}
    view, edit = roles["release-lora-ablation-operator-view"], roles["release-lora-ablation-operator-edit"]
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert set(view["rules"][0]["verbs"]) == {"get", "list", "watch"}
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in edit["metadata"]["labels"], "view stays read-only"
    assert {"create", "patch", "delete"} <= set(edit["rules"][0]["verbs"])
    off = {r["metadata"]["name"] for r in of_kind(render_json({"rbac": {"aggregateClusterRoles": False}}),
                                                  "ClusterRole")}  # fmt: skip
    assert not any(n.endswith(("-view", "-edit")) for n in off)


def test_test_pod_uses_image_pull_secrets():
    (test_pod,) = of_kind(render_json({"imagePullSecrets": [{"name": "regcred"}]}), "Pod")
    assert test_pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]


def test_the_operator_never_gets_update():
    for role in of_kind(render(), "ClusterRole"):
        if role["metadata"]["name"].endswith(("-view", "-edit")):
            continue  # users' roles, not the operator's
        for rule in role["rules"]:
            assert "update" not in rule["verbs"], role["metadata"]["name"]


@pytest.mark.parametrize("values", [{"strategy": {"type": "Sometimes"}}, {"podDisruptionBudget": {"minAvailable": -1}},
                                    {"metrics": {"serviceMonitor": {"namespace": "Not_A_Namespace"}}},
                                    {"nameOverride": "x" * 64}, {"extraArgs": [1]}])  # fmt: skip
def test_schema_refuses(values):
    done = helm("template", "r", str(CHART), "--values", "-", input_text=json.dumps(values))
    assert done.returncode != 0 and "values don't meet the specifications of the schema" in done.stderr


def test_the_crd_is_templated_so_upgrades_carry_it_and_kept_on_uninstall():
    import yaml

    generated = yaml.safe_load((CHART.parents[1] / "crds" / "lora.ablation.dev_loraablations.yaml").read_text())
    (crd,) = [d for d in of_kind(render(), "CustomResourceDefinition")]
    assert crd["spec"] == generated["spec"], "the chart renders exactly the generated CRD (make crds)"
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    (unkept,) = of_kind(render_json({"crds": {"keep": False}}), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in (unkept["metadata"].get("annotations") or {})
    assert not of_kind(render_json({"crds": {"enabled": False}}), "CustomResourceDefinition")
    assert not list((CHART / "crds").glob("lora.ablation.dev_*")), "under crds/ Helm would never upgrade it"


def test_notes_say_what_a_fresh_install_still_needs():
    done = helm("install", "release", str(CHART), "--dry-run=client", "--namespace", "lora-system")
    assert done.returncode == 0, done.stderr
    assert "policy.allowedBuckets is empty" in done.stdout and "no release has published" in done.stdout
    done = helm("install", "release", str(CHART), "--dry-run=client", "--namespace", "lora-system", "--set",
                "policy.allowedBuckets={results}", "--set", "image.repository=registry.corp/lao")  # fmt: skip
    assert "policy.allowedBuckets is empty" not in done.stdout and "no release has published" in done.stdout


@pytest.mark.parametrize(("sets", "named"), [
    ([], ["image.repository", "trainerImage"]),
    (["image.repository=registry.corp/lao"], ["trainerImage"]),
    (["trainerImage=registry.corp/trainer:0.1.0"], ["image.repository"]),
    (["image.digest=sha256:" + "a" * 64, "trainerImage=ghcr.io/lora-ablation/trainer@sha256:" + "b" * 64], []),
    (["image.repository=registry.corp/lao", "trainerImage=registry.corp/trainer:0.1.0"], []),
])  # fmt: skip
def test_the_unpublished_images_note_names_each_image_still_at_its_default(sets, named):
    args = [a for s in sets for a in ("--set", s)]
    done = helm("install", "release", str(CHART), "--dry-run=client", "--namespace", "lora-system", *args)
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    assert ("no release has published" in notes) == bool(named), notes
    for value in ["image.repository", "trainerImage"]:
        assert (f"\n  {value} (" in notes) == (value in named), (value, notes)


def test_controller_values_reach_the_operator_settings(monkeypatch):
    from lora_ablation_operator.settings import Settings

    values = {"controller": {"resyncIntervalSeconds": 120, "batchWindowSeconds": 0.25, "workers": 3, "apiQps": 50,
                             "apiBurst": 80, "watchTimeoutSeconds": 240}}  # fmt: skip
    env = {e["name"]: e["value"] for e in container(render_json(values))["env"] if "value" in e}
    for name, value in env.items():
        if name.startswith("LORA_ABLATION_"):
            monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    assert (settings.resync_interval, settings.batch_window, settings.workers, settings.api_qps, settings.api_burst,
            settings.watch_timeout) == (120, 0.25, 3, 50, 80, 240)  # fmt: skip
    zero = json.dumps({"controller": {"workers": 0}})
    done = helm("template", "release", str(CHART), "--values", "-", input_text=zero)
    assert done.returncode != 0 and "workers" in done.stderr


def test_every_log_format_kopf_accepts_is_in_the_schema_and_documented():
    import re

    import kopf

    accepted = {f.name.lower() for f in kopf.LogFormat}
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(schema["properties"]["logFormat"]["enum"]) == accepted
    lines = (CHART / "values.yaml").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("logFormat:"))
    comment = []
    for line in reversed(lines[:at]):
        if not line.startswith("#"):
            break
        comment.insert(0, line)
    documented = set(re.findall(r"\b(\w+)\b", " ".join(comment))) & accepted
    assert documented == accepted, f"values.yaml's logFormat comment omits {sorted(accepted - documented)}"
    for name in sorted(accepted):
        args = container(render_json({"logFormat": name}))["args"]
        assert f"--log-format={name}" in args
