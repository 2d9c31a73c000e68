"""Each trial's state in the operator: the evidence of one pass (storage's record, the recorded decision, the
workload of the trial's current unit) handed to lora_ablation.run.lifecycle, the one function that judges it, the
same the local runner calls. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lora_ablation.api.stages import TrialFailure
from lora_ablation.api.trial_state import TERMINAL, TrialState
from lora_ablation.planning.plan import PlannedTrial
from lora_ablation.run.budget import result_cost
from lora_ablation.run.lifecycle import Evidence, judge
from lora_ablation.run.schedule import Schedule, Unit
from lora_ablation_operator import workload

DONE = frozenset(s.value for s in TERMINAL)


@dataclass
class Judged:
    states: dict[str, tuple[str, str | None]]  # trial -> (state, why)
    startable: list[Unit]  # units without a workload that have a trial to run, in schedule order
    active: list[str]  # names of units whose workload runs (or is suspended)
    records: list[TrialFailure] = field(default_factory=list)  # runs that ended without a file: record them


def evidence(trial: PlannedTrial, unit: Unit | None, job: dict[str, Any] | None, observed: Any) -> Evidence:
    name, schedule = trial.name, observed.schedule
    read = observed.results.get(name)
    unit_name = unit.name if unit is not None else None
    run, message = workload.run_of(job, stuck=observed.stuck.get(unit_name), rejected=observed.rejected.get(unit_name),
                                   termination=observed.terminations.get(unit_name))  # fmt: skip
    return Evidence(
        dataset=trial.spec.dataset.name, baseline=trial.spec.is_baseline,
        result=read.result if read is not None else None, result_problem=read.problem if read is not None else None,
        stage_one=observed.stage_ones.get(name), failure=observed.failures.get(name),
        eliminated=schedule.elimination.eliminated.get(name), survivor=name in schedule.elimination.survivors,
        in_stage_one=bool(unit is not None and unit.stage_one), run=run, run_message=message,
        companions=len(unit.trials) - 1 if unit is not None else 0,
    )  # fmt: skip


def judge_all(plan_trials: list[PlannedTrial], schedule: Schedule, jobs: dict[str, dict[str, Any]],
              observed: Any) -> Judged:  # fmt: skip
    states, records = {}, []
    for trial in plan_trials:
        unit = schedule.current.get(trial.name)
        job = jobs.get(unit.name) if unit is not None else None
        judged = judge(trial.name, evidence(trial, unit, job, observed))
        states[trial.name] = (judged.state.value, judged.why)
        if judged.record is not None:
            records.append(judged.record)
    startable, active = [], []
    for unit in schedule.units:
        job = jobs.get(unit.name)
        if job is None:
            # A unit starts for trials that have nothing yet; a trial scored in stage one waits for its decision.
            if any(states[t.name][0] == TrialState.pending and schedule.current.get(t.name) is unit
                   and (t.name not in observed.stage_ones or unit.round == 2) for t in unit.trials):  # fmt: skip
                startable.append(unit)
        elif not workload.finished(job):
            active.append(unit.name)
    return Judged(states, startable, active, records)


def trial_cost(observed: Any, name: str) -> float | None:
    read = observed.results.get(name)
    if read is not None and read.result is not None:
        return round(result_cost(read.result), 3)
    stage_one = observed.stage_ones.get(name)
    return round(stage_one.compute_seconds, 3) if stage_one is not None else None
