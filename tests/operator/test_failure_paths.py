"""The pure side of the failure paths: pods that cannot start, refused Jobs, storage problems, the plan cache
and the result cache. No API server here; storage is a local directory."""

from __future__ import annotations

import json

from test_reconcile import NOW, SETTINGS, cond, finished, observed, result_for, run_preflight, spec

from lora_ablation.storage.open import open_store
from lora_ablation_operator import conditions as c
from lora_ablation_operator.collector import ResultCache, Seen, delete_results, preflight_problems
from lora_ablation_operator.observe import pod_problem, stuck_jobs
from lora_ablation_operator.planning import PlanCache
from lora_ablation_operator.reconcile import reconcile


def pod(job: str, phase: str = "Pending", waiting: str | None = None, scheduled: dict | None = None) -> dict:
    status: dict = {"phase": phase}
    if waiting:
        status["containerStatuses"] = [{"name": "trainer", "state": {"waiting": {"reason": waiting, "message": "m"}}}]
    if scheduled:
        status["conditions"] = [scheduled]
    return {"metadata": {"name": f"{job}-abc", "labels": {"job-name": job}}, "status": status}


def unschedulable(since: str) -> dict:
    return {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "no GPU",
            "lastTransitionTime": since}  # fmt: skip


def test_image_and_config_errors_are_stuck_at_once_unschedulable_only_after_a_while():
    assert "ImagePullBackOff: m" in pod_problem(pod("j", waiting="ImagePullBackOff"), NOW, 600)
    assert "CreateContainerConfigError" in pod_problem(pod("j", waiting="CreateContainerConfigError"), NOW, 600)
    assert pod_problem(pod("j", waiting="ContainerCreating"), NOW, 600) is None  # normal while starting
    assert pod_problem(pod("j", phase="Running", waiting="ImagePullBackOff"), NOW, 600) is None
    assert pod_problem(pod("j", scheduled=unschedulable("2026-11-23T11:59:00Z")), NOW, 600) is None
    assert "Unschedulable for 3600s: no GPU" in pod_problem(pod("j", scheduled=unschedulable("2026-11-23T11:00:00Z")),
                                                            NOW, 600)  # fmt: skip
    assert pod_problem({"metadata": 1, "status": {"phase": "Pending", "conditions": "x"}}, NOW, 0) is None


def test_stuck_jobs_maps_pods_to_their_jobs_and_ignores_strangers():
    pods = [pod("a", waiting="ErrImagePull"), pod("b"), {"metadata": {"name": "x"}, "status": {}}]
    assert list(stuck_jobs(pods, NOW, 600)) == ["a"]


def _trial_decision(**extra):
    raw = spec()
    pre, _ = run_preflight(raw)
    return raw, pre, reconcile(observed(raw, jobs=[pre], **extra), SETTINGS)


def test_a_refused_job_is_named_in_status_and_nothing_more_is_created():
    raw, pre, first = _trial_decision()
    refused = first.create[0]["metadata"]["name"]
    again = observed(raw, jobs=[pre])
    again.rejected = {refused: '403 Forbidden: jobs "x" is forbidden: exceeded quota: gpu'}
    decision = reconcile(again, SETTINGS)
    ready = cond(decision, c.READY)
    assert decision.create == [] and ready["reason"] == c.JOB_REJECTED and "exceeded quota" in ready["message"]
    entry = next(t for t in decision.status["trialStatuses"] if t["name"] == refused)
    assert entry["state"] == c.PENDING and "rejected" in entry["message"]
    assert ("Warning", c.JOB_REJECTED, ready["message"]) in decision.events
    # The same refusal seen again does not post the event again.
    again.status = decision.status
    assert not [e for e in reconcile(again, SETTINGS).events if e[1] == c.JOB_REJECTED]


def test_a_refused_preflight_is_reported():
    first = reconcile(observed(spec()), SETTINGS)
    name = first.create[0]["metadata"]["name"]
    again = observed(spec())
    again.rejected = {name: "422 Invalid: spec.template: bad"}
    decision = reconcile(again, SETTINGS)
    assert decision.create == [] and cond(decision, c.READY)["reason"] == c.JOB_REJECTED
    assert cond(decision, c.PROGRESSING)["status"] == "False"


def test_stuck_trials_are_counted_and_named():
    raw, pre, first = _trial_decision()
    jobs = [pre, *first.create]
    stuck = first.create[1]["metadata"]["name"]
    decision = reconcile(observed(raw, jobs=jobs, stuck={stuck: "pod x: ImagePullBackOff"}), SETTINGS)
    assert decision.status["trials"]["stuck"] == 1 and decision.status["trials"]["running"] == 2
    progressing = cond(decision, c.PROGRESSING)
    assert progressing["reason"] == c.TRIAL_STUCK and "ImagePullBackOff" in progressing["message"]
    assert ("Warning", c.TRIAL_STUCK, f"{stuck}: pod x: ImagePullBackOff") in decision.events


def test_storage_problems_start_nothing_and_keep_what_status_knew():
    raw, pre, first = _trial_decision()
    done = finished(first.create[0], "Complete")
    decision = reconcile(observed(raw, jobs=[pre, done], storage_problem="results storage denies access: x"),
                         SETTINGS)  # fmt: skip
    assert decision.create == [] and set(decision.status) == {"conditions"}  # trial states untouched
    assert cond(decision, c.READY)["reason"] == c.STORAGE_UNAVAILABLE


def test_plans_are_computed_once_per_generation():
    plans = PlanCache(size=2)
    first = plans.get("uid-1", 1, "demo", "ns", spec(), SETTINGS)
    assert plans.get("uid-1", 1, "demo", "ns", spec(), SETTINGS) is first
    edited = spec(search={"moduleSets": [["qkv"]]})
    second = plans.get("uid-1", 2, "demo", "ns", edited, SETTINGS)
    assert second is not first and len(plans) == 1  # the old generation is dropped
    plans.get("uid-2", 1, "other", "ns", spec(), SETTINGS)
    plans.get("uid-3", 1, "third", "ns", spec(), SETTINGS)
    assert len(plans) == 2
    plans.forget("uid-3")
    assert len(plans) == 1


def test_result_cache_rereads_only_a_rewritten_result(tmp_path):
    store = open_store(str(tmp_path))
    clock = [0.0]
    cache = ResultCache(recheck_seconds=60, clock=lambda: clock[0])
    good = result_for("t", 0.5).result.model_dump(mode="json", by_alias=True)
    store.write_json("t/result.json", good)
    assert cache.collect("u", store, ["t"])["t"].result.eval.score == 0.5
    store.write_text("t/result.json", "garbage")
    assert cache.collect("u", store, ["t"])["t"].result is not None  # not re-checked before recheck_seconds
    clock[0] = 61
    assert "not valid JSON" in cache.collect("u", store, ["t"])["t"].problem
    cache.forget("u")
    assert len(cache) == 0


def test_result_cache_trusts_a_listed_version_once_then_checks_it(tmp_path):
    store = open_store(str(tmp_path))
    clock = [0.0]
    cache = ResultCache(recheck_seconds=60, clock=lambda: clock[0])
    names = [f"t{i}" for i in range(20)]  # more than a handful: read in the pool
    for i, name in enumerate(names):
        store.write_json(f"{name}/result.json", result_for(name, i / 100).result.model_dump(mode="json", by_alias=True))
    listed = {k.split("/")[0]: v for k, v in store.list_versions().items()}
    seen = Seen(listed, at=-1.0)  # taken before any read: it spares first reads only
    got = cache.collect("u", store, names, seen=seen)
    assert [got[n].result.eval.score for n in names] == [i / 100 for i in range(20)]  # in order, each its own
    store.write_text("t3/result.json", "garbage")
    clock[0] = 61  # the listed version is stale now: the recheck asks storage, not the listing
    again = cache.collect("u", store, names, seen=seen)
    assert "not valid JSON" in again["t3"].problem and again["t4"].result.eval.score == 0.04


def test_preflight_report_is_distrusted(tmp_path):
    store = open_store(str(tmp_path))
    assert preflight_problems(store) is None
    store.write_text("preflight/preflight.json", '{"ok": false, "problems": ["a"]}')
    assert preflight_problems(store) == ["a"]
    store.write_text("preflight/preflight.json", json.dumps({"ok": False, "problems": ["p"] * 5000}))
    assert "not a valid preflight report" in preflight_problems(store)[0]
    store.write_text("preflight/preflight.json", "[" * 50000)
    assert "not valid JSON" in preflight_problems(store)[0]


def test_deleting_results_needs_only_a_usable_storage_spec():
    for bad in (None, "s3://x", {"uri": "s3://b/../x"}, {"uri": "file:///etc"}):
        try:
            delete_results(bad, "ns", "demo", SETTINGS)
        except ValueError as error:
            assert "storage" in str(error)
        else:
            raise AssertionError(f"{bad!r} was accepted")


def test_a_name_longer_than_a_label_value_is_invalid_before_any_job():
    # The CRD refuses it at apply; objects created before that rule existed still end in a condition.
    decision = reconcile(
        observed(spec(), name="x" * 64, now=NOW),
        SETTINGS,
    )
    ready = cond(decision, c.READY)
    assert decision.create == [] and ready["reason"] == c.INVALID_SPEC and "at most 63" in ready["message"]


def test_a_stuck_preflight_is_running_but_not_progressing():
    first = reconcile(observed(spec()), SETTINGS)
    job = first.create[0]
    decision = reconcile(observed(spec(), jobs=[job], stuck={job["metadata"]["name"]: "pod p: ErrImagePull"}),
                         SETTINGS)  # fmt: skip
    assert cond(decision, c.READY)["reason"] == c.PREFLIGHT_RUNNING
    progressing = cond(decision, c.PROGRESSING)
    assert progressing["status"] == "False" and progressing["reason"] == c.TRIAL_STUCK
    assert "ErrImagePull" in progressing["message"] and decision.create == []
    assert [e[1] for e in decision.events] == [c.TRIAL_STUCK]


def test_a_summary_storage_refuses_is_reported_so_the_ablation_does_not_look_finished(s3_endpoint):
    from lora_ablation_operator.planning import plan_for
    from lora_ablation_operator.reconcile_pass import store_summary
    from support.s3 import free_port

    raw = spec(storage={"uri": "s3://results/ablations", "endpoint": f"http://127.0.0.1:{free_port()}"})
    planned = plan_for("demo", "ns", raw, SETTINGS)
    pre, _ = run_preflight(raw)
    jobs = [pre] + [finished(j, "Complete") for j in reconcile(observed(raw, jobs=[pre]), SETTINGS).create]
    results = {j["metadata"]["name"]: result_for(j["metadata"]["name"], 0.5) for j in jobs[1:]}
    decision = reconcile(observed(raw, jobs=jobs, results=results), SETTINGS)
    assert decision.summary is not None
    problem = store_summary(decision, planned, "ns", "demo", SETTINGS)
    assert problem and problem.startswith("results storage unreachable")
    assert store_summary(decision, plan_for("demo", "ns", spec(storage={"uri": "file://x"}), SETTINGS), "ns", "demo",
                         SETTINGS) is None  # nothing to write to: not a storage problem  # fmt: skip


def test_a_failed_trial_quotes_what_the_trainer_wrote_to_its_termination_log():
    from lora_ablation_operator.observe import compact_pod, termination_messages

    raw = spec()
    pre, _ = run_preflight(raw)
    job = reconcile(observed(raw, jobs=[pre]), SETTINGS).create[0]
    name = job["metadata"]["name"]
    said = "loss is nan at optimizer step 17 (learning rate 0.2): lower training.learningRate"
    failed_pod = {"metadata": {"name": f"{name}-x", "labels": {"batch.kubernetes.io/job-name": name}},
                  "status": {"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {"terminated": {
                      "exitCode": 42, "reason": "Error", "message": said + "\n" + "x" * 5000}}}]}}  # fmt: skip
    cached = compact_pod(failed_pod)
    assert cached is not None
    assert len(cached["status"]["containerStatuses"][0]["state"]["terminated"]["message"]) <= 1024
    assert compact_pod({**failed_pod, "status": {"phase": "Succeeded", "containerStatuses": [
        {"name": "trainer", "state": {"terminated": {"exitCode": 0, "message": "done"}}}]}}) is None  # fmt: skip
    decision = reconcile(observed(raw, jobs=[pre, finished(job, "Failed", "PodFailurePolicy", "exit code 42")],
                                  terminations=termination_messages([cached])), SETTINGS)  # fmt: skip
    entry = next(t for t in decision.status["trialStatuses"] if t["name"] == name)
    assert entry["state"] == c.FAILED and "exit code 42" in entry["message"] and "optimizer step 17" in entry["message"]
