"""The pure reconcile for fewer GPU-hours (#15): two-stage elimination, several trials per Job, the budget."""

from __future__ import annotations

import json

import pytest

from lora_ablation.api.contract import TRIAL_ENV, TRIALS_ENV
from lora_ablation.api.stages import StageOneResult, TrialFailure
from lora_ablation.api.trial import TrialResult
from lora_ablation.storage.results import ResultRead
from lora_ablation.summary.report import dataset_matrix
from lora_ablation_operator import conditions as c
from lora_ablation_operator.jobs import STAGE_ANNOTATION, TRIALS_ANNOTATION
from lora_ablation_operator.reconcile import reconcile
from support.reconcile_cases import SETTINGS, cond, finished, observed, run_preflight, spec

SETS = [["o_proj"], ["fc2"], ["qkv"], ["fc1"]]
TWO_STAGE = {"moduleSets": SETS, "earlyStopping": {"stageOneFraction": 0.25}}


def payload(job: dict) -> tuple[str, dict]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    (env,) = [e for e in container["env"] if e["name"] in (TRIAL_ENV, TRIALS_ENV)]
    return env["name"], json.loads(env["value"])


def stage_one(name: str, score: float, seconds: float = 30.0) -> StageOneResult:
    return StageOneResult(trial=name, dataset="med", step=3, steps=10, metric="accuracy", score=score, samples=10,
                          compute_seconds=seconds)  # fmt: skip


def result(name: str, score: float, modules=("o_proj",), seconds: float = 100.0, baseline: bool = False) -> ResultRead:
    return ResultRead(TrialResult.model_validate({
        "ablation": "demo", "trial": name, "dataset": "med", "modules": [] if baseline else list(modules),
        "rank": 0 if baseline else 16, "variant": "none" if baseline else "lora",
        "eval": {"metric": "accuracy", "score": score, "samples": 10}, "computeSeconds": seconds,
    }))  # fmt: skip


def first_round(raw: dict):
    pre, _ = run_preflight(raw)
    decision = reconcile(observed(raw, jobs=[pre]), SETTINGS)
    return pre, decision


def test_two_stage_round_one_stops_trained_trials_at_stage_one_and_runs_the_baseline_whole():
    raw = spec(search=TWO_STAGE, execution={"parallelism": 10})
    _, decision = first_round(raw)
    assert len(decision.create) == 5
    for job in decision.create:
        env, trial = payload(job)
        assert env == TRIAL_ENV
        if trial["variant"] == "none":
            assert "stageOne" not in trial
        else:
            assert trial["stageOne"] == {"fraction": 0.25}
            assert job["metadata"]["annotations"][STAGE_ANNOTATION] == "stage-one"


def test_losing_configurations_are_eliminated_and_survivors_resume_in_stage_two_jobs():
    raw = spec(search=TWO_STAGE, execution={"parallelism": 10})
    pre, decision = first_round(raw)
    jobs = [pre, *(finished(j, "Complete") for j in decision.create)]
    names = [j["metadata"]["name"] for j in decision.create]
    base, trained = names[0], names[1:]
    scores = dict(zip(trained, [0.1, 0.2, 0.3, 0.4], strict=True))
    seen = observed(raw, jobs=jobs, results={base: result(base, 0.05, baseline=True)},
                    stage_ones={n: stage_one(n, s) for n, s in scores.items()})  # fmt: skip
    decision = reconcile(seen, SETTINGS)
    states = decision.trial_states
    assert [states[n] for n in trained] == [c.ELIMINATED, c.ELIMINATED, c.RUNNING, c.RUNNING]
    created = [j["metadata"]["name"] for j in decision.create]
    assert len(created) == 2 and all("stage2" in n for n in created)
    assert [payload(j)[1]["name"] for j in decision.create] == trained[2:]
    assert all("stageOne" not in payload(j)[1] for j in decision.create)  # stage two trains to the end
    eliminated = [e for e in decision.events if e[1] == "TrialEliminated"]
    assert len(eliminated) == 2 and "scored 0.1000" in eliminated[0][2] and "cutoff 0.3000" in eliminated[0][2]
    assert decision.status["trials"]["eliminated"] == 2
    entry = next(t for t in decision.status["trialStatuses"] if t["name"] == trained[0])
    assert entry["stageOneScore"] == 0.1 and entry["gpuSeconds"] == 30.0
    # The same observation after a restart (no memory of states) decides the same and creates nothing twice.
    jobs += decision.create
    again = reconcile(observed(raw, jobs=jobs, results={base: result(base, 0.05, baseline=True)},
                               stage_ones={n: stage_one(n, s) for n, s in scores.items()}, status=decision.status),
                      SETTINGS)  # fmt: skip
    assert again.create == [] and again.trial_states == {**decision.trial_states}
    assert not [e for e in again.events if e[1] == "TrialEliminated"]
    # Survivors finish: the ablation is Ready, eliminated configurations are apart from the leaderboard.
    done = [pre, *(finished(j, "Complete") for j in jobs[1:])]
    results = {base: result(base, 0.05, baseline=True), trained[2]: result(trained[2], 0.5, ["qkv"], 400),
               trained[3]: result(trained[3], 0.6, ["fc1"], 400)}  # fmt: skip
    last = reconcile(observed(raw, jobs=done, results=results,
                              stage_ones={n: stage_one(n, s) for n, s in scores.items()}), SETTINGS)  # fmt: skip
    ready = cond(last, c.READY)
    assert ready["status"] == "True" and ready["reason"] == c.COMPLETED and "2 eliminated" in ready["message"]
    assert [e.config for e in last.summary.eliminated] == ["fc2 r16 lora", "o_proj r16 lora"]
    assert {e.config for e in last.summary.configs} == {"qkv r16 lora", "fc1 r16 lora"}
    assert last.summary.compute.stage_one_gpu_hours == round(4 * 30 / 3600, 6)
    assert last.summary.compute.gpu_hours == round((100 + 400 + 400 + 2 * 30) / 3600, 6)
    assert not any("missing" in note for note in last.summary.notes)


def test_a_dataset_decides_only_when_every_configuration_has_its_stage_one_score():
    raw = spec(search=TWO_STAGE, execution={"parallelism": 10})
    pre, decision = first_round(raw)
    jobs = [pre, *decision.create]
    trained = [j["metadata"]["name"] for j in decision.create][1:]
    seen = observed(raw, jobs=jobs, stage_ones={n: stage_one(n, 0.1 * i) for i, n in enumerate(trained[:3])})
    later = reconcile(seen, SETTINGS)
    assert later.create == [] and c.ELIMINATED not in later.trial_states.values()
    waiting = next(t for t in later.status["trialStatuses"] if t["name"] == trained[0])
    assert waiting["state"] == c.PENDING and "waiting for the other configurations" in waiting["message"]


def test_several_trials_share_one_job_and_keep_their_own_states():
    raw = spec(search={"moduleSets": SETS}, execution={"parallelism": 10, "trialsPerPod": 2})
    pre, decision = first_round(raw)
    assert len(decision.create) == 3  # baseline + 4 configurations, 2 per Job
    first = decision.create[0]
    env, batch = payload(first)
    members = [t["name"] for t in batch["trials"]]
    assert env == TRIALS_ENV and len(members) == 2
    assert first["metadata"]["annotations"][TRIALS_ANNOTATION] == ",".join(members)
    started = [e for e in decision.events if e[1] == "TrialStarted"]
    assert len(started) == 3 and "2 trials" in started[0][2]
    # While the pod runs, a trial that published counts as done; one that failed for good names why.
    seen = observed(raw, jobs=[pre, *decision.create],
                    results={members[0]: result(members[0], 0.1, baseline=True)},
                    failures={members[1]: TrialFailure(trial=members[1], message="bad data",
                                                       exit_code=42)})  # fmt: skip
    later = reconcile(seen, SETTINGS)
    assert later.trial_states[members[0]] == c.SUCCEEDED and later.trial_states[members[1]] == c.FAILED
    assert later.create == []
    entry = next(t for t in later.status["trialStatuses"] if t["name"] == members[1])
    assert entry["message"] == "bad data" and entry["job"] == first["metadata"]["name"]
    # A batch Job that completed leaving one trial without a result: that trial, and only it, has no result.
    other = decision.create[1]
    _, batch = payload(other)
    a, b = (t["name"] for t in batch["trials"])
    seen = observed(raw, jobs=[pre, finished(other, "Complete"), *decision.create[::2]], results={a: result(a, 0.3)})
    assert reconcile(seen, SETTINGS).trial_states[b] == c.RESULTS_MISSING


def test_the_budget_stops_starting_trials_and_the_ablation_ends_with_what_finished():
    raw = spec(search={"moduleSets": SETS}, execution={"parallelism": 1, "maxGpuHours": 1.5})
    pre, decision = first_round(raw)
    (base_job,) = decision.create  # no cost known yet: the first unit starts
    base = base_job["metadata"]["name"]
    seen = observed(raw, jobs=[pre, finished(base_job, "Complete")], results={base: result(base, 0.0, baseline=True,
                                                                                         seconds=60)})  # fmt: skip
    decision = reconcile(seen, SETTINGS)
    (first_trial,) = decision.create  # a trained trial's cost is not known yet either
    name = first_trial["metadata"]["name"]
    results = {base: result(base, 0.0, baseline=True, seconds=60), name: result(name, 0.4, seconds=3600)}
    seen = observed(raw, jobs=[pre, finished(base_job, "Complete"), finished(first_trial, "Complete")], results=results)
    decision = reconcile(seen, SETTINGS)
    # 1.017 GPU-hours spent, another trial is expected to cost 1: over the 1.5 budget.
    assert decision.create == [] and decision.status["trials"]["skipped"] == 3
    ready = cond(decision, c.READY)
    assert ready["status"] == "True" and ready["reason"] == c.BUDGET_EXHAUSTED
    assert "maxGpuHours 1.5" in ready["message"] and decision.finished
    assert decision.status["gpuHours"] == round(3660 / 3600, 4)
    assert len(decision.summary.compute.skipped_trials) == 3 and decision.summary.configs[0].config == "o_proj r16 lora"
    # The configurations that never started show in the score table as skipped, not missing, and not left out.
    skipped = {s.config for s in decision.summary.skipped}
    assert skipped == {"fc2 r16 lora", "qkv r16 lora", "fc1 r16 lora"}
    headers, rows = dataset_matrix(decision.summary)
    cells = {row[0]: row[headers.index("med")] for row in rows}
    assert {config: cells[config] for config in skipped} == dict.fromkeys(skipped, "skipped")
    assert cells["o_proj r16 lora"].startswith("0.400")


def test_a_skipped_configuration_reads_skipped_in_the_heatmap():
    pytest.importorskip("matplotlib")
    from lora_ablation.summary.models import SkippedConfig, Summary
    from lora_ablation.summary.plots import heatmap_figure

    summary = Summary.model_validate({"ablation": "demo", "namespace": "ns", "tolerance": 0.0, "datasets": [
        {"name": "med", "metric": "accuracy", "baselineScore": 0.1, "cells": []}]})  # fmt: skip
    summary = summary.model_copy(update={"skipped": [SkippedConfig(dataset="med", config="fc2 r16 lora")]})
    (ax, _) = heatmap_figure(summary).axes
    assert [t.get_text() for t in ax.texts] == ["0.100", "skipped\n(budget)"]
