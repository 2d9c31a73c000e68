"""Drive the real operator (a `kopf run` subprocess) against the emulated API server and moto S3."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import kubernetes
import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from openapi_schema_validator import OAS30Validator

from lora_ablation.api.base import GROUP, PLURAL, VERSION
from lora_ablation.api.crdgen import build_crd

ROOT = Path(__file__).resolve().parents[2]


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll until check() returns something truthy; bounded, with the last value in the failure."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (ApiException, KeyError, IndexError, TypeError) as error:
            last = error
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class Cluster:
    """The API a test sees: the ablation, its Jobs, and the storage bucket."""

    def __init__(self, kubeconfig: Path, endpoint: str, bucket: str, log_dir: Path) -> None:
        kubernetes.config.load_kube_config(config_file=str(kubeconfig))
        self.kubeconfig, self.endpoint, self.bucket, self.log_dir = kubeconfig, endpoint, bucket, log_dir
        self.custom = kubernetes.client.CustomObjectsApi()
        self.batch = kubernetes.client.BatchV1Api()
        self.s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        self.operator: subprocess.Popen | None = None
        self.starts = 0

    # -- setup ---------------------------------------------------------------------------------------
    def install_crd(self) -> None:
        # Namespaces need not exist: the emulator keeps objects of any namespace.
        kubernetes.client.ApiextensionsV1Api().create_custom_resource_definition(build_crd())

    def start_operator(self, interval: float = 60.0, verbose: bool = True, **settings: str) -> None:
        """Settings go to the operator as LORA_ABLATION_<NAME> variables (max_trials=3 -> LORA_ABLATION_MAX_TRIALS)."""
        self.starts += 1
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            # The resync timer is only a safety net: tests see the operator react to watch events alone.
            "LORA_ABLATION_RESYNC_INTERVAL": str(interval),
            "LORA_ABLATION_MIN_PASS_INTERVAL": "0.2",  # the default (1 s) only makes step-by-step tests slower
            "LORA_ABLATION_STORAGE_ENDPOINT": self.endpoint,
            "LORA_ABLATION_TRAINER_IMAGE": "trainer:test",
            # Tests of other things name any bucket and endpoint; policy tests pass their own policy_* settings.
            "LORA_ABLATION_POLICY_BUCKETS": "*",
            "LORA_ABLATION_POLICY_STORAGE_ENDPOINTS": "*",
            "LORA_ABLATION_POLICY_TRACKING_URIS": "*",
            **{f"LORA_ABLATION_{k.upper()}": str(v) for k, v in settings.items()},
        }
        log = (self.log_dir / f"operator-{self.starts}.log").open("w")
        # LORA_ABLATION_TEST_PYTHON runs the operator under a profiler in place of the interpreter, e.g.
        # "python -m memray run -o /tmp/op.bin" or "py-spy record -o /tmp/op.svg -- python".
        python = shlex.split(os.environ.get("LORA_ABLATION_TEST_PYTHON", "")) or [sys.executable]
        command = [*python, "-m", "kopf", "run", "--standalone", "--all-namespaces",
                   *(["--verbose"] if verbose else []), "-m", "lora_ablation_operator.handlers"]  # fmt: skip
        self.operator = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def kill_operator(self) -> None:
        if self.operator and self.operator.poll() is None:
            self.operator.send_signal(signal.SIGKILL)  # no graceful shutdown: the worst case
            self.operator.wait(timeout=30)

    def stop_operator(self) -> None:
        if self.operator and self.operator.poll() is None:
            self.operator.send_signal(signal.SIGINT)
            try:
                self.operator.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill_operator()

    def operator_log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-6000:] for p in sorted(self.log_dir.glob("operator-*.log")))

    # -- the ablation ----------------------------------------------------------------------------------
    def apply(self, manifest: dict[str, Any]) -> None:
        namespace = manifest["metadata"].get("namespace", "default")
        self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)

    def patch_spec(self, name: str, spec_patch: dict[str, Any], namespace: str = "default") -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": spec_patch})

    def ablation(self, name: str, namespace: str = "default") -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def status(self, name: str, namespace: str = "default") -> dict[str, Any]:
        return self.ablation(name, namespace).get("status") or {}

    def condition(self, name: str, type_: str = "Ready", namespace: str = "default") -> dict[str, Any]:
        return next((c for c in self.status(name, namespace).get("conditions") or [] if c["type"] == type_), {})

    def jobs(self, namespace: str = "default", component: str | None = None) -> dict[str, dict[str, Any]]:
        response = self.batch.list_namespaced_job(namespace, _preload_content=False)
        items = json.loads(response.data).get("items") or []
        return {
            j["metadata"]["name"]: j
            for j in items
            if component is None or j["metadata"]["labels"].get("app.kubernetes.io/component") == component
        }

    # -- playing the Job controller and the trainer -----------------------------------------------------
    def finish_job(self, name: str, kind: str = "Complete", reason: str = "", message: str = "",
                   namespace: str = "default") -> None:  # fmt: skip
        status = {"conditions": [{"type": kind, "status": "True", "reason": reason, "message": message}]}
        status["succeeded" if kind == "Complete" else "failed"] = 1
        self.batch.patch_namespaced_job_status(name, namespace, {"status": status})

    @staticmethod
    def trial_spec(job: dict[str, Any]) -> dict[str, Any]:
        """The trial contract the operator put into the Job (what the trainer reads)."""
        return json.loads(next(e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
                               if e["name"] == "LORA_ABLATION_TRIAL"))  # fmt: skip

    def result_key(self, job: dict[str, Any]) -> str:
        return self.trial_spec(job)["storage"]["uri"].split("/", 3)[3] + "/result.json"

    def put_result(self, job: dict[str, Any], body: str | bytes) -> None:
        """Write anything as the trial's result.json, as a broken or hostile trial image could."""
        self.s3.put_object(Bucket=self.bucket, Key=self.result_key(job), Body=body if isinstance(body, bytes)
                           else body.encode())  # fmt: skip

    def write_result(self, job: dict[str, Any], score: float, tpot: float = 2.0, valid: bool = True) -> None:
        result = self.result_doc(job, score, tpot)
        self.put_result(job, json.dumps(result) if valid else '{"trial": "truncated')

    def result_doc(self, job: dict[str, Any], score: float, tpot: float = 2.0) -> dict[str, Any]:
        """A valid result.json for the trial (what the trainer would write), to publish or to spoil."""
        trial = self.trial_spec(job)
        stats = {"ttftP50Ms": 5, "ttftP95Ms": 6, "tpotP50Ms": tpot * 0.9, "tpotP95Ms": tpot}
        base = {"ttftP50Ms": 5, "ttftP95Ms": 6, "tpotP50Ms": 1.8, "tpotP95Ms": 2.0}
        result = {
            "ablation": trial["ablation"], "namespace": trial["namespace"], "trial": trial["name"],
            "dataset": trial["dataset"]["name"], "modules": trial.get("modules", []), "rank": trial.get("rank", 0),
            "variant": trial.get("variant", "lora"), "eval": {"metric": "accuracy", "score": score, "samples": 50},
            "latency": {"device": "test", "dtype": "bf16", "promptTokens": 8, "outputTokens": 4, "batchSize": 1,
                        "repeats": 3, "base": base, "adapter": None if trial.get("variant") == "none" else stats,
                        "tpotOverheadPct": None if trial.get("variant") == "none" else (tpot / 2.0 - 1) * 100},
        }  # fmt: skip
        return result

    def events(self, name: str, namespace: str = "default") -> list[str]:
        """Reasons of the Events the operator posted about an ablation, oldest first."""
        items = kubernetes.client.CoreV1Api().list_namespaced_event(namespace).items
        return [e.reason for e in items if e.involved_object and e.involved_object.name == name]

    def trial_events(self, name: str, reason: str, namespace: str = "default") -> int:
        """How many trials the operator's Events of this reason name (a burst is one Event: "3 trials: ...")."""
        items = kubernetes.client.CoreV1Api().list_namespaced_event(namespace).items
        count = 0
        for event in items:
            if event.involved_object and event.involved_object.name == name and event.reason == reason:
                burst = re.match(r"(\d+) trials: ", event.message or "")
                count += int(burst.group(1)) if burst else 1
        return count

    def object_keys(self, prefix: str) -> list[str]:
        response = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for o in response.get("Contents", []))


def manifest(name: str, bucket: str, **spec_overrides: Any) -> dict[str, Any]:
    base = yaml.safe_load((ROOT / "examples" / "module-study.yaml").read_text())
    spec = {
        "baseModel": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct"},
        "datasets": [base["spec"]["datasets"][0]],
        "search": {"moduleSets": [["o_proj"], ["o_proj", "fc2"], ["all"]], "ranks": [16]},
        "execution": {"parallelism": 2, "maxFailedTrials": 1},
        "storage": {"uri": f"s3://{bucket}/ablations"},
    }
    spec.update(spec_overrides)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LoraAblation", "metadata": {"name": name}, "spec": spec}


def trial_jobs(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return cluster.jobs(component="trial")


def pass_preflight(cluster: Cluster, name: str, first: bool = True) -> None:
    def unfinished() -> list[str]:
        return [
            n for n, j in cluster.jobs(component="preflight").items() if not (j.get("status") or {}).get("conditions")
        ]

    pending = wait_for(unfinished, what="a preflight Job")
    if first:
        assert not trial_jobs(cluster), "no trial Job may exist before the preflight passed"
    for job_name in pending:
        cluster.finish_job(job_name)


def complete(cluster: Cluster, job: dict[str, Any], score: float, tpot: float = 2.0, valid: bool = True) -> None:
    cluster.write_result(job, score, tpot, valid)
    cluster.finish_job(job["metadata"]["name"])


def assert_schema_valid(cluster: Cluster, name: str) -> None:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    errors = [e.message for e in OAS30Validator(schema).iter_errors(cluster.ablation(name))]
    assert not errors, errors


@pytest.fixture
def operated(kube_api, kubeconfig, s3_bucket, tmp_path) -> Iterator[Callable[..., Cluster]]:
    """`operated(**settings)` starts the operator (`kopf run`) against the emulated API and moto S3; test modules
    import this fixture (a conftest.py here would shadow the suite's own `conftest` module)."""
    endpoint, bucket = s3_bucket
    started: list[Cluster] = []

    def start(interval: float = 60.0, **settings: str) -> Cluster:
        cluster = Cluster(kubeconfig, endpoint, bucket, tmp_path)
        cluster.install_crd()
        cluster.start_operator(interval, **settings)
        started.append(cluster)
        return cluster

    yield start
    for cluster in started:
        cluster.stop_operator()
