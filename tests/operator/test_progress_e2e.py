"""Live progress end to end: the operator (`kopf run` against the emulated API over HTTP, moto S3) shows a running
trial's progress.json in status.trialStatuses, the ablation's progress and ETA in status.liveProgress and as
Prometheus gauges; and a pass reads a running trial's progress at most once per period (S3 requests counted)."""

from __future__ import annotations

import functools
import json
import socket
import urllib.request

import pytest

from lora_ablation.api.crdgen import build_crd
from lora_ablation.storage.open import open_store
from lora_ablation_operator.collector import ResultCache
from lora_ablation_operator.gather import gather
from lora_ablation_operator.jobs import preflight_name
from lora_ablation_operator.planning import plan_for
from lora_ablation_operator.reconcile import reconcile
from support.cluster import assert_schema_valid, complete, manifest, pass_preflight, trial_jobs, wait_for
from support.reconcile_cases import SETTINGS, finished, observed, spec

pytestmark = pytest.mark.timeout(240)


def progress_doc(trial: str, step: int, total: int = 100, **changes) -> dict:
    doc = {
        "trial": trial,
        "step": step,
        "totalSteps": total,
        "trainLoss": 1.5,
        "tokensPerSecond": 4096.0,
        "elapsedSeconds": 2.0 * step,
        "etaSeconds": 2.0 * (total - step),
        "updatedAt": "2026-01-01T00:00:00Z",
    }
    return doc | changes  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_running_trials_progress_reaches_the_status_and_the_gauges(operated):
    port = _free_port()
    cluster = operated(progress_recheck_seconds="0.5", metrics_port=str(port))
    cluster.apply(manifest("live", cluster.bucket))  # baseline + 3 configurations, 2 at a time
    pass_preflight(cluster, "live")
    jobs = wait_for(lambda: trial_jobs(cluster) if len(trial_jobs(cluster)) == 2 else None, what="2 trial Jobs")
    trained = {cluster.trial_spec(j)["name"]: j for j in jobs.values() if cluster.trial_spec(j).get("modules")}
    reporting, *others = sorted(trained)
    key = cluster.result_key(trained[reporting]).replace("result.json", "progress.json")
    cluster.s3.put_object(Bucket=cluster.bucket, Key=key, Body=json.dumps(progress_doc(reporting, 40)).encode())
    for other in others:  # a hostile file: the trial shows no progress and stays Running
        bad = cluster.result_key(trained[other]).replace("result.json", "progress.json")
        hostile = json.dumps(progress_doc(other, 1, etaSeconds=1e308)).encode()
        cluster.s3.put_object(Bucket=cluster.bucket, Key=bad, Body=hostile)

    def shown():
        entries = {t["name"]: t for t in cluster.status("live").get("trialStatuses") or []}
        return entries if (entries.get(reporting) or {}).get("progress") else None

    entries = wait_for(shown, what="the running trial's progress in trialStatuses")
    progress = entries[reporting]["progress"]
    assert entries[reporting]["state"] == "Running"
    assert progress == {"step": 40, "totalSteps": 100, "percent": 40.0, "trainLoss": 1.5, "tokensPerSecond": 4096.0,
                        "etaSeconds": 120, "updatedAt": "2026-01-01T00:00:00Z"}  # fmt: skip
    assert all("progress" not in entries[o] and entries[o]["state"] == "Running" for o in others)
    live = cluster.status("live")["liveProgress"]
    # 0 of 4 done, one at 40%: 10%; ETA: its 120 s plus 2 pending trials in one wave of its length (200 s).
    assert live == {"percent": 10.0, "reporting": 1, "etaSeconds": 320, "eta": "5m20s"}
    # What `kubectl get lab` prints in its ETA column: the CRD's column path, resolved on the stored object.
    columns = build_crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    path = next(c["jsonPath"] for c in columns if c["name"] == "ETA").lstrip(".").split(".")
    assert functools.reduce(lambda node, key: node[key], path, cluster.ablation("live")) == "5m20s"
    assert_schema_valid(cluster, "live")
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'lora_ablation_eta_seconds{ablation="live",namespace="default"} 320.0' in scraped
    assert 'lora_ablation_progress_ratio{ablation="live",namespace="default"} 0.1' in scraped

    # A newer report is shown within the period; once the trial finishes its progress leaves the status.
    cluster.s3.put_object(Bucket=cluster.bucket, Key=key, Body=json.dumps(progress_doc(reporting, 90)).encode())
    wait_for(lambda: ((shown() or {}).get(reporting, {}).get("progress") or {}).get("step") == 90, what="step 90")
    complete(cluster, trained[reporting], 0.6)
    wait_for(lambda: next(t for t in cluster.status("live")["trialStatuses"] if t["name"] == reporting)["state"]
             == "Succeeded", what="the trial succeeded")  # fmt: skip
    done = next(t for t in cluster.status("live")["trialStatuses"] if t["name"] == reporting)
    assert "progress" not in done


RAW = spec(search={"moduleSets": [["o_proj"], ["qkv"], ["fc2"]], "ranks": [8]}, execution={"parallelism": 4})
PLANNED = plan_for("demo", "ns", RAW, SETTINGS)


def test_a_pass_within_the_period_reads_no_progress_again(s3_bucket, s3_requests):
    endpoint, bucket = s3_bucket
    store = open_store(f"s3://{bucket}/ns/demo", endpoint, "us-east-1")
    trained = [t.name for t in PLANNED.plan.trials if not t.spec.is_baseline]
    for i, name in enumerate(trained[:2]):  # the third has written nothing yet
        store.write_json(f"{name}/progress.json", progress_doc(name, 10 * (i + 1)))
    jobs = {t.name: {"metadata": {"name": t.name, "labels": {"lora.ablation.dev/trial": t.name}}, "status": {}}
            for t in PLANNED.plan.trials}  # fmt: skip
    clock = [0.0]
    cache = ResultCache(300.0, clock=lambda: clock[0])
    s3_requests.clear()
    first = gather(PLANNED, jobs, store, cache, "uid", "demo")
    assert {n: p.step for n, p in first.progress.items()} == {trained[0]: 10, trained[1]: 20}
    progress_gets = s3_requests["GetObject"]
    assert progress_gets == 3  # one per running trained trial (the baseline writes none), the absent one too

    clock[0] = 29.0  # a second pass within the period: nothing read
    store.write_json(f"{trained[0]}/progress.json", progress_doc(trained[0], 50))
    s3_requests.clear()
    second = gather(PLANNED, jobs, store, cache, "uid", "demo")
    assert s3_requests["GetObject"] == 0 and second.progress[trained[0]].step == 10

    clock[0] = 30.5  # the period is over: one read per running trial again
    s3_requests.clear()
    third = gather(PLANNED, jobs, store, cache, "uid", "demo")
    assert s3_requests["GetObject"] == 3 and third.progress[trained[0]].step == 50

    # The status shows it only for running trials, and the ablation's share and ETA.
    preflight = preflight_name("demo", PLANNED.spec)
    jobs[preflight] = finished({"metadata": {"name": preflight}}, "Complete")
    seen = observed(RAW, jobs=jobs, planned=PLANNED, schedule=third.schedule, progress=third.progress)
    status = reconcile(seen, SETTINGS).status
    shown = {t["name"]: t.get("progress", {}).get("step") for t in status["trialStatuses"]}
    assert shown == {t.name: {trained[0]: 50, trained[1]: 20}.get(t.name) for t in PLANNED.plan.trials}
    assert status["liveProgress"]["percent"] == 17.5 and status["liveProgress"]["reporting"] == 2


def test_the_gauges_of_a_finished_ablation_go_away():
    from prometheus_client import REGISTRY

    from lora_ablation_operator import metrics

    labels = {"namespace": "ns", "ablation": "gauged"}
    metrics.record_progress("ns", "gauged", {"percent": 42.0, "reporting": 3, "etaSeconds": 90, "eta": "1m30s"})
    assert REGISTRY.get_sample_value("lora_ablation_progress_ratio", labels) == 0.42
    assert REGISTRY.get_sample_value("lora_ablation_eta_seconds", labels) == 90
    metrics.record_progress("ns", "gauged", {"percent": 50.0, "reporting": 0})  # no report: no ETA to show
    assert REGISTRY.get_sample_value("lora_ablation_eta_seconds", labels) is None
    metrics.record_progress("ns", "gauged", None)  # finished or deleted
    assert all(
        REGISTRY.get_sample_value(name, labels) is None
        for name in (
            "lora_ablation_progress_ratio",
            "lora_ablation_eta_seconds",
            "lora_ablation_trials_reporting_progress",
        )
    )


def test_storage_that_does_not_answer_keeps_the_last_progress(s3_bucket):
    endpoint, bucket = s3_bucket
    store = open_store(f"s3://{bucket}/ns/demo", endpoint, "us-east-1")
    name = next(t.name for t in PLANNED.plan.trials if not t.spec.is_baseline)
    store.write_json(f"{name}/progress.json", progress_doc(name, 30))
    clock = [0.0]
    cache = ResultCache(300.0, clock=lambda: clock[0])
    assert cache.progress.collect("uid", store, [name], {t.name: t for t in PLANNED.plan.trials})[name].step == 30
    unreachable = open_store(f"s3://{bucket}/ns/demo", f"http://127.0.0.1:{_free_port()}", "us-east-1", retries=1,
                             timeout=0.5)  # fmt: skip
    clock[0] = 31.0
    kept = cache.progress.collect("uid", unreachable, [name], {t.name: t for t in PLANNED.plan.trials})
    assert kept[name].step == 30  # what was known stays; the pass goes on
    assert cache.progress.collect("uid", store, [], {}) == {} and len(cache.progress) == 0  # no longer running
