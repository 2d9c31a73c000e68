"""Operator at scale: N ablations x M trials against kmock's emulated API server and moto S3.

Prints: seconds from applying every ablation to all permitted trial Jobs existing; seconds from the
last Job completion to every ablation reporting Ready; API requests per trial; the operator's peak
memory; and, as the baseline measured in the same run, a bare loop of client calls creating the same
Jobs from the same builder, with the ratio (operator time / bare loop time). Preflight is switched off
so the figures are about trial Jobs.

    python tests/benchmarks/operator_scale.py [--ablations 100] [--trials 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import kubernetes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lora_ablation.api import parse_ablation
from lora_ablation.plan import plan_trials
from lora_ablation_operator.jobs import trial_job
from lora_ablation_operator.settings import Settings
from support.cluster import Cluster, manifest
from support.kube import ServedApi, write_kubeconfig
from support.s3 import aws_test_env, s3_client, start_moto_server

MODULE_SETS = [["qkv"], ["o_proj"], ["fc1"], ["fc2"], ["o_proj", "fc1"], ["qkv", "fc2"], ["o_proj", "fc2"],
               ["qkv", "fc1"], ["all"], ["attn"], ["mlp"], ["q_proj"], ["v_proj"], ["k_proj"]]  # fmt: skip


def ablation_manifests(count: int, trials: int, bucket: str) -> list[dict]:
    out = []
    for index in range(count):
        body = manifest(f"scale-{index:03d}", bucket, search={"moduleSets": MODULE_SETS[: trials - 1]},
                        execution={"parallelism": trials, "maxFailedTrials": trials})  # fmt: skip
        out.append(body)
    return out


def wait(check, timeout: float, what: str) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if check():
            return time.perf_counter() - started
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def bare_loop(api: ServedApi, manifests: list[dict]) -> tuple[float, int]:
    """The baseline: the same Jobs, built by the same pure builder, created by a plain loop of calls."""
    batch = kubernetes.client.BatchV1Api()
    jobs = []
    for body in manifests:
        ablation = parse_ablation({**body, "metadata": {**body["metadata"], "namespace": "baseline"}})
        for trial in plan_trials(ablation.metadata.name, "baseline", ablation.spec).trials:
            jobs.append(trial_job(ablation.metadata.name, "baseline", ablation.spec, trial, Settings()))
    started = time.perf_counter()
    for job in jobs:
        batch.create_namespaced_job("baseline", job, _preload_content=False)
    return time.perf_counter() - started, len(jobs)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ablations", type=int, default=100)
    parser.add_argument("--trials", type=int, default=10, help="trials per ablation (baseline + module sets)")
    parser.add_argument("--interval", type=float, default=2.0, help="operator reconcile interval, seconds")
    args = parser.parse_args()
    total = args.ablations * args.trials
    with aws_test_env(), ServedApi() as api:
        server, endpoint = start_moto_server()
        bucket = "scale"
        s3_client(endpoint).create_bucket(Bucket=bucket)
        workdir = Path("/tmp/operator-scale")
        workdir.mkdir(exist_ok=True)
        kubeconfig = write_kubeconfig(workdir / "kubeconfig", api.url)
        cluster = Cluster(kubeconfig, endpoint, bucket, workdir)
        cluster.install_crd()
        manifests = ablation_manifests(args.ablations, args.trials, bucket)
        baseline_seconds, baseline_jobs = bare_loop(api, manifests)

        os.environ["LORA_ABLATION_PREFLIGHT"] = "false"
        cluster.start_operator(interval=args.interval, verbose=False)
        time.sleep(3)  # let Kopf start its watches before the clock starts
        requests_before = api.emulator.served
        started = time.perf_counter()
        for body in manifests:
            cluster.apply(body)

        def trial_jobs() -> list[dict]:
            return [j for j in api.objects("batch", "v1", "jobs") if j["metadata"].get("namespace") == "default"]

        wait(lambda: len(trial_jobs()) >= total, 900, "all trial Jobs")
        create_seconds = time.perf_counter() - started
        for job in trial_jobs():
            cluster.write_result(job, 0.5)
        for job in trial_jobs():
            cluster.finish_job(job["metadata"]["name"])
        last_completion = time.perf_counter()

        def all_ready() -> bool:
            items = cluster.custom.list_namespaced_custom_object("lora.ablation.dev", "v1alpha1", "default",
                                                                 "loraablations")["items"]  # fmt: skip
            return all(any(c["type"] == "Ready" and c["status"] == "True" for c in (i.get("status") or {})
                           .get("conditions", [])) for i in items)  # fmt: skip

        wait(all_ready, 900, "every ablation Ready")
        final_seconds = time.perf_counter() - last_completion
        requests = api.emulator.served - requests_before
        memory = peak_rss_mib(cluster.operator.pid)
        cluster.stop_operator()
        server.stop()
    print(f"{args.ablations} ablations x {args.trials} trials = {total} trial Jobs (preflight off, "
          f"reconcile interval {args.interval}s)")  # fmt: skip
    print(f"  apply -> all permitted Jobs created:   {create_seconds:8.2f} s")
    print(f"  last Job completion -> all Ready:      {final_seconds:8.2f} s")
    print(f"  API requests per trial (operator run): {requests / total:8.2f}")
    print(f"  operator peak memory (VmHWM):          {memory:8.1f} MiB")
    print(f"  baseline: bare loop creating {baseline_jobs} Jobs: {baseline_seconds:6.2f} s "
          f"({baseline_jobs / baseline_seconds:.0f} Jobs/s)")  # fmt: skip
    print(f"  ratio operator/baseline (Job creation): {create_seconds / baseline_seconds:7.2f}")


if __name__ == "__main__":
    main()
