"""Inputs the API accepts, or a trial image can write, that once stopped an ablation (or the whole operator)
without a word: each ends in a condition or a trial state now. The operator runs for real (`kopf run`) against
the emulated API server and moto S3."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest

from support.cluster import assert_schema_valid, complete, manifest, pass_preflight, trial_jobs, wait_for
from support.s3 import free_port

pytestmark = pytest.mark.timeout(240)
# Kubernetes' own rules, written out here rather than imported from the code under test.
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def strict_json(text: str):
    def refuse(name):
        raise ValueError(f"{name} in JSON")

    return json.loads(text, parse_constant=refuse)


def states(cluster, name: str) -> dict[str, dict]:
    return {t["name"]: t for t in cluster.status(name).get("trialStatuses") or []}


def reason(cluster, name: str, type_: str = "Ready") -> str | None:
    return cluster.condition(name, type_).get("reason")


def started(cluster, name: str, count: int, **overrides) -> dict[str, dict]:
    cluster.apply(manifest(name, cluster.bucket, **overrides))
    pass_preflight(cluster, name)
    return wait_for(lambda: trial_jobs(cluster) if len(trial_jobs(cluster)) == count else None, what=f"{count} Jobs")


def test_non_finite_and_oversized_results_are_missing_and_the_summary_stays_json(operated):
    cluster = operated()
    jobs = started(cluster, "nan", 4, search={"moduleSets": [["o_proj"], ["all"], ["fc2"]]},
                   execution={"parallelism": 4, "maxFailedTrials": 5})  # fmt: skip
    by_kind = {next(k for k in ("base", "o-proj", "all", "fc2") if f"-{k}-" in n): (n, j) for n, j in jobs.items()}
    complete(cluster, by_kind["base"][1], 0.2)
    nan = cluster.result_doc(by_kind["o-proj"][1], 0.5)
    nan["eval"]["score"] = float("nan")  # a diverged trial: Python writes NaN
    cluster.put_result(by_kind["o-proj"][1], json.dumps(nan))
    inf = cluster.result_doc(by_kind["all"][1], 0.6)
    cluster.put_result(by_kind["all"][1], json.dumps(inf).replace('"tpotP95Ms": 2.0', '"tpotP95Ms": 1e999'))
    cluster.put_result(by_kind["fc2"][1], b" " * (5 * 1024 * 1024) + json.dumps(cluster.result_doc(
        by_kind["fc2"][1], 0.7)).encode())  # fmt: skip
    for name, _ in by_kind.values():
        cluster.finish_job(name)
    wait_for(lambda: reason(cluster, "nan") == "CompletedWithFailures", what="completion")
    got = states(cluster, "nan")
    assert got[by_kind["base"][0]]["state"] == "Succeeded"
    assert got[by_kind["o-proj"][0]]["state"] == "ResultsMissing" and "NaN" in got[by_kind["o-proj"][0]]["message"]
    assert got[by_kind["all"][0]]["state"] == "ResultsMissing" and "finite" in got[by_kind["all"][0]]["message"]
    assert got[by_kind["fc2"][0]]["state"] == "ResultsMissing" and "too large" in got[by_kind["fc2"][0]]["message"]
    summary = cluster.s3.get_object(Bucket=cluster.bucket, Key="ablations/default/nan/summary.json")["Body"].read()
    assert strict_json(summary.decode())["ablation"] == "nan"
    assert_schema_valid(cluster, "nan")


def test_a_result_rewritten_after_it_was_read_is_validated_again(operated):
    cluster = operated(result_recheck_seconds="0.2")
    jobs = started(cluster, "rewrite", 1, search={"moduleSets": [["o_proj"]]},
                   execution={"parallelism": 1, "maxFailedTrials": 5})  # fmt: skip
    (name, job), = jobs.items()
    complete(cluster, job, 0.3)
    wait_for(lambda: states(cluster, "rewrite")[name]["state"] == "Succeeded", what="the result counted")
    cluster.put_result(job, "garbage")  # overwritten after it was read: it must stop counting as a success
    wait_for(lambda: states(cluster, "rewrite")[name]["state"] == "ResultsMissing", what="the rewrite noticed")
    assert "not valid JSON" in states(cluster, "rewrite")[name]["message"]


def test_long_names_give_valid_distinct_readable_jobs(operated):
    cluster = operated()
    long_name = "team-" + "x" * 52 + "-study"  # 63 characters, the most a label value holds
    cluster.apply(manifest(long_name, cluster.bucket, execution={"parallelism": 4, "maxFailedTrials": 1}))
    (preflight,) = wait_for(lambda: cluster.jobs(component="preflight"), what="the preflight Job")
    pass_preflight(cluster, long_name)
    jobs = wait_for(lambda: trial_jobs(cluster) if len(trial_jobs(cluster)) == 4 else None, what="4 trial Jobs")
    for name in [preflight, *jobs]:
        assert len(name) <= 63 and DNS1123_LABEL.match(name), name
    for job in jobs.values():
        assert all(len(v) <= 63 and LABEL_VALUE.match(v) for v in job["metadata"]["labels"].values())
        assert job["metadata"]["labels"]["lora.ablation.dev/ablation"] == long_name
    readable = sorted(n.rsplit("-", 1)[0].split("-", 2)[-1] for n in jobs)  # the part a person reads
    assert any("o-proj-r16" in r for r in readable) and any("o-proj-fc2" in r for r in readable)
    assert any("all-r16-lora" in r for r in readable) and any(r.endswith("base") for r in readable)


def test_an_invalid_spec_that_removes_results_can_be_deleted(operated):
    cluster = operated()
    bad = manifest("bad-delete", cluster.bucket, search={"moduleSets": [["o-proj"]]})  # the CRD admits any string
    bad["spec"]["storage"]["retainOnDelete"] = False
    cluster.apply(bad)
    wait_for(lambda: reason(cluster, "bad-delete") == "InvalidSpec", what="InvalidSpec")
    cluster.custom.delete_namespaced_custom_object("lora.ablation.dev", "v1alpha1", "default", "loraablations",
                                                   "bad-delete")  # fmt: skip
    wait_for(lambda: not cluster.custom.list_namespaced_custom_object(
        "lora.ablation.dev", "v1alpha1", "default", "loraablations")["items"], what="the object gone")  # fmt: skip


def test_storage_down_is_reported_and_never_blocks_deletion(operated):
    cluster = operated(delete_retries="2", delete_retry_delay="0.3")
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    spec = manifest("down", cluster.bucket, search={"moduleSets": [["o_proj"]]})
    spec["spec"]["storage"].update(endpoint=closed, retainOnDelete=False)
    cluster.apply(spec)
    # Storage is the record: what already happened is unknown while it cannot be read, so nothing starts.
    ready = wait_for(lambda: cluster.condition("down") if reason(cluster, "down") == "StorageUnavailable" else None,
                     what="StorageUnavailable")  # fmt: skip
    assert "unreachable" in ready["message"] and closed in ready["message"]
    assert cluster.jobs() == {}, "no Job starts while the record cannot be read"
    cluster.custom.delete_namespaced_custom_object("lora.ablation.dev", "v1alpha1", "default", "loraablations", "down")
    wait_for(lambda: not cluster.custom.list_namespaced_custom_object(
        "lora.ablation.dev", "v1alpha1", "default", "loraablations")["items"], what="the object gone")  # fmt: skip
    assert "ResultsKept" in cluster.events("down")


def test_a_bucket_the_operator_cannot_use_is_access_denied(operated):
    cluster = operated()
    spec = manifest("denied", cluster.bucket, search={"moduleSets": [["o_proj"]]})
    spec["spec"]["storage"]["uri"] = "s3://no-such-bucket-here/ablations"
    cluster.apply(spec)
    ready = wait_for(lambda: cluster.condition("denied") if reason(cluster, "denied") == "StorageUnavailable"
                     else None, what="StorageUnavailable")  # fmt: skip
    assert "denies access" in ready["message"] and "no-such-bucket-here" in ready["message"]
    assert "StorageUnavailable" in cluster.events("denied")
    assert cluster.jobs() == {}


def _pod(job: str, status: dict) -> tuple[dict, dict]:
    labels = {"lora.ablation.dev/ablation": "stuck", "batch.kubernetes.io/job-name": job}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{job}-x1", "labels": labels},
            "spec": {"containers": [{"name": "trainer", "image": "trainer:test"}]}}, {"status": status}  # fmt: skip


def test_pods_that_cannot_start_make_their_trial_stuck(operated):
    import kubernetes

    cluster = operated(unschedulable_after="0")
    jobs = sorted(started(cluster, "stuck", 2, search={"moduleSets": [["o_proj"]]}))
    core = kubernetes.client.CoreV1Api()
    waiting = {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "trainer:test"'}
    unschedulable = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                     "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                     "lastTransitionTime": "2026-01-01T00:00:00Z"}  # fmt: skip
    pulling = {"name": "trainer", "image": "trainer:test", "imageID": "", "ready": False, "restartCount": 0,
               "state": {"waiting": waiting}}  # fmt: skip
    pod_states = {jobs[0]: {"phase": "Pending", "containerStatuses": [pulling]},
                  jobs[1]: {"phase": "Pending", "conditions": [unschedulable]}}  # fmt: skip
    for job, status in pod_states.items():
        pod, pod_status = _pod(job, status)
        core.create_namespaced_pod("default", pod)
        core.patch_namespaced_pod_status(pod["metadata"]["name"], "default", pod_status, _preload_content=False)
    wait_for(lambda: all(states(cluster, "stuck")[j]["state"] == "Stuck" for j in jobs), what="Stuck trials")
    got = states(cluster, "stuck")
    assert "ImagePullBackOff" in got[jobs[0]]["message"] and "Insufficient nvidia.com/gpu" in got[jobs[1]]["message"]
    assert reason(cluster, "stuck", "Progressing") == "TrialStuck"
    assert cluster.status("stuck")["trials"]["stuck"] == 2
    assert cluster.trial_events("stuck", "TrialStuck") == 2
    assert_schema_valid(cluster, "stuck")


def _gauge(port: int, state: str) -> float | None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found = re.search(rf'^lora_ablation_trials{{state="{state}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else None


def test_deleting_an_ablation_drops_its_metric_series(operated):
    port = free_port()
    cluster = operated(metrics_port=str(port))
    jobs = started(cluster, "metrics", 2, search={"moduleSets": [["o_proj"]]})
    for job in jobs.values():
        complete(cluster, job, 0.4)
    wait_for(lambda: _gauge(port, "succeeded") == 2.0, what="the succeeded gauge")
    cluster.custom.delete_namespaced_custom_object("lora.ablation.dev", "v1alpha1", "default", "loraablations",
                                                   "metrics")  # fmt: skip
    wait_for(lambda: _gauge(port, "succeeded") == 0.0, what="the series dropped with the object")


def test_jobs_carry_only_the_operators_labels(operated):
    cluster = operated()
    spec = manifest("labelled", cluster.bucket, search={"moduleSets": [["o_proj"]]})
    spec["metadata"]["labels"] = {"app.kubernetes.io/instance": "users-argo-app", "team": "nlp"}
    cluster.apply(spec)
    pass_preflight(cluster, "labelled")
    jobs = wait_for(lambda: trial_jobs(cluster) if len(trial_jobs(cluster)) == 2 else None, what="2 trial Jobs")
    for job in [*jobs.values(), *cluster.jobs(component="preflight").values()]:
        labels = job["metadata"]["labels"]
        assert "app.kubernetes.io/instance" not in labels and "team" not in labels, labels
        assert job["metadata"]["ownerReferences"][0]["name"] == "labelled"


def test_a_grid_over_the_operators_limit_is_invalid_and_starts_nothing(operated):
    cluster = operated(max_trials="3")
    cluster.apply(manifest("huge", cluster.bucket))  # 4 trials
    ready = wait_for(lambda: cluster.condition("huge") or None, what="a Ready condition")
    assert ready["reason"] == "InvalidSpec" and "4 trials" in ready["message"] and "at most 3" in ready["message"]
    assert cluster.jobs() == {}


def test_a_refused_job_is_reported_with_the_api_message_and_retried(operated, kube_api):
    cluster = operated()
    quota = ('jobs "{}" is forbidden: exceeded quota: gpu-quota, requested: nvidia.com/gpu=1, used: '
             'nvidia.com/gpu=4, limited: nvidia.com/gpu=4')  # fmt: skip
    refusal = kube_api.refuse("jobs", when=lambda job: job["metadata"]["labels"].get("app.kubernetes.io/component")
                              == "trial", message=lambda job: quota.format(job["metadata"]["name"]))  # fmt: skip
    cluster.apply(manifest("quota", cluster.bucket, search={"moduleSets": [["o_proj"]]}))
    pass_preflight(cluster, "quota")
    ready = wait_for(lambda: cluster.condition("quota") if reason(cluster, "quota") == "JobRejected" else None,
                     what="JobRejected")  # fmt: skip
    assert "403" in ready["message"] and "exceeded quota: gpu-quota" in ready["message"]
    pending = [t for t in states(cluster, "quota").values() if "rejected" in (t.get("message") or "")]
    assert pending and all(t["state"] == "Pending" for t in pending)
    assert trial_jobs(cluster) == {} and cluster.events("quota").count("JobRejected") == 1
    refusal.cancel()  # the quota was raised: the next reconcile creates the Jobs
    wait_for(lambda: len(trial_jobs(cluster)) == 2, what="the Jobs created once allowed")
    wait_for(lambda: reason(cluster, "quota") == "TrialsRunning", what="the rejection cleared")


@pytest.mark.parametrize("uri", ["s3://bucket/../x", "s3://b-1/a//b"])
def test_a_storage_prefix_that_leaves_its_root_is_refused_at_apply(operated, uri):
    from kubernetes.client.exceptions import ApiException

    cluster = operated()
    bad = manifest("escape", cluster.bucket)
    bad["spec"]["storage"]["uri"] = uri
    with pytest.raises(ApiException) as refused:
        cluster.apply(bad)
    assert refused.value.status == 422 and "spec.storage.uri" in refused.value.body
    assert cluster.jobs() == {}
