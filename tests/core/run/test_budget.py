"""The budget's admit loop (execution.maxGpuHours): conservative estimates, one probe at a time, and simulated
ablations whose spend stays within the limit plus the cost of one unit."""

from __future__ import annotations

import functools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import minimal_manifest
from lora_ablation.api.resource import parse_spec
from lora_ablation.api.stages import StageOneResult
from lora_ablation.api.trial import TrialResult
from lora_ablation.planning.plan import plan_trials
from lora_ablation.run.budget import SPREAD, Costs, admit, costs
from lora_ablation.run.schedule import Elimination, Unit, round_one_units, round_two_units, schedule

SETS = [["o_proj"], ["fc2"], ["qkv"], ["fc1"], ["o_proj", "fc2"], ["qkv", "fc1"]]


@functools.cache
def ablation(datasets: int = 1, trained: int = 5, two_stage: bool = False, per_pod: int = 1):
    data = [{"name": f"d{i}", "train": f"s3://data/d{i}/train.jsonl", "eval": f"s3://data/d{i}/eval.jsonl"}
            for i in range(datasets)]  # fmt: skip
    search = {"moduleSets": SETS[:trained], **({"earlyStopping": {}} if two_stage else {})}
    spec = parse_spec(minimal_manifest(datasets=data, search=search, execution={"trialsPerPod": per_pod})["spec"])
    return spec, plan_trials("sim", "ns", spec)


def result(name: str, seconds: float, baseline: bool = False) -> TrialResult:
    return TrialResult.model_validate({"ablation": "sim", "trial": name, "dataset": "d0",
                                       "variant": "none" if baseline else "lora",
                                       "eval": {"metric": "m", "score": 0.5, "samples": 1},
                                       "computeSeconds": seconds})  # fmt: skip


def stage_one(name: str, seconds: float, score: float = 0.5) -> StageOneResult:
    return StageOneResult(trial=name, dataset="d0", step=1, steps=4, metric="m", score=score, samples=1,
                          compute_seconds=seconds)  # fmt: skip


def test_round_two_is_estimated_from_stage_one_before_any_whole_trial_finished():
    # Seen on a real pass: 3 stage-two Jobs started at an expected cost of 0 on a 360 s budget with 310 s spent.
    spec, plan = ablation(two_stage=True)
    base, *trained = plan.trials
    scores = {t.name: stage_one(t.name, 60, score=s) for t, s in zip(trained, [0.1, 0.5, 0.2, 0.3, 0.9], strict=True)}
    results = {base.name: result(base.name, 10, baseline=True)}
    second = [u for u in schedule("sim", plan, spec, scores, results).units if u.round == 2]
    view = costs(results, scores)
    assert view.spent == 310 and len(second) == 3
    # Each resumes from its 60 s stage one: at most SPREAD x 60 / 0.25 for the whole trial, less the 60 s spent.
    assert view.remaining(second[0], set(), stage_one_fraction=0.25) == SPREAD * 60 / 0.25 - 60 == 240
    out = admit(candidates=second, running=[], capacity=3, limit_hours=0.1, costs=view, done=set(results),
                stage_one_fraction=0.25)  # fmt: skip
    assert out.start == [] and sorted(out.skipped) == sorted(t.name for u in second for t in u.trials)
    why = out.skipped[second[0].trials[0].name]
    assert why == "execution.maxGpuHours 0.1: 0.0861 GPU-hours used; the unit is expected to need 0.0667 more"
    # On 720 s one fits; the second would fit once the first has finished (it may cost less): it waits.
    out = admit(candidates=second, running=[], capacity=3, limit_hours=0.2, costs=view, done=set(results),
                stage_one_fraction=0.25)  # fmt: skip
    assert out.start == second[:1] and out.waiting == second[1:] and not out.skipped and out.committed == 240
    assert "waits for the running trials" in out.reasons[second[1].name]


def test_the_first_unit_of_a_kind_runs_alone_and_the_rest_is_decided_on_its_cost():
    # Seen on a real pass: once only the baseline had finished, 3 trained trials started at once on 1 GPU-hour.
    spec, plan = ablation()
    units = round_one_units("sim", plan, spec)
    base, trained = units[0], units[1:]
    call = functools.partial(admit, limit_hours=1.0, stage_one_fraction=None)
    nothing = costs({}, {})
    out = call(candidates=units, running=[], capacity=3, costs=nothing, done=set())
    assert out.start == [base] and out.waiting == trained  # a baseline and a trained probe at once could each overspend
    assert out.reasons[trained[0].name].startswith(f"{base.name} runs first")
    finished = {base.trials[0].name: result(base.trials[0].name, 60, baseline=True)}
    out = call(candidates=trained, running=[], capacity=3, costs=costs(finished, {}), done=set(finished))
    assert out.start == trained[:1] and out.waiting == trained[1:] and out.committed == 0
    out = call(candidates=trained[1:], running=trained[:1], capacity=2, costs=costs(finished, {}), done=set(finished))
    assert out.start == [] and len(out.waiting) == 4  # the probe runs
    first = trained[0].trials[0].name
    slow = {**finished, first: result(first, 3000)}  # 3060 s spent; one more is expected to cost 3750 s
    out = call(candidates=trained[1:], running=[], capacity=3, costs=costs(slow, {}), done=set(slow))
    assert out.start == [] and len(out.skipped) == 4
    fast = {**finished, first: result(first, 1000)}  # 1060 s spent; 1250 s expected per trial: two fit
    out = call(candidates=trained[1:], running=[], capacity=3, costs=costs(fast, {}), done=set(fast))
    assert out.start == trained[1:3] and out.waiting == trained[3:] and not out.skipped


def test_without_a_limit_only_capacity_counts_and_no_capacity_starts_nothing():
    spec, plan = ablation()
    units = round_one_units("sim", plan, spec)
    view = costs({}, {})
    out = admit(candidates=units, running=[], capacity=2, limit_hours=None, costs=view, done=set(),
                stage_one_fraction=None)  # fmt: skip
    assert out.start == units[:2] and out.waiting == units[2:] and not out.skipped
    for limit in (None, 5.0):
        out = admit(candidates=units, running=[], capacity=0, limit_hours=limit, costs=view, done=set(),
                    stage_one_fraction=None)  # fmt: skip
        assert out.start == [] and out.waiting == units


def test_a_costs_built_from_means_still_estimates():
    spec, plan = ablation()
    unit = round_one_units("sim", plan, spec)[1]
    by_hand = Costs(spent=0, baseline=None, trial=100.0, stage_one=None)
    assert by_hand.remaining(unit, set()) == by_hand.estimate(unit, set()) == SPREAD * 100
    assert costs({}, {}).estimate(unit, set()) == 0.0  # nothing finished: no estimate (remaining is None)


def simulate(spec, plan, fraction: float | None, parallelism: int, budget: float | None, rng: random.Random):
    """Runs an ablation to its end against `admit`, one trial finishing at a time in a random order; `budget`: the
    limit as a share of what every trial would cost run whole. Returns (limit in hours, spend, the costliest
    unit's cost, trials with a result, eliminated, skipped or dropped)."""
    trained = [t for t in plan.trials if not t.spec.is_baseline]
    # True costs: per kind between c and SPREAD x c; stage one a share g >= min(fraction, 1/2) of the whole trial.
    scale = {"baseline": rng.uniform(1, 1000), "trial": rng.uniform(1, 10000)}
    share = min(fraction, 0.5) if fraction is not None else 1.0
    g = share + (1 - share) * rng.uniform(0, 0.9)
    kind = {t.name: "baseline" if t.spec.is_baseline else "trial" for t in plan.trials}
    true = {n: scale[k] * rng.choice([1.0, SPREAD, rng.uniform(1, SPREAD)]) for n, k in kind.items()}  # extremes too
    survive = {t.name: rng.random() < 0.6 for t in trained}
    limit_hours = None if budget is None else budget * sum(true.values()) / 3600
    results: dict[str, TrialResult] = {}
    stage_ones: dict[str, StageOneResult] = {}
    eliminated, dropped, survivors, decided = set(), set(), set(), set()
    skipped: dict[str, str] = {}  # remembered until a restart
    started: dict[str, Unit] = {}
    running: dict[str, list] = {}  # unit -> its trials still to run, in order
    unit_cost: dict[str, float] = {}
    spend, idle = 0.0, False
    first = round_one_units("sim", plan, spec)
    by_dataset: dict[str, list] = {}
    for t in trained:
        by_dataset.setdefault(t.spec.dataset.name, []).append(t)

    def cost_of(unit: Unit, trial) -> float:  # what running `trial` in `unit` really costs
        if trial.spec.is_baseline or fraction is None:
            return true[trial.name]
        return g * true[trial.name] if unit.stage_one else (1 - g) * true[trial.name]

    def decide() -> bool:  # a dataset decides once every trained trial has a stage one or was skipped (dropped)
        changed = False
        for dataset, trials in by_dataset.items():
            if fraction is None or dataset in decided or any(
                    t.name not in stage_ones and t.name not in skipped for t in trials):  # fmt: skip
                continue
            decided.add(dataset)
            changed = True
            for t in trials:
                (dropped if t.name not in stage_ones else survivors if survive[t.name] else eliminated).add(t.name)
        return changed

    while True:
        if not decide() and idle:
            break
        units = first + round_two_units("sim", plan, spec, Elimination(survivors=survivors))
        done = set(results) | eliminated | dropped

        def needs(unit: Unit, trial, done=done) -> bool:
            return trial.name not in done and not (unit.stage_one and trial.name in stage_ones)

        candidates = [u for u in units if u.name not in started and any(needs(u, t) and t.name not in skipped
                                                                          for t in u.trials)]  # fmt: skip
        out = admit(candidates=candidates, running=[started[n] for n in running], capacity=parallelism - len(running),
                    limit_hours=limit_hours, costs=costs(results, stage_ones), done=done,
                    stage_one_fraction=fraction)  # fmt: skip
        assert len(out.start) <= max(0, parallelism - len(running))
        for unit in out.start:
            assert unit.name not in started  # no unit ever starts twice
            started[unit.name], unit_cost[unit.name] = unit, 0.0
            running[unit.name] = [t for t in unit.trials if needs(unit, t)]
            for t in unit.trials:
                skipped.pop(t.name, None)
        skipped.update(out.skipped)
        if limit_hours is not None and out.start:
            # What all that runs will really cost fits, but for the one probe (a unit of a kind with no cost yet).
            left = {n: sum(cost_of(started[n], t) for t in trials) for n, trials in running.items()}
            view = costs(results, stage_ones)
            probes = [n for n in running if view.remaining(started[n], done, stage_one_fraction=fraction) is None]
            assert len(probes) <= 1
            over = spend + sum(left.values()) - limit_hours * 3600 - sum(left[n] for n in probes)
            assert over <= 1e-6 * max(1.0, spend)
        if not running:
            assert not out.waiting  # nothing runs: every unit is decided, to start or to skip
            idle = True
            continue
        idle = False
        name = rng.choice(sorted(running))
        unit, trial = started[name], running[name].pop(0)
        if not running[name]:
            del running[name]
        cost = cost_of(unit, trial)
        if unit.stage_one and not trial.spec.is_baseline:
            stage_ones[trial.name] = stage_one(trial.name, cost)
        else:
            results[trial.name] = result(trial.name, true[trial.name], baseline=trial.spec.is_baseline)
        spend += cost
        unit_cost[name] += cost
        if rng.random() < 0.2:
            skipped.clear()  # a restart: only the evidence and the running units are left
    assert abs(spend - costs(results, stage_ones).spent) < 1e-6 * max(1.0, spend)
    return limit_hours, spend, max(unit_cost.values(), default=0.0), set(results), eliminated, set(skipped) | dropped


@settings(max_examples=200, deadline=None)
@given(
    datasets=st.integers(1, 3), trained=st.integers(1, 6), per_pod=st.integers(1, 3), parallelism=st.integers(1, 4),
    fraction=st.none() | st.floats(0.05, 0.95), budget=st.none() | st.floats(0.0, 1.3), rng=st.randoms(),
)  # fmt: skip
def test_simulated_ablations_stay_within_the_limit_plus_one_unit(datasets, trained, per_pod, parallelism, fraction,
                                                                 budget, rng):  # fmt: skip
    """Assumes every run of a kind (baseline, stage one, whole trial) costs between c and SPREAD x c, and a stage
    one at least min(fraction, 1/2) of its whole trial: what makes the estimates upper bounds (run.budget).
    Each call of admit is a restart: costs rebuilt from the evidence; a random restart also forgets the skipped."""
    spec, plan = ablation(datasets, trained, fraction is not None, per_pod)
    limit, spend, costliest, finished, eliminated, skipped = simulate(spec, plan, fraction, parallelism, budget, rng)
    if limit is None:
        assert not skipped and finished | eliminated == set(plan.names)
    else:
        assert spend <= limit * 3600 + costliest + 1e-6 * max(1.0, spend)
        assert finished | eliminated | skipped == set(plan.names) and not finished & skipped
