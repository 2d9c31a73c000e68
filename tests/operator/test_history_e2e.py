"""History is recorded once and never rewritten: edits, deleted Jobs and operator restarts leave every state,
decision and GPU-hour as it was. The operator runs for real against the emulated API server and moto S3; the
test plays the Job controller and the trainer. Each case reproduces what an earlier operator got wrong."""

from __future__ import annotations

import json

import pytest

from support.cluster import Cluster, manifest, pass_preflight, trial_jobs, wait_for

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]
SETS = [["o_proj"], ["o_proj", "fc2"], ["qkv"], ["all"]]
SCORES = {"o-proj-r16": 0.2, "o-proj-fc2": 0.3, "qkv-r16": 0.6, "all-r16": 0.7, "fc1-r16": 0.9}


def trials_of(job: dict) -> list[dict]:
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    if "LORA_ABLATION_TRIALS" in env:
        return json.loads(env["LORA_ABLATION_TRIALS"])["trials"]
    return [json.loads(env["LORA_ABLATION_TRIAL"])]


def put(cluster: Cluster, trial: dict, file: str, doc: dict) -> None:
    key = trial["storage"]["uri"].split("/", 3)[3] + "/" + file
    cluster.s3.put_object(Bucket=cluster.bucket, Key=key, Body=json.dumps(doc).encode())


def stage_one(cluster: Cluster, trial: dict, score: float) -> None:
    put(cluster, trial, "stage-one.json", {"trial": trial["name"], "dataset": trial["dataset"]["name"], "step": 2,
                                           "steps": 8, "metric": "accuracy", "score": score, "samples": 20,
                                           "computeSeconds": 40.0})  # fmt: skip


def result(cluster: Cluster, trial: dict, score: float, seconds: float = 160.0) -> None:
    put(cluster, trial, "result.json", {
        "ablation": trial["ablation"], "namespace": trial["namespace"], "trial": trial["name"],
        "dataset": trial["dataset"]["name"], "modules": trial.get("modules", []), "rank": trial.get("rank", 0),
        "variant": trial.get("variant", "lora"), "eval": {"metric": "accuracy", "score": score, "samples": 50},
        "computeSeconds": seconds,
    })  # fmt: skip


def score_of(name: str) -> float:
    return next(s for k, s in SCORES.items() if f"-{k}" in name)


def states(cluster: Cluster, name: str) -> dict[str, str]:
    return {t["name"]: t["state"] for t in cluster.status(name).get("trialStatuses") or []}


def delete_job(cluster: Cluster, name: str) -> None:
    cluster.batch.delete_namespaced_job(name, "default", propagation_policy="Background")
    wait_for(lambda: name not in cluster.jobs(), what=f"Job {name} gone")


def two_stages_decided(cluster: Cluster, name: str, fail: str | None = None) -> tuple[dict, list[str]]:
    """Apply a two-stage ablation, play its stage one (`fail`: the config whose stage-one Job fails instead), and
    wait for the decision's stage-two Jobs: (round-one Jobs, stage-two Job names)."""
    cluster.apply(manifest(name, cluster.bucket, search={"moduleSets": SETS, "earlyStopping": {}},
                           execution={"parallelism": 10, "maxFailedTrials": 1}))  # fmt: skip
    pass_preflight(cluster, name)
    first = wait_for(lambda: trial_jobs(cluster) if len(trial_jobs(cluster)) == 5 else None, what="5 round-one Jobs")
    for job_name, job in sorted(first.items()):
        (trial,) = trials_of(job)
        if trial["variant"] == "none":
            result(cluster, trial, 0.1, seconds=20.0)
        elif fail and f"-{fail}" in job_name:
            cluster.finish_job(job_name, "Failed", "BackoffLimitExceeded", "the pod failed")
            continue
        else:
            stage_one(cluster, trial, score_of(job_name))
        cluster.finish_job(job_name)
    # A pass creates the survivors' Jobs one by one and then records the decision in the status: the Jobs seen
    # after the status shows an elimination are all of them (reading them at the first new Job raced with the pass).
    wait_for(lambda: "Eliminated" in states(cluster, name).values(), what="the elimination in the status")
    second = wait_for(lambda: [n for n in trial_jobs(cluster) if n not in first] or None, what="stage-two Jobs")
    return first, sorted(second)


def test_removing_early_stopping_resumes_eliminated_trials_and_stops_nothing(operated):
    cluster = operated()
    first, second = two_stages_decided(cluster, "unstaged")
    assert len(second) == 2, second
    eliminated = sorted(n for n, s in states(cluster, "unstaged").items() if s == "Eliminated")
    assert len(eliminated) == 2, states(cluster, "unstaged")
    cluster.patch_spec("unstaged", {"search": {"moduleSets": SETS, "earlyStopping": None}})
    resumed = wait_for(lambda: r if len(r := [n for n in trial_jobs(cluster) if n not in first and n not in second])
                       == 2 else None, what="the eliminated trials' stage-two Jobs")  # fmt: skip
    jobs = trial_jobs(cluster)
    assert set(second) <= set(jobs), "an edit never deletes a running Job whose trial is still planned"
    assert sorted(t["name"] for n in resumed for t in trials_of(jobs[n])) == eliminated
    assert all("stageOne" not in t for n in resumed for t in trials_of(trial_jobs(cluster)[n]))
    assert cluster.condition("unstaged").get("reason") != "TooManyFailedTrials"
    for job_name in [*second, *resumed]:
        (trial,) = trials_of(trial_jobs(cluster)[job_name])
        result(cluster, trial, score_of(job_name) + 0.05)
        cluster.finish_job(job_name)
    wait_for(lambda: cluster.condition("unstaged").get("status") == "True", what="Ready")
    status = cluster.status("unstaged")
    assert cluster.condition("unstaged")["reason"] == "Completed", status["conditions"]
    assert status["trials"]["succeeded"] == 5 and status["trials"]["failed"] == 0
    assert len(trial_jobs(cluster)) == 9  # 5 round-one, 2 stage-two, 2 resumed: none twice


def test_adding_a_module_set_keeps_the_decision_and_the_running_jobs(operated):
    cluster = operated()
    first, second = two_stages_decided(cluster, "grown")
    before = wait_for(lambda: s if list((s := states(cluster, "grown")).values()).count("Eliminated") == 2 else None,
                      what="2 eliminated")  # fmt: skip
    assert "decisions/elimination-" in " ".join(cluster.object_keys("ablations/default/grown/decisions/"))
    cluster.patch_spec("grown", {"search": {"moduleSets": [*SETS, ["fc1"]], "earlyStopping": {}}})
    pass_preflight(cluster, "grown", first=False)  # a new module set is checked before it runs
    (added,) = wait_for(lambda: [n for n in trial_jobs(cluster) if n not in first and n not in second] or None,
                        what="the added configuration's stage-one Job")  # fmt: skip
    assert set(second) <= set(trial_jobs(cluster)), "the running stage-two Jobs keep running"
    (trial,) = trials_of(trial_jobs(cluster)[added])
    assert trial["stageOne"] == {"fraction": 0.25} and "-fc1-" in added
    stage_one(cluster, trial, 0.9)  # above the recorded cutoff: it goes on; the decision is not made again
    cluster.finish_job(added)
    (resumed,) = wait_for(lambda: [n for n in trial_jobs(cluster) if n not in first and n not in second
                                   and n != added] or None, what="the added trial's stage two")  # fmt: skip
    assert trials_of(trial_jobs(cluster)[resumed])[0]["name"] == trial["name"]
    after = states(cluster, "grown")
    assert {n for n, s in after.items() if s == "Eliminated"} == {n for n, s in before.items() if s == "Eliminated"}


def test_deleting_a_failed_stage_one_job_reopens_nothing(operated):
    cluster = operated()
    first, second = two_stages_decided(cluster, "retry", fail="qkv-r16")
    failed = next(n for n in first if "-qkv-r16" in n)
    decided = wait_for(lambda: s if (s := states(cluster, "retry")).get(failed) == "Failed"
                       and "Eliminated" in s.values() else None, what="the decision")  # fmt: skip
    delete_job(cluster, failed)
    cluster.kill_operator()
    cluster.start_operator()  # what it knows now comes from storage alone
    wait_for(lambda: cluster.status("retry").get("trialStatuses"), what="a status")
    assert failed not in trial_jobs(cluster), "a failed trial's deleted Job is not recreated"
    assert set(second) <= set(trial_jobs(cluster)), "the stage-two Jobs keep running"
    assert states(cluster, "retry") == decided
    assert "the pod failed" in next(t["message"] for t in cluster.status("retry")["trialStatuses"]
                                    if t["name"] == failed)  # fmt: skip


def test_deleting_jobs_changes_no_state_and_recreates_only_unfinished_work_once(operated):
    cluster = operated()
    cluster.apply(manifest("tidy", cluster.bucket, execution={"parallelism": 4, "maxFailedTrials": 2}))
    pass_preflight(cluster, "tidy")
    jobs = wait_for(lambda: j if len(j := trial_jobs(cluster)) == 4 else None, what="4 trial Jobs")
    names = sorted(jobs)
    for job_name in names[:2]:
        (trial,) = trials_of(jobs[job_name])
        result(cluster, trial, 0.5)
        cluster.finish_job(job_name)
    cluster.finish_job(names[2], "Failed", "BackoffLimitExceeded", "out of memory")
    wait_for(lambda: list(states(cluster, "tidy").values()).count("Succeeded") == 2
             and states(cluster, "tidy")[names[2]] == "Failed", what="2 succeeded, 1 failed")  # fmt: skip
    hours = cluster.status("tidy")["gpuHours"]
    for job_name in names:  # what a TTL controller or a cleanup script does, and one running Job too
        delete_job(cluster, job_name)
    (again,) = wait_for(lambda: list(trial_jobs(cluster)) or None, what="the unfinished trial's Job again")
    assert again == names[3]
    cluster.kill_operator()
    cluster.start_operator()
    wait_for(lambda: cluster.status("tidy").get("trialStatuses"), what="a status")
    after = states(cluster, "tidy")
    assert [after[n] for n in names] == ["Succeeded", "Succeeded", "Failed", "Running"]
    assert cluster.status("tidy")["gpuHours"] == hours == pytest.approx(2 * 160 / 3600, abs=1e-4)
    assert list(trial_jobs(cluster)) == [names[3]], "finished trials are never run again"


def test_a_budget_exhausted_ablation_stays_exhausted_when_its_jobs_are_deleted(operated):
    cluster = operated()
    cluster.apply(manifest("spent", cluster.bucket, execution={"parallelism": 1, "maxFailedTrials": 1,
                                                               "maxGpuHours": 0.05}))  # fmt: skip
    pass_preflight(cluster, "spent")
    (job_name,) = wait_for(lambda: list(trial_jobs(cluster)) or None, what="the first Job")
    (trial,) = trials_of(trial_jobs(cluster)[job_name])
    result(cluster, trial, 0.4, seconds=200.0)  # 200 s of a 180 s budget
    cluster.finish_job(job_name)
    ready = wait_for(lambda: c if (c := cluster.condition("spent")).get("reason") == "BudgetExhausted" else None,
                     what="BudgetExhausted")  # fmt: skip
    assert ready["status"] == "True"
    hours = cluster.status("spent")["gpuHours"]
    delete_job(cluster, job_name)
    cluster.kill_operator()
    cluster.start_operator()
    wait_for(lambda: cluster.status("spent").get("trialStatuses"), what="a status")
    assert cluster.status("spent")["gpuHours"] == hours == pytest.approx(200 / 3600, abs=1e-4)
    assert cluster.condition("spent")["reason"] == "BudgetExhausted"
    assert trial_jobs(cluster) == {}, "no GPU pod starts again"


def test_round_two_is_estimated_from_stage_one_and_does_not_overspend(operated):
    """Before: 3 stage-two Jobs started at an expected cost of 0 once stage one had spent most of the budget."""
    cluster = operated()
    cluster.apply(manifest("tight", cluster.bucket, search={"moduleSets": SETS, "earlyStopping": {"rule": "topK",
                                                                                                   "keep": 3}},
                           execution={"parallelism": 10, "maxFailedTrials": 1, "maxGpuHours": 0.12}))  # fmt: skip
    pass_preflight(cluster, "tight")
    started: set[str] = set()
    while len(started) < 5:  # one probe at a time until every kind has a cost: the baseline, then stage one
        new = wait_for(lambda: [n for n in trial_jobs(cluster) if n not in started] or None, what="the next Job")
        for job_name in new:
            (trial,) = trials_of(trial_jobs(cluster)[job_name])
            if trial["variant"] == "none":
                result(cluster, trial, 0.1, seconds=70.0)
            else:
                stage_one(cluster, trial, score_of(job_name))  # 40 s each: 70 + 4 x 40 = 230 s of 432
            cluster.finish_job(job_name)
            started.add(job_name)
    # Stage one's bound is 1.25 x 40 = 50 s, a whole trial 50 / 0.25 = 200 s, a survivor's round two 200 - 40 =
    # 160 s: 230 + 160 fits in 432, a second would not (before, all three started at an expected cost of 0).
    waiting = wait_for(lambda: w if len(w := [t for t in cluster.status("tight")["trialStatuses"]
                                              if "waits for the running trials" in (t.get("message") or "")]) == 2
                       else None, what="two survivors waiting for the budget")  # fmt: skip
    second = [n for n in trial_jobs(cluster) if n not in started]
    assert len(second) == 1 and all(t["state"] == "Pending" for t in waiting), second
    (trial,) = trials_of(trial_jobs(cluster)[second[0]])
    result(cluster, trial, 0.8, seconds=150.0)
    cluster.finish_job(second[0])
    wait_for(lambda: cluster.condition("tight").get("reason") == "BudgetExhausted", what="BudgetExhausted")
    assert [n for n in trial_jobs(cluster) if n not in started] == second
    status = cluster.status("tight")
    assert status["gpuHours"] * 3600 <= 432 + 160  # within the budget and one unit
    assert sorted(t["state"] for t in status["trialStatuses"]) == ["Eliminated", "Skipped", "Skipped", "Succeeded",
                                                                    "Succeeded"]  # fmt: skip


def test_only_the_baseline_known_starts_one_trained_probe_not_all(operated):
    """Before: once only the baseline had finished, 3 trained trials started at once on a 1 GPU-hour budget."""
    cluster = operated()
    cluster.apply(manifest("probe", cluster.bucket, execution={"parallelism": 3, "maxFailedTrials": 1,
                                                               "maxGpuHours": 1}))  # fmt: skip
    pass_preflight(cluster, "probe")
    (first,) = wait_for(lambda: list(trial_jobs(cluster)) or None, what="the first Job")
    (trial,) = trials_of(trial_jobs(cluster)[first])
    assert trial["variant"] == "none"  # the baseline runs alone first: nothing has a cost yet
    result(cluster, trial, 0.1, seconds=60.0)
    cluster.finish_job(first)
    probe = wait_for(lambda: [n for n in trial_jobs(cluster) if n != first] or None, what="the trained probe")
    assert len(probe) == 1
    waiting = next(t for t in cluster.status("probe")["trialStatuses"] if t["state"] == "Pending")
    assert "runs first" in waiting["message"]
    (trial,) = trials_of(trial_jobs(cluster)[probe[0]])
    result(cluster, trial, 0.5, seconds=1200.0)  # ~1/3 of the budget: with 1.25x, one more fits, not two
    cluster.finish_job(probe[0])
    more = wait_for(lambda: [n for n in trial_jobs(cluster) if n not in {first, *probe}] or None, what="the next")
    assert len(more) == 1
