"""Fewer GPU-hours with the operator running for real against the emulated API and moto S3: two-stage
elimination across operator kills, and several trials in one Job. The test plays the Job controller and the
trainer (stage-one.json, result.json)."""

from __future__ import annotations

import json

import pytest

from support.cluster import Cluster, manifest, pass_preflight, trial_jobs, wait_for

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]
SETS = [["o_proj"], ["o_proj", "fc2"], ["qkv"], ["all"]]


def trials_of(job: dict) -> list[dict]:
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    if "LORA_ABLATION_TRIALS" in env:
        return json.loads(env["LORA_ABLATION_TRIALS"])["trials"]
    return [json.loads(env["LORA_ABLATION_TRIAL"])]


def key(trial: dict, file: str) -> str:
    return trial["storage"]["uri"].split("/", 3)[3] + "/" + file


def write_stage_one(cluster: Cluster, trial: dict, score: float) -> None:
    doc = {"trial": trial["name"], "dataset": trial["dataset"]["name"], "step": 2, "steps": 8, "metric": "accuracy",
           "score": score, "samples": 20, "computeSeconds": 40.0}  # fmt: skip
    cluster.s3.put_object(Bucket=cluster.bucket, Key=key(trial, "stage-one.json"), Body=json.dumps(doc).encode())


def write_result(cluster: Cluster, trial: dict, score: float) -> None:
    doc = {"ablation": trial["ablation"], "namespace": trial["namespace"], "trial": trial["name"],
           "dataset": trial["dataset"]["name"], "modules": trial.get("modules", []), "rank": trial.get("rank", 0),
           "variant": trial.get("variant", "lora"), "eval": {"metric": "accuracy", "score": score, "samples": 50},
           "computeSeconds": 160.0}  # fmt: skip
    cluster.s3.put_object(Bucket=cluster.bucket, Key=key(trial, "result.json"), Body=json.dumps(doc).encode())


def state_of(cluster: Cluster, name: str) -> dict[str, str]:
    return {t["name"]: t["state"] for t in cluster.status(name).get("trialStatuses") or []}


def test_elimination_survives_operator_restarts_and_survivors_resume_once(operated):
    cluster = operated()
    cluster.apply(manifest("two", cluster.bucket, search={"moduleSets": SETS, "earlyStopping": {}},
                           execution={"parallelism": 10, "maxFailedTrials": 1}))  # fmt: skip
    pass_preflight(cluster, "two")
    first = wait_for(lambda: trial_jobs(cluster) if len(trial_jobs(cluster)) == 5 else None, what="5 round-one Jobs")
    scores = {"o-proj-r16": 0.2, "o-proj-fc2": 0.3, "qkv-r16": 0.6, "all-r16": 0.7}
    staged = []
    for name, job in sorted(first.items()):
        (trial,) = trials_of(job)
        if trial["variant"] == "none":
            write_result(cluster, trial, 0.1)
        else:
            assert trial["stageOne"] == {"fraction": 0.25}
            write_stage_one(cluster, trial, next(s for k, s in scores.items() if f"-{k}" in name))
            staged.append(name)
        if len(staged) == 2:
            cluster.kill_operator()  # the rest of stage one finishes while no operator runs
        cluster.finish_job(name)
    cluster.start_operator()
    second = wait_for(lambda: [n for n in trial_jobs(cluster) if n not in first] or None, what="stage-two Jobs")
    cluster.kill_operator()
    cluster.start_operator()  # a second restart re-derives the same decision from storage and creates nothing
    states = wait_for(lambda: s if list((s := state_of(cluster, "two")).values()).count("Eliminated") == 2 else None,
                      what="2 eliminated trials")  # fmt: skip
    eliminated = sorted(n for n, s in states.items() if s == "Eliminated")
    assert len(eliminated) == 2 and all("-o-proj-" in n for n in eliminated)  # scored 0.2 and 0.3, median 0.45
    assert len(wait_for(lambda: [n for n in trial_jobs(cluster) if n not in first], what="stage two")) == 2
    for name in second:
        (trial,) = trials_of(trial_jobs(cluster)[name])
        assert "stageOne" not in trial and "stage2" in name
        write_result(cluster, trial, 0.65 if "qkv" in name else 0.75)
        cluster.finish_job(name)
    try:
        ready = wait_for(lambda: c if (c := cluster.condition("two")).get("status") == "True" else None, what="Ready")
    except AssertionError:
        raise AssertionError(json.dumps(cluster.status("two"), indent=1)[:5000]) from None
    status = cluster.status("two")
    assert ready["reason"] == "Completed" and "2 eliminated after stage one" in ready["message"]
    assert status["trials"]["eliminated"] == 2 and status["trials"]["succeeded"] == 3
    assert [e["config"] for e in status["leaderboard"]] == ["all r16 lora", "qkv r16 lora"]
    assert len(trial_jobs(cluster)) == 7  # 5 round-one Jobs + 2 stage-two Jobs, none twice
    assert cluster.trial_events("two", "TrialEliminated") == 2
    summary = json.loads(cluster.s3.get_object(Bucket=cluster.bucket, Key="ablations/default/two/summary.json")[
        "Body"].read())  # fmt: skip
    assert sorted(e["config"] for e in summary["eliminated"]) == ["o_proj r16 lora", "o_proj+fc2 r16 lora"]
    assert summary["compute"]["stageOneGpuHours"] == pytest.approx(4 * 40 / 3600, abs=1e-6)


def test_several_trials_in_one_job_report_each_trial_as_it_publishes(operated):
    cluster = operated(result_recheck_seconds="0.5")
    cluster.apply(manifest("batch", cluster.bucket, execution={"parallelism": 1, "trialsPerPod": 3,
                                                               "maxFailedTrials": 1}))  # fmt: skip
    pass_preflight(cluster, "batch")
    (name,) = wait_for(lambda: list(trial_jobs(cluster)) or None, what="the first batch Job")
    trials = trials_of(trial_jobs(cluster)[name])
    assert len(trials) == 3
    write_result(cluster, trials[0], 0.1)  # the pod goes on with the others
    wait_for(lambda: state_of(cluster, "batch").get(trials[0]["name"]) == "Succeeded", what="first trial Succeeded")
    assert state_of(cluster, "batch")[trials[1]["name"]] == "Running"
    failure = {"trial": trials[1]["name"], "message": "spec.datasets[0].train: line 3 is not JSON", "exitCode": 42}
    cluster.s3.put_object(Bucket=cluster.bucket, Key=key(trials[1], "failure.json"), Body=json.dumps(failure).encode())
    write_result(cluster, trials[2], 0.5)
    cluster.finish_job(name)
    (other,) = wait_for(lambda: [n for n in trial_jobs(cluster) if n != name] or None, what="the second batch Job")
    (last,) = trials_of(trial_jobs(cluster)[other])
    write_result(cluster, last, 0.6)
    cluster.finish_job(other)
    wait_for(lambda: cluster.condition("batch").get("status") == "True", what="Ready")
    status = cluster.status("batch")
    assert status["trials"]["succeeded"] == 3 and status["trials"]["failed"] == 1
    failed = next(t for t in status["trialStatuses"] if t["state"] == "Failed")
    assert failed["message"].startswith("spec.datasets[0].train") and failed["job"] == name
