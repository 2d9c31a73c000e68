"""The operator running for real (`kopf run`) against the emulated Kubernetes API over HTTP and moto S3.
The test plays the Job controller (patching Job status) and the trainer (writing result.json)."""

from __future__ import annotations

import copy
import time

import pytest
from kubernetes.client.exceptions import ApiException

from support.cluster import assert_schema_valid, complete, manifest, pass_preflight, trial_jobs, wait_for

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def cluster(operated):
    return operated()


def test_happy_path_respects_parallelism_and_reports_the_answer(cluster):
    cluster.apply(manifest("study", cluster.bucket))
    pass_preflight(cluster, "study")
    jobs = wait_for(lambda: trial_jobs(cluster) if len(trial_jobs(cluster)) == 2 else None, what="2 trial Jobs")
    # What the operator wrote: ownership, labels, the trial contract.
    owner = cluster.ablation("study")["metadata"]["uid"]
    for job in jobs.values():
        refs = job["metadata"]["ownerReferences"]
        assert refs[0]["uid"] == owner and refs[0]["kind"] == "LoraAblation" and refs[0]["controller"] is True
        assert job["metadata"]["labels"]["lora.ablation.dev/ablation"] == "study"
    scores = {"base": 0.1, "o-proj-r16": 0.6, "o-proj-fc2": 0.62, "all-r16": 0.64}
    tpots = {"base": 2.0, "o-proj-r16": 2.1, "o-proj-fc2": 2.6, "all-r16": 3.0}
    done: set[str] = set()
    while len(done) < 4:
        running = {n: j for n, j in trial_jobs(cluster).items() if n not in done}
        assert len(running) <= 2, f"parallelism exceeded: {sorted(running)}"
        name, job = next(iter(sorted(running.items())))
        key = next(k for k in scores if f"-{k}" in name)
        complete(cluster, job, scores[key], tpots[key])
        done.add(name)
        if len(done) < 4:
            wait_for(lambda: len(trial_jobs(cluster)) >= min(len(done) + 2, 4), what="the next trial Job")
    ready = wait_for(lambda: cluster.condition("study") if cluster.condition("study").get("status") == "True" else None,
                     what="Ready=True")  # fmt: skip
    status = cluster.status("study")
    assert ready["reason"] == "Completed" and status["progress"] == "4/4"
    assert status["trials"]["succeeded"] == 4 and status["bestConfig"] == "all r16 lora"
    assert status["recommendation"]["accuracyFirst"] == "all r16 lora"
    assert status["recommendation"]["balanced"] == "o_proj+fc2 r16 lora"  # within 0.02 of the best, faster
    assert [e["config"] for e in status["leaderboard"]][:1] == ["all r16 lora"]
    assert cluster.object_keys("ablations/default/study/summary")  # summary.json and summary.md
    assert_schema_valid(cluster, "study")
    assert len(cluster.jobs()) == 5  # 4 trials + preflight, nothing duplicated
    assert cluster.trial_events("study", "TrialStarted") == 4 and cluster.trial_events("study", "TrialSucceeded") == 4
    assert "Completed" in cluster.events("study")


def test_invalid_spec_creates_no_job(cluster):
    bad = manifest("bad", cluster.bucket)
    bad["spec"]["search"]["ranks"] = [8, 8]  # the CRD's list-type set refuses this at apply...
    with pytest.raises(ApiException) as refused:
        cluster.apply(bad)
    assert refused.value.status == 422 and "spec.search.ranks" in refused.value.body
    bad["spec"]["search"] = {"moduleSets": [["o_proj"], ["o-proj"]]}  # ...this only the operator can
    cluster.apply(bad)
    ready = wait_for(lambda: cluster.condition("bad") or None, what="a Ready condition")
    assert ready["status"] == "False" and ready["reason"] == "InvalidSpec"
    assert "spec.search.moduleSets" in ready["message"]
    assert cluster.jobs() == {}


def test_failed_preflight_creates_no_gpu_job(cluster):
    cluster.apply(manifest("pre", cluster.bucket))
    (name,) = wait_for(lambda: cluster.jobs(component="preflight"), what="the preflight Job")
    problem = "spec.search.moduleSets[2]: group 'fc2' matches no weight in this model"
    cluster.s3.put_object(Bucket=cluster.bucket, Key="ablations/default/pre/preflight/preflight.json",
                          Body=f'{{"ok": false, "problems": ["{problem}"]}}'.encode())  # fmt: skip
    cluster.finish_job(name, "Failed", "PodFailurePolicy", "exit code 42")
    ready = wait_for(lambda: cluster.condition("pre") if cluster.condition("pre").get("reason") == "PreflightFailed"
                     else None, what="PreflightFailed")  # fmt: skip
    assert problem in ready["message"]
    assert trial_jobs(cluster) == {}


def test_failures_past_the_limit_stop_the_ablation(cluster):
    spec = manifest("fails", cluster.bucket)
    spec["spec"]["execution"] = {"parallelism": 3, "maxFailedTrials": 0}
    cluster.apply(spec)
    pass_preflight(cluster, "fails")
    jobs = wait_for(lambda: trial_jobs(cluster) if len(trial_jobs(cluster)) == 3 else None, what="3 trial Jobs")
    first, *_others = sorted(jobs)
    cluster.finish_job(first, "Failed", "PodFailurePolicy", "Container trainer failed with exit code 42")
    wait_for(lambda: set(trial_jobs(cluster)) == {first}, what="running trials stopped")
    # The Jobs are stopped and the status patched in the same pass; either may be seen first.
    wait_for(lambda: cluster.condition("fails")["reason"] == "TooManyFailedTrials", what="TooManyFailedTrials")
    failed = next(t for t in cluster.status("fails")["trialStatuses"] if t["name"] == first)
    assert failed["state"] == "Failed" and "exit code 42" in failed["message"]


def test_results_missing_is_not_success(cluster):
    spec = manifest("missing", cluster.bucket)
    spec["spec"]["search"] = {"moduleSets": [["o_proj"]]}
    spec["spec"]["execution"] = {"parallelism": 2, "maxFailedTrials": 5}
    cluster.apply(spec)
    pass_preflight(cluster, "missing")
    jobs = wait_for(lambda: trial_jobs(cluster) if len(trial_jobs(cluster)) == 2 else None, what="2 trial Jobs")
    base, lora = sorted(jobs, key=lambda n: "base" not in n)
    complete(cluster, jobs[base], 0.2)
    cluster.write_result(jobs[lora], 0.5, valid=False)  # a truncated result.json
    cluster.finish_job(lora)
    wait_for(lambda: cluster.condition("missing").get("reason") == "CompletedWithFailures", what="completion")
    states = {t["name"]: t for t in cluster.status("missing")["trialStatuses"]}
    assert states[lora]["state"] == "ResultsMissing" and "not valid JSON" in states[lora]["message"]
    assert states[base]["state"] == "Succeeded"
    assert cluster.status("missing")["trials"]["resultsMissing"] == 1


def test_operator_killed_and_restarted_neither_duplicates_nor_loses(cluster):
    cluster.apply(manifest("restart", cluster.bucket))
    pass_preflight(cluster, "restart")
    jobs = wait_for(lambda: trial_jobs(cluster) if len(trial_jobs(cluster)) == 2 else None, what="2 trial Jobs")
    complete(cluster, jobs[sorted(jobs)[0]], 0.3)
    cluster.kill_operator()  # the result is in storage and the Job is done; the status does not know yet
    cluster.start_operator()
    wait_for(lambda: cluster.status("restart").get("trials", {}).get("succeeded") == 1, what="the result counted")
    cluster.kill_operator()
    cluster.start_operator()
    while cluster.condition("restart").get("reason") != "Completed":
        for job in trial_jobs(cluster).values():
            if not (job.get("status") or {}).get("conditions"):
                complete(cluster, job, 0.5)
        wait_for(lambda: cluster.condition("restart").get("reason") == "Completed"
                 or any(not (j.get("status") or {}).get("conditions") for j in trial_jobs(cluster).values()),
                 what="progress")  # fmt: skip
    assert len(trial_jobs(cluster)) == 4, "a restart must never create a second Job for a trial"
    assert cluster.status("restart")["trials"]["succeeded"] == 4
    # Each trial's start and success is told once, although two of the processes never saw it happen.
    assert cluster.trial_events("restart", "TrialStarted") == 4
    assert cluster.trial_events("restart", "TrialSucceeded") == 4


def test_suspend_and_resume(cluster):
    cluster.apply(manifest("pause", cluster.bucket))
    pass_preflight(cluster, "pause")
    wait_for(lambda: len(trial_jobs(cluster)) == 2, what="2 trial Jobs")
    cluster.patch_spec("pause", {"execution": {"parallelism": 2, "maxFailedTrials": 1, "suspend": True}})
    wait_for(lambda: all(j["spec"].get("suspend") for j in trial_jobs(cluster).values()), what="Jobs suspended")
    # The Jobs are patched, then the status, in one pass: either may be seen first.
    wait_for(lambda: cluster.condition("pause", "Suspended")["status"] == "True", what="Suspended=True")
    assert len(trial_jobs(cluster)) == 2
    cluster.patch_spec("pause", {"execution": {"parallelism": 2, "maxFailedTrials": 1, "suspend": False}})
    wait_for(lambda: not any(j["spec"].get("suspend") for j in trial_jobs(cluster).values()), what="Jobs resumed")
    wait_for(lambda: cluster.condition("pause", "Suspended")["status"] == "False", what="Suspended=False")


def test_spec_edit_replans_without_touching_kept_trials(cluster):
    spec = manifest("edit", cluster.bucket)
    spec["spec"]["execution"] = {"parallelism": 4, "maxFailedTrials": 1}
    cluster.apply(spec)
    pass_preflight(cluster, "edit")
    before = wait_for(lambda: trial_jobs(cluster) if len(trial_jobs(cluster)) == 4 else None, what="4 trial Jobs")
    edited = copy.deepcopy(spec["spec"]["search"])
    edited["moduleSets"] = [["o_proj"], ["qkv"]]
    cluster.patch_spec("edit", {"search": edited})
    pass_preflight(cluster, "edit", first=False)  # the module sets changed: checked again
    after = wait_for(lambda: trial_jobs(cluster) if any("-qkv-" in n for n in trial_jobs(cluster)) and
                     not any("-all-" in n or "fc2" in n for n in trial_jobs(cluster)) else None,
                     what="the re-planned Jobs")  # fmt: skip
    kept = {n for n in before if "-base-" in n or "-o-proj-r16" in n}
    assert kept <= set(after)
    assert {n: after[n]["metadata"]["uid"] for n in kept} == {n: before[n]["metadata"]["uid"] for n in kept}
    assert cluster.status("edit")["observedGeneration"] == cluster.ablation("edit")["metadata"]["generation"]


def test_deletion_removes_results_only_when_asked(cluster):
    spec = manifest("gone", cluster.bucket)
    spec["spec"]["storage"]["retainOnDelete"] = False
    spec["spec"]["search"] = {"moduleSets": [["o_proj"]]}
    cluster.apply(spec)
    pass_preflight(cluster, "gone")
    jobs = wait_for(lambda: trial_jobs(cluster) if len(trial_jobs(cluster)) == 2 else None, what="2 trial Jobs")
    for job in jobs.values():
        complete(cluster, job, 0.4)
    wait_for(lambda: cluster.condition("gone").get("reason") == "Completed", what="completion")
    assert cluster.object_keys("ablations/default/gone/")
    cluster.custom.delete_namespaced_custom_object("lora.ablation.dev", "v1alpha1", "default", "loraablations", "gone")
    wait_for(lambda: not cluster.object_keys("ablations/default/gone/"), what="results removed")


def test_the_operator_reacts_to_watch_events_without_lists_or_idle_writes(operated, kube_api):
    # A resync far longer than the test: everything below happens because a watch event said so.
    cluster = operated(interval=3600.0)
    cluster.apply(manifest("watched", cluster.bucket, search={"moduleSets": [["o_proj"]], "ranks": [16]}))
    pass_preflight(cluster, "watched")
    jobs = wait_for(lambda: trial_jobs(cluster) if len(trial_jobs(cluster)) == 2 else None, what="2 trial Jobs")
    for job in jobs.values():
        complete(cluster, job, 0.5)
    wait_for(lambda: cluster.condition("watched").get("reason") == "Completed", what="Completed")

    def ours(verb: str, resource: str) -> int:
        return kube_api.emulator.tally["lora-ablation-operator", verb, resource]

    assert sum(n for (client, verb, _), n in kube_api.emulator.tally.items()
               if client == "lora-ablation-operator" and verb == "LIST") == 0  # fmt: skip
    patches, events = ours("PATCH", "loraablations/status"), ours("CREATE", "events")
    # A Job event that changes nothing the operator reads: a pass runs, and writes nothing.
    name = sorted(jobs)[0]
    cluster.batch.patch_namespaced_job(name, "default", {"metadata": {"annotations": {"touched": "yes"}}})
    resource_version = kube_api.emulator.resource_version
    wait_for(lambda: kube_api.emulator.resource_version >= resource_version, what="the touch stored")
    time.sleep(1.0)  # the batch window and a pass, several times over
    assert (ours("PATCH", "loraablations/status"), ours("CREATE", "events")) == (patches, events)
    assert cluster.trial_events("watched", "TrialSucceeded") == 2
