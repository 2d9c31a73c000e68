"""Each trial's state from what was observed: its result, its failure.json, the elimination, and the Job of the
unit it is in now (one trial, or several in one pod; round one or a survivor's round two). Pure."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from lora_ablation.budget import Costs, result_cost
from lora_ablation.plan import PlannedTrial
from lora_ablation.schedule import Schedule, Unit
from lora_ablation_operator import conditions as c
from lora_ablation_operator.observe import failure_message, job_finished

ACTIVE = frozenset({c.RUNNING, c.STUCK, c.TRIAL_SUSPENDED})
DONE = frozenset({c.SUCCEEDED, c.FAILED, c.RESULTS_MISSING, c.ELIMINATED})


@dataclass
class Judged:
    states: dict[str, tuple[str, str | None]]  # trial -> (state, why)
    startable: list[Unit]  # units without a Job that have a trial to run, in schedule order
    active: list[str]  # names of units whose Job runs (or is suspended)


def _state(trial: PlannedTrial, unit: Unit, job: dict[str, Any] | None, observed: Any) -> tuple[str, str | None]:
    name = trial.name
    read = observed.results.get(name)
    if read is not None and read.result is not None:
        return c.SUCCEEDED, None
    if name in observed.failures:
        return c.FAILED, observed.failures[name].message
    schedule: Schedule = observed.schedule
    if name in schedule.elimination.eliminated:
        return c.ELIMINATED, schedule.elimination.eliminated[name]
    stage_one = observed.stage_ones.get(name)
    if unit.stage_one and stage_one is not None:
        return c.PENDING, (
            f"stage one scored {stage_one.score:.4f} at step {stage_one.step} of {stage_one.steps}; waiting for the "
            f"other configurations on {trial.spec.dataset.name}"
        )
    if job is None:
        rejected = observed.rejected.get(unit.name)
        if rejected:
            return c.PENDING, f"Job rejected by the API server: {rejected}"
        return c.PENDING, ("survived stage one; waiting to resume" if stage_one is not None else None)
    if job_finished(job, "Failed"):
        said = observed.terminations.get(unit.name)  # what the trainer wrote to its termination log, e.g. the step
        return c.FAILED, failure_message(job) + (f"; trainer: {said}" if said else "")
    if job_finished(job, "Complete"):
        if read is not None and read.problem:
            return c.RESULTS_MISSING, read.problem
        wrote = "stage-one.json" if unit.stage_one and not trial.spec.is_baseline else "result.json"
        return c.RESULTS_MISSING, f"the Job succeeded but left no {wrote}"
    if (job.get("spec") or {}).get("suspend"):
        return c.TRIAL_SUSPENDED, None
    if unit.name in observed.stuck:
        return c.STUCK, observed.stuck[unit.name]
    if len(unit.trials) > 1:
        return c.RUNNING, f"in {unit.name} with {len(unit.trials) - 1} other trial(s)"
    return c.RUNNING, None


def judge(plan_trials: list[PlannedTrial], schedule: Schedule, jobs: dict[str, dict[str, Any]],
          observed: Any) -> Judged:  # fmt: skip
    states = {}
    for trial in plan_trials:
        unit = schedule.current[trial.name]
        states[trial.name] = _state(trial, unit, jobs.get(unit.name), observed)
    startable, active = [], []
    for unit in schedule.units:
        job = jobs.get(unit.name)
        if job is None:
            # A trial scored in stage one waits for its dataset's decision, not for this unit's Job.
            scored = observed.stage_ones if unit.stage_one else {}
            if any(states[t.name][0] == c.PENDING and t.name not in scored for t in unit.trials):
                startable.append(unit)
        elif not (job_finished(job, "Complete") or job_finished(job, "Failed")):
            active.append(unit.name)
    return Judged(states, startable, active)


def committed(schedule: Schedule, active: list[str], done: Collection[str], costs: Costs) -> float:
    """What the running units are expected to spend still (their trials not done)."""
    by_name = {u.name: u for u in schedule.units}
    return sum(costs.estimate(by_name[name], done) for name in active if name in by_name)


def trial_cost(observed: Any, name: str) -> float | None:
    read = observed.results.get(name)
    if read is not None and read.result is not None:
        return round(result_cost(read.result), 3)
    stage_one = observed.stage_ones.get(name)
    return round(stage_one.compute_seconds, 3) if stage_one is not None else None
