"""The pure reconcile: what it decides for each observed situation. No API server, no storage."""

from __future__ import annotations

import copy

import pytest

from lora_ablation.api.trial import TrialResult
from lora_ablation.storage.results import ResultRead
from lora_ablation_operator import conditions as c
from lora_ablation_operator.jobs import TRIAL_LABEL, preflight_name
from lora_ablation_operator.observe import completed_trials
from lora_ablation_operator.policy import Policy
from lora_ablation_operator.reconcile import Observed, reconcile
from lora_ablation_operator.settings import Settings
from support.reconcile_cases import NOW, SETTINGS, cond, finished, observed, run_preflight, spec


def result_for(name: str, score: float) -> ResultRead:
    return ResultRead(TrialResult.model_validate({
        "ablation": "demo", "trial": name, "dataset": "med", "modules": ["o_proj"], "rank": 16, "variant": "lora",
        "eval": {"metric": "accuracy", "score": score, "samples": 10},
    }))  # fmt: skip


def test_invalid_spec_creates_nothing_and_names_the_field():
    raw = spec()
    raw["search"]["ranks"] = [0]
    decision = reconcile(observed(raw), SETTINGS)
    assert decision.create == [] and decision.finished
    ready = cond(decision, c.READY)
    assert ready["status"] == "False" and ready["reason"] == c.INVALID_SPEC
    assert "spec.search.ranks[0]" in ready["message"]
    assert decision.events == [("Warning", c.INVALID_SPEC, ready["message"])]


def test_file_uris_are_rejected_in_a_cluster():
    raw = spec(storage={"uri": "file://results"})
    decision = reconcile(observed(raw), SETTINGS)
    assert decision.create == [] and cond(decision, c.READY)["reason"] == c.INVALID_SPEC


def test_preflight_comes_first_and_alone():
    decision = reconcile(observed(spec()), SETTINGS)
    assert [j["metadata"]["labels"]["app.kubernetes.io/component"] for j in decision.create] == ["preflight"]
    assert cond(decision, c.READY)["reason"] == c.PREFLIGHT_RUNNING
    assert decision.status["progress"] == "0/3"
    # The same observation again (the Job exists now) creates nothing more.
    again = reconcile(observed(spec(), jobs=decision.create), SETTINGS)
    assert again.create == []


def test_trials_that_cannot_fit_the_gpu_are_warned_about_before_any_trial_job():
    raw = spec(execution={"parallelism": 2, "resources": {"gpuMemory": "24Gi"}}, training={"maxSeqLength": 8192})
    decision = reconcile(observed(raw), SETTINGS)
    assert [j["metadata"]["labels"]["app.kubernetes.io/component"] for j in decision.create] == ["preflight"]
    warnings = decision.status["warnings"]
    assert len(warnings) == 2 and warnings[0].startswith("o_proj r16 lora: needs about ")
    assert "but the GPU has 24 GiB (execution.resources.gpuMemory 24Gi)" in warnings[0]
    assert [e for e in decision.events if e[1] == c.MEMORY_ESTIMATE] == [("Warning", c.MEMORY_ESTIMATE, w)
                                                                         for w in warnings]  # fmt: skip
    # Said once: the next pass keeps the status and sends no event; a roomier GPU clears it.
    again = reconcile(observed(raw, jobs=decision.create, status=decision.status), SETTINGS)
    assert again.status["warnings"] == warnings and not [e for e in again.events if e[1] == c.MEMORY_ESTIMATE]
    raw["execution"]["resources"]["gpuMemory"] = "1000Gi"
    assert reconcile(observed(raw, status=decision.status), SETTINGS).status["warnings"] is None


def test_failed_preflight_ends_the_ablation_with_its_problems():
    raw = spec()
    job, _ = run_preflight(raw)
    failed = finished(job, "Failed", "PodFailurePolicy", "exit code 42")
    problems = ["spec.search.moduleSets[1]: module 'c_attn' matches no weight"]
    decision = reconcile(observed(raw, jobs=[failed], preflight_problems=problems), SETTINGS)
    assert decision.create == [] and decision.finished
    ready = cond(decision, c.READY)
    assert ready["reason"] == c.PREFLIGHT_FAILED and "c_attn" in ready["message"]


def test_trials_respect_parallelism_and_plan_order():
    raw = spec(search={"moduleSets": [["o_proj"], ["fc2"], ["qkv"]]})
    pre, _ = run_preflight(raw)
    decision = reconcile(observed(raw, jobs=[pre]), SETTINGS)
    names = [j["metadata"]["name"] for j in decision.create]
    assert len(names) == 2 and names[0].startswith("demo-med-base-") and "o-proj" in names[1]
    assert decision.status["trials"] == {"total": 4, "pending": 2, "running": 2, "stuck": 0, "succeeded": 0,
                                         "failed": 0, "resultsMissing": 0, "eliminated": 0, "skipped": 0}  # fmt: skip
    # One finishes: exactly one more starts.
    done = finished(decision.create[0], "Complete")
    later = reconcile(observed(raw, jobs=[pre, done, decision.create[1]],
                               results={names[0]: result_for(names[0], 0.2)}), SETTINGS)  # fmt: skip
    assert len(later.create) == 1 and "fc2" in later.create[0]["metadata"]["name"]
    assert ("Normal", "TrialSucceeded", f"{names[0]}: accuracy 0.2000") in later.events


def test_results_missing_is_not_success():
    raw = spec(search={"moduleSets": [["o_proj"]]})
    pre, _ = run_preflight(raw)
    first = reconcile(observed(raw, jobs=[pre]), SETTINGS)
    jobs = [finished(j, "Complete") for j in first.create]
    names = [j["metadata"]["name"] for j in jobs]
    reads = {names[0]: result_for(names[0], 0.1), names[1]: ResultRead(None, "result.json is not valid JSON")}
    decision = reconcile(observed(raw, jobs=[pre, *jobs], results=reads), SETTINGS)
    states = {t["name"]: t for t in decision.status["trialStatuses"]}
    assert states[names[1]]["state"] == c.RESULTS_MISSING
    assert states[names[1]]["message"] == "result.json is not valid JSON"
    assert decision.status["trials"]["resultsMissing"] == 1
    assert cond(decision, c.DEGRADED)["status"] == "True"
    assert cond(decision, c.READY)["reason"] == c.COMPLETED_WITH_FAILURES


def test_too_many_failures_stops_running_trials():
    raw = spec(
        search={"moduleSets": [["o_proj"], ["fc2"], ["qkv"]]}, execution={"parallelism": 3, "maxFailedTrials": 0}
    )
    pre, _ = run_preflight(raw)
    first = reconcile(observed(raw, jobs=[pre]), SETTINGS)
    failed = finished(first.create[0], "Failed", "PodFailurePolicy", "exit code 42")
    decision = reconcile(observed(raw, jobs=[pre, failed, *first.create[1:]]), SETTINGS)
    assert decision.create == []
    assert sorted(decision.delete) == sorted(j["metadata"]["name"] for j in first.create[1:])
    assert cond(decision, c.READY)["reason"] == c.TOO_MANY_FAILURES and decision.finished
    failed_status = next(t for t in decision.status["trialStatuses"] if t["state"] == c.FAILED)
    assert failed_status["message"].startswith("permanent error (trainer exit code 42)")


def test_suspend_and_resume():
    raw = spec(search={"moduleSets": [["o_proj"], ["fc2"]]})
    pre, _ = run_preflight(raw)
    first = reconcile(observed(raw, jobs=[pre]), SETTINGS)
    paused = copy.deepcopy(raw)
    paused["execution"]["suspend"] = True
    decision = reconcile(observed(paused, jobs=[pre, *first.create]), SETTINGS)
    assert decision.create == [] and sorted(decision.suspend) == sorted(j["metadata"]["name"] for j in first.create)
    assert cond(decision, c.SUSPENDED)["status"] == "True"
    suspended_jobs = [copy.deepcopy(j) for j in first.create]
    for job in suspended_jobs:
        job["spec"]["suspend"] = True
    resumed = reconcile(observed(raw, jobs=[pre, *suspended_jobs]), SETTINGS)
    assert sorted(resumed.resume) == sorted(j["metadata"]["name"] for j in first.create)
    assert resumed.create == []  # the resumed ones still fill the parallelism


def test_spec_edit_keeps_unchanged_trials_and_stops_removed_ones():
    raw = spec(search={"moduleSets": [["o_proj"], ["fc2"]]}, execution={"parallelism": 3})
    pre, _ = run_preflight(raw)
    first = reconcile(observed(raw, jobs=[pre]), SETTINGS)
    edited = copy.deepcopy(raw)
    edited["search"]["moduleSets"] = [["o_proj"], ["qkv"]]
    pre2 = finished(reconcile(observed(edited), SETTINGS).create[0], "Complete")
    decision = reconcile(observed(edited, jobs=[pre, pre2, *first.create], generation=2), SETTINGS)
    fc2 = [j["metadata"]["name"] for j in first.create if "fc2" in j["metadata"]["name"]]
    assert decision.delete == fc2
    assert [j["metadata"]["name"] for j in decision.create if "qkv" in j["metadata"]["name"]]
    kept = {j["metadata"]["name"] for j in first.create} - set(fc2)
    assert not kept & {j["metadata"]["name"] for j in decision.create}
    assert decision.status["observedGeneration"] == 2


def test_completion_writes_the_summary_and_recommendation():
    raw = spec(search={"moduleSets": [["o_proj"], ["fc2"]]}, execution={"parallelism": 5})
    pre, _ = run_preflight(raw)
    first = reconcile(observed(raw, jobs=[pre]), SETTINGS)
    names = [j["metadata"]["name"] for j in first.create]
    reads = {n: result_for(n, s) for n, s in zip(names, (0.1, 0.6, 0.5), strict=True)}
    reads[names[2]].result.modules = ["fc2"]
    jobs = [finished(j, "Complete") for j in first.create]
    decision = reconcile(observed(raw, jobs=[pre, *jobs], results=reads), SETTINGS)
    assert decision.finished and cond(decision, c.READY)["status"] == "True"
    assert cond(decision, c.READY)["reason"] == c.COMPLETED
    assert decision.status["progress"] == "3/3"
    assert decision.status["bestConfig"] == "o_proj r16 lora"
    assert decision.status["recommendation"]["accuracyFirst"] == "o_proj r16 lora"
    assert decision.summary is not None and decision.status["leaderboard"][0]["config"] == "o_proj r16 lora"
    assert ("Normal", c.COMPLETED, cond(decision, c.READY)["message"]) in decision.events


def test_reconcile_is_idempotent_and_transition_times_stay():
    raw = spec()
    first = reconcile(observed(raw), SETTINGS)
    again = reconcile(observed(raw, jobs=first.create, status=first.status), SETTINGS)
    later = Observed(
        **{**observed(raw, jobs=first.create, status=again.status).__dict__, "now": "2026-11-23T13:00:00Z"}
    )
    third = reconcile(later, SETTINGS)
    assert third.create == [] and third.delete == []
    assert cond(third, c.READY)["lastTransitionTime"] == NOW


def test_status_list_is_capped():
    raw = spec(search={"moduleSets": [["o_proj"], ["fc2"], ["qkv"]]})
    pre, _ = run_preflight(raw)
    decision = reconcile(observed(raw, jobs=[pre]), Settings(max_trial_statuses=2, policy=Policy.open()))
    assert len(decision.status["trialStatuses"]) == 2 and decision.status["trialStatusesTruncated"] is True
    assert decision.status["trials"]["total"] == 4
    assert len(decision.all_trial_statuses) == 4  # the whole list goes to storage (trials.json)


@pytest.mark.parametrize("kind", ["Complete", "Failed"])
def test_completed_trials_only_lists_completed_trial_jobs(kind):
    raw = spec()
    pre, _ = run_preflight(raw)
    first = reconcile(observed(raw, jobs=[pre]), SETTINGS)
    jobs = {j["metadata"]["name"]: finished(j, kind) for j in first.create}
    jobs[pre["metadata"]["name"]] = pre
    expected = [n for n, j in jobs.items() if j["metadata"]["labels"].get(TRIAL_LABEL)] if kind == "Complete" else []
    assert completed_trials(jobs) == expected
    assert (
        preflight_name("demo", __import__("lora_ablation.api", fromlist=["parse_spec"]).parse_spec(raw)) not in expected
    )
