"""docs/cluster-quickstart.md, kept true: the commands are read out of the page itself. The `helm install` line's
values render the chart; its ValidatingAdmissionPolicy (in cel-python) must admit the manifest the page applies, and
its Deployment's environment starts the real operator (`kopf run`) against the emulated API server, with the page's
Namespaces, Secrets and LoraAblation applied to it and the page's upload command run against moto S3. The test plays
the Job controller and the trainer (a result.json per trial) and reads the answer with the page's jsonpath lines.
Only the MinIO address is replaced (by moto's), and the images and pods are not run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes
import kubernetes_validate
import pytest
import yaml

from lora_ablation.api.crdgen import build_crd
from support.chart import CHART, ROOT, admit, helm, of_kind
from support.cluster import Cluster, wait_for
from support.doc_commands import commands, jsonpath, option, starting

PAGE = ROOT / "docs" / "cluster-quickstart.md"
REG = "registry.test/ml"
COMMANDS = commands(PAGE, {"REG": REG})
pytestmark = pytest.mark.timeout(240)


def applied() -> list[dict[str, Any]]:
    """The documents of every file the page gives to `kubectl apply -f`, in order."""
    paths = [ROOT / c[c.index("-f") + 1] for c in starting(COMMANDS, "kubectl", "apply")]
    return [d for path in paths for d in yaml.safe_load_all(path.read_text()) if d]


def of(kind: str) -> list[dict[str, Any]]:
    return [d for d in applied() if d["kind"] == kind]


def secret_value(namespace: str, ref: dict[str, str]) -> str:
    """What the kubelet would put into a secretKeyRef variable; fails as the pod would on a missing Secret or key."""
    secrets = {s["metadata"]["name"]: s for s in of("Secret") if s["metadata"]["namespace"] == namespace}
    assert ref["name"] in secrets, f"no Secret {ref['name']} in namespace {namespace}"
    data = secrets[ref["name"]].get("stringData") or {}
    assert ref["key"] in data, f"Secret {namespace}/{ref['name']} has no key {ref['key']}"
    return data[ref["key"]]


def chart_docs() -> tuple[dict[str, Any], ...]:
    (install,) = starting(COMMANDS, "helm", "install")
    release, chart, *flags = install[2:]
    assert (ROOT / chart).resolve() == CHART
    done = helm("template", release, str(CHART), *flags)
    assert done.returncode == 0, done.stderr
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def ablation() -> dict[str, Any]:
    (lab,) = of("LoraAblation")
    return lab


def test_the_page_applies_files_that_exist_and_validate():
    files = [c[i + 1] for c in COMMANDS if c[0] == "kubectl" and "-f" in c for i, w in enumerate(c) if w == "-f"]
    assert {"examples/cluster/minio.yaml", "examples/cluster/secrets.yaml", "examples/cluster-quickstart.yaml"} <= set(
        files)  # fmt: skip
    for doc in applied():
        if doc["kind"] != "LoraAblation":  # the CRD schema is checked for every example in tests/core/api
            kubernetes_validate.validate(doc, "1.33.0", strict=True)
    namespaces = {n["metadata"]["name"] for n in of("Namespace")}
    assert {d["metadata"]["namespace"] for d in applied() if d["kind"] != "Namespace"} <= namespaces
    # The credentials the page exports for the upload are MinIO's root user, which is what the Secrets hold.
    (export,) = starting(COMMANDS, "export")
    exported = dict(word.split("=", 1) for word in export[1:])
    (root,) = [s for s in of("Secret") if s["metadata"]["name"] == "minio-root"]
    assert exported == {"AWS_ACCESS_KEY_ID": root["stringData"]["MINIO_ROOT_USER"],
                        "AWS_SECRET_ACCESS_KEY": root["stringData"]["MINIO_ROOT_PASSWORD"]}  # fmt: skip
    for namespace in ("lora-system", ablation()["metadata"]["namespace"]):
        for key, value in exported.items():
            assert secret_value(namespace, {"name": "ablation-s3", "key": key}) == value
    (service,) = of("Service")
    (install,) = starting(COMMANDS, "helm", "install")
    endpoint = next(s.split("=", 1)[1] for s in install if s.startswith("storage.endpoint="))
    port = service["spec"]["ports"][0]["port"]
    assert endpoint == f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc:{port}"


def test_the_helm_values_admit_the_manifest_and_the_default_policy_does_not():
    docs = chart_docs()
    assert admit(docs, ablation()) == []
    fresh = helm("template", "lora-ablation", str(CHART), "--namespace", "lora-system")
    refused = admit(tuple(d for d in yaml.safe_load_all(fresh.stdout) if d), ablation())
    # Without the page's values a fresh install refuses it: every bucket, and the Secret (no storage.credentialsSecret).
    assert {m.split(":", 1)[0] for m in refused} == {
        "spec.storage.uri",
        "spec.baseModel.uri",
        "spec.datasets[*].train",
        "spec.datasets[*].eval",
        "spec.storage.credentialsSecretRef.name",
    }
    (deployment,) = of_kind(list(docs), "Deployment")
    rollout = [c for c in starting(COMMANDS, "kubectl", "-n", "lora-system") if "rollout" in c]
    assert rollout and rollout[0][-1] == f"deployment/{deployment['metadata']['name']}"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"{REG}/operator:0.1.0"
    assert "lab" in build_crd()["spec"]["names"]["shortNames"]  # `kubectl get lab`


@pytest.fixture
def quickstart_cluster(kube_api, kubeconfig, s3_endpoint, tmp_path, monkeypatch):
    """The page's steps 2-4 on the emulated API server and moto; yields the Cluster, operator started."""
    # Step 4: the page's upload command, from a root holding the quickstart's data and a model folder. The page's
    # build command is the README's (tests/trainer/test_readme_commands.py runs it); a 1-step model stands in here.
    from lora_ablation_demo.quickstart import build_base_model, write_datasets

    assert [".venv/bin/python", "-m", "lora_ablation_demo.quickstart", "examples"] in COMMANDS
    write_datasets(tmp_path / "examples" / "data", train_size=20, eval_size=5)
    build_base_model(tmp_path / "examples" / "models" / "tiny-llama", steps=1)
    (upload,) = [c for c in COMMANDS if c[1:3] == ["-m", "lora_ablation_demo.upload"]]
    argv = [sys.executable, *upload[1:]]
    argv[argv.index("--endpoint") + 1] = s3_endpoint  # MinIO behind the port-forward -> moto
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    bucket = upload[upload.index("--endpoint") - 1][len("s3://") :]
    cluster = Cluster(kubeconfig, s3_endpoint, bucket, tmp_path)
    cluster.install_crd()
    # Step 2's Namespaces and Secrets, as kubectl apply would create them.
    core = kubernetes.client.CoreV1Api()
    for doc in of("Namespace"):
        core.create_namespace(doc)
    for doc in of("Secret"):
        core.create_namespaced_secret(doc["metadata"]["namespace"], doc)
    # Step 3: the operator with the rendered Deployment's environment, credentials resolved from its Secret.
    (deployment,) = of_kind(list(chart_docs()), "Deployment")
    settings = {}
    for env in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "valueFrom" in env:
            if "secretKeyRef" in env["valueFrom"]:
                monkeypatch.setenv(env["name"], secret_value("lora-system", env["valueFrom"]["secretKeyRef"]))
        elif env["name"].startswith("LORA_ABLATION_"):
            settings[env["name"][len("LORA_ABLATION_") :].lower()] = env["value"]
    assert settings["storage_endpoint"].startswith("http://minio.")
    settings.update(storage_endpoint=s3_endpoint, metrics_port="0")  # moto's address; no metrics port in tests
    cluster.start_operator(float(settings.pop("resync_interval")), **settings)
    yield cluster
    cluster.stop_operator()


def test_the_quickstart_runs_under_the_charts_policy_and_answers(quickstart_cluster):
    cluster, lab = quickstart_cluster, ablation()
    name, namespace = lab["metadata"]["name"], lab["metadata"]["namespace"]
    keys = cluster.object_keys("")
    assert lab["spec"]["baseModel"]["uri"].split("/", 3)[3] + "config.json" in keys
    for dataset in lab["spec"]["datasets"]:
        for split in ("train", "eval"):
            assert dataset[split].split("/", 3)[3] in keys, f"the upload wrote no {dataset[split]}"
    cluster.apply(lab)

    def unfinished(component: str) -> dict[str, dict]:
        jobs = cluster.jobs(namespace, component)
        return {n: j for n, j in jobs.items() if not (j.get("status") or {}).get("conditions")}

    def preflight() -> dict[str, dict]:
        ready = cluster.condition(name, namespace=namespace)
        assert ready.get("reason") not in {"Forbidden", "InvalidSpec"}, ready["message"]
        return unfinished("preflight")

    for job in wait_for(preflight, what="the preflight Job"):
        cluster.finish_job(job, namespace=namespace)
    # Scores shaped like the README's table: `all` learns most, `qkv` is close and faster.
    scores = {
        "-qkv-": (0.75, 2.4),
        "-o-proj-r8": (0.15, 2.1),
        "-o-proj-fc2-": (0.23, 2.5),
        "-fc2-": (0.05, 2.2),
        "-all-": (0.8, 3.0),
        "-base-": (0.0, 2.0),
    }  # o_proj+fc2 before fc2: the names of the first contain both
    finished: set[str] = set()
    while cluster.condition(name, namespace=namespace).get("reason") != "Completed":
        running = unfinished("trial")
        assert len(running) <= lab["spec"]["execution"]["parallelism"], sorted(running)
        for job_name, job in running.items():
            pod = job["spec"]["template"]["spec"]
            (container,) = pod["containers"]
            assert container["image"] == f"{REG}/trainer:0.1.0" and not pod.get("serviceAccountName")
            for env in container["env"]:
                if "secretKeyRef" in env.get("valueFrom", {}):  # the Secret and key exist in the namespace
                    secret = kubernetes.client.CoreV1Api().read_namespaced_secret(
                        env["valueFrom"]["secretKeyRef"]["name"], namespace)  # fmt: skip
                    assert env["valueFrom"]["secretKeyRef"]["key"] in (secret.string_data or secret.data)
            assert cluster.trial_spec(job)["storage"]["endpoint"] == cluster.endpoint  # the chart's endpoint
            score, tpot = next(v for k, v in scores.items() if k in job_name)
            cluster.write_result(job, score, tpot)
            cluster.finish_job(job_name, namespace=namespace)
            finished.add(job_name)
        wait_for(lambda: unfinished("trial") or cluster.condition(name, namespace=namespace).get("reason")
                 == "Completed", what="the next trials or Completed")  # fmt: skip
    assert len(finished) == 12 and cluster.status(name, namespace)["progress"] == "12/12"
    # Step 6: the page's jsonpath lines on the object `kubectl get` would print.
    obj = cluster.ablation(name, namespace)
    answers = [jsonpath(option(c, "-o")[len("jsonpath=") :], obj)
               for c in starting(COMMANDS, "kubectl", "-n", namespace, "get", "lab", name)]  # fmt: skip
    accuracy_first, balanced, rationale, leaderboard, results_uri = answers
    assert accuracy_first == "all r8 lora\n" and balanced == "qkv r8 lora\n" and rationale.strip()
    lines = [line.split("\t") for line in leaderboard.splitlines()]
    assert lines[0][:2] == ["1", "all r8 lora"] and float(lines[0][2]) == pytest.approx(0.8)
    assert len(lines) == 5  # every configuration, the baseline apart
    (report,) = [c for c in COMMANDS if c[1:2] == ["report"]]
    assert results_uri.strip() == report[2] and cluster.object_keys(report[2].split("/", 3)[3] + "/summary.json")


def test_a_page_command_names_a_variable_the_test_does_not_know(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text("```bash\nhelm install x chart --set image=$UNSET\n```\n")
    with pytest.raises(AssertionError, match="UNSET"):
        commands(page, {"REG": REG})


def test_the_upload_says_how_to_build_the_model_when_it_is_missing(tmp_path: Path, s3_endpoint):
    argv = [sys.executable, "-m", "lora_ablation_demo.upload", "examples", "s3://lora-quickstart-empty"]
    done = subprocess.run([*argv, "--endpoint", s3_endpoint], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "python -m lora_ablation_demo.quickstart examples" in done.stderr
    done = subprocess.run([*argv[:-1], "lora-quickstart"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "not an s3://bucket" in done.stderr
