"""What one pass reads from storage for the trials: result.json, and for two-stage or multi-trial units also
stage-one.json and failure.json. Only where something can be there: a unit whose Job finished, or one running
several trials (each publishes while the pod goes on). Reads go through the ResultCache, so a file is read once
and then only its version is checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lora_ablation.api.stages import StageOneResult, TrialFailure
from lora_ablation.contract import FAILURE, STAGE_ONE
from lora_ablation.results import ResultRead, read_failure, read_stage_one
from lora_ablation.schedule import ROUND_TWO, Schedule, Unit, round_one_units, schedule
from lora_ablation.store import Store
from lora_ablation_operator.collector import ResultCache
from lora_ablation_operator.observe import completed_trials, job_finished
from lora_ablation_operator.planning import Planned


@dataclass
class Gathered:
    results: dict[str, ResultRead] = field(default_factory=dict)
    stage_ones: dict[str, StageOneResult] = field(default_factory=dict)
    failures: dict[str, TrialFailure] = field(default_factory=dict)
    schedule: Schedule | None = None


def terminal(job: dict[str, Any] | None) -> bool:
    return job is not None and bool(job_finished(job, "Complete") or job_finished(job, "Failed"))


def _readable(unit: Unit, jobs: dict[str, dict[str, Any]]) -> bool:
    job = jobs.get(unit.name)
    return job is not None and (terminal(job) or len(unit.trials) > 1)


def _read(units: list[Unit], jobs: dict[str, dict[str, Any]], store: Store, cache: ResultCache, uid: str,
          out: Gathered) -> None:  # fmt: skip
    for unit in units:
        if not _readable(unit, jobs):
            continue
        names = unit.trial_names
        scope = f"{unit.name}:{terminal(jobs.get(unit.name))}"
        for name, read in cache.collect(uid, store, names, scope=scope).items():
            if name not in out.results or read.result is not None:  # a result from any scope stands
                out.results[name] = read
        if unit.stage_one:
            found = cache.collect(uid, store, names, STAGE_ONE, read_stage_one, scope)
            out.stage_ones.update({n: s for n, s in found.items() if s is not None})
        if len(names) > 1:
            found = cache.collect(uid, store, names, FAILURE, read_failure, scope)
            out.failures.update({n: f for n, f in found.items() if f is not None})


def gather(planned: Planned, jobs: dict[str, dict[str, Any]], store: Store, cache: ResultCache, uid: str,
           name: str) -> Gathered:  # fmt: skip
    assert planned.spec is not None and planned.plan is not None
    spec, plan = planned.spec, planned.plan
    first = list(planned.units) or round_one_units(name, plan, spec)
    out = Gathered()
    _read(first, jobs, store, cache, uid, out)
    # A trial's own finished Job from before a regrouping (trialsPerPod edited) still holds its result; a Job that is
    # a unit now was read above.
    units = {u.name for u in first}
    regrouped = [n for n in completed_trials(jobs) if n not in units and n not in out.results]
    planned = {t.name for t in plan.trials}
    out.results.update(cache.collect(uid, store, [n for n in regrouped if n in planned]))
    finished = {n for n, r in out.results.items() if r is not None and r.result is not None}
    dropped = set(out.failures) | {
        trial
        for unit in first
        if unit.stage_one and terminal(jobs.get(unit.name))
        for trial in unit.trial_names
        if trial not in out.stage_ones and trial not in finished
    }
    out.schedule = schedule(name, plan, spec, out.stage_ones, finished, dropped, first)
    _read([u for u in out.schedule.units if u.round == ROUND_TWO], jobs, store, cache, uid, out)
    return out
