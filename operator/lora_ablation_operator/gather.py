"""What one pass knows about each trial, read from storage (the record), not inferred from which workloads exist:
the files one listing of the prefix found when this process first looked (everything that happened before a
restart), the files of units whose workload finished or runs several trials (each publishes while the pod goes
on), what this process recorded itself, and the recorded eliminations. Reads go through the ResultCache, so a
file is read once and then only its version is checked."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from lora_ablation.api.contract import FAILURE, RESULT, STAGE_ONE
from lora_ablation.api.naming import bounded_name
from lora_ablation.api.progress import TrialProgress
from lora_ablation.api.stages import EliminationDecision, StageOneResult, TrialFailure
from lora_ablation.planning.plan import PlannedTrial
from lora_ablation.run.schedule import ROUND_TWO, Schedule, Unit, schedule
from lora_ablation.storage.results import ResultRead, read_failure, read_result, read_stage_one
from lora_ablation.storage.store import Store
from lora_ablation_operator import workload
from lora_ablation_operator.collector import ResultCache, Seen
from lora_ablation_operator.planning import Planned

LISTED = "listed"  # the cache scope of files the listing found


@dataclass
class Gathered:
    results: dict[str, ResultRead] = field(default_factory=dict)
    stage_ones: dict[str, StageOneResult] = field(default_factory=dict)
    failures: dict[str, TrialFailure] = field(default_factory=dict)
    eliminations: dict[str, EliminationDecision] = field(default_factory=dict)  # recorded, by dataset
    schedule: Schedule | None = None
    progress: dict[str, TrialProgress] = field(default_factory=dict)  # running trials' live progress


def _merge(out: Gathered, results: dict[str, Any], stage_ones: dict[str, Any], failures: dict[str, Any]) -> None:
    for name, read in results.items():
        if name not in out.results or read.result is not None:  # a result from any scope stands
            out.results[name] = read
    out.stage_ones.update({n: s for n, s in stage_ones.items() if s is not None})
    out.failures.update({n: f for n, f in failures.items() if f is not None})


_READERS = {RESULT: (read_result, ResultRead(None)), STAGE_ONE: (read_stage_one, None), FAILURE: (read_failure, None)}


def _read(cache: ResultCache, uid: str, store: Store, names: list[str], scope: str, files: Iterable[str],
          out: Gathered, planned: dict[str, PlannedTrial], seen: dict[str, Seen]) -> None:  # fmt: skip
    """Read through the cache; each file is credited to the configuration the plan runs under its trial's name.
    `seen`: what the pass's listing saw of each file, which answers versions where it can."""
    found = {}
    for f in set(files):
        reader, absent = _READERS[f]
        found[f] = cache.collect(uid, store, names, f, partial(reader, planned=planned), scope, seen=seen[f],
                                 absent=absent)  # fmt: skip
    results, stage_ones, failures = (found.get(f, {}) for f in (RESULT, STAGE_ONE, FAILURE))
    _merge(out, results, stage_ones, failures)
    if scope != LISTED:  # what a unit's read found outlives its workload
        for file, got in ((RESULT, results), (STAGE_ONE, stage_ones), (FAILURE, failures)):
            for name, value in got.items():
                if value is not None and (file != RESULT or value.result is not None or value.problem):
                    cache.keep(uid, name, file, scope, LISTED)


def kept_units(jobs: dict[str, dict[str, Any]], planned: dict[str, PlannedTrial]) -> list[Unit]:
    """The units of the workloads that exist and run a planned trial: finished ones first, so a trial's
    unfinished workload is its current one."""
    named: dict[str, tuple[str, ...]] = {}
    if any(workload.annotations(j) == {} and n not in planned for n, j in jobs.items()):
        # Workloads of older operators list no trials: a lone stage-two unit is named after its trial.
        named = {bounded_name([t, "stage2"], {"trial": t, "round": ROUND_TWO}): (t,) for t in planned}
    units = [(workload.finished(j), u) for n, j in jobs.items() if (u := workload.unit_of(n, j, planned, named))]
    return [u for _, u in sorted(units, key=lambda pair: not pair[0])]


def running_trials(kept: list[Unit], jobs: dict[str, dict[str, Any]], done: set[str]) -> list[str]:
    """Trials whose workload runs now (not finished, not suspended) and that have no result or failure yet: the
    only ones whose progress is read. A baseline trains nothing and writes no progress."""
    return [t.name for u in kept if not workload.finished(jobs[u.name]) and not (jobs[u.name].get("spec") or {})
            .get("suspend") for t in u.trials if t.name not in done and not t.spec.is_baseline]  # fmt: skip


def gather(planned: Planned, jobs: dict[str, dict[str, Any]], store: Store, cache: ResultCache, uid: str,
           name: str, vanished: Iterable[str] = ()) -> Gathered:  # fmt: skip
    """`vanished`: trials that had a workload at the last pass and have none now: looked for in storage before
    their unit is created again (a Job that finished and was deleted between two passes)."""
    assert planned.spec is not None and planned.plan is not None
    spec, plan = planned.spec, planned.plan
    by_name = {t.name: t for t in plan.trials}
    out = Gathered()
    kept = kept_units(jobs, by_name)
    # Units whose files are read in their own scope: finished ones, and multi-trial pods (each trial publishes
    # while the pod goes on). A listing taken now answers all of them when it is cheaper than asking per file.
    scoped = [(u, f"{u.name}:{workload.finished(jobs[u.name])}") for u in kept
              if workload.finished(jobs[u.name]) or len(u.trials) > 1]  # fmt: skip
    first_reads = sum(3 * len(u.trials) for u, scope in scoped
                      if not cache.read_before(uid, u.trial_names[0], RESULT, scope))  # fmt: skip
    listing, at, taken_now = cache.listing(uid, store, checks=first_reads + cache.checks_due(uid))
    out.eliminations = dict(listing.eliminations)
    seen = {f: Seen(listing.versions(f), at=at, complete=taken_now) for f in (RESULT, STAGE_ONE, FAILURE)}
    for file in (RESULT, STAGE_ONE, FAILURE):
        listed = [n for n in by_name if listing.has(n, file)]
        if listed:
            _read(cache, uid, store, listed, LISTED, [file], out, by_name, seen)
    for trial in by_name:
        if (recorded := cache.noted(uid, trial, FAILURE)) is not None:
            out.failures.setdefault(trial, recorded)
    for unit, scope in scoped:
        _read(cache, uid, store, unit.trial_names, scope, (RESULT, STAGE_ONE, FAILURE), out, by_name, seen)
    if lost := [n for n in vanished if n in by_name and n not in out.results and n not in out.failures]:
        _read(cache, uid, store, lost, "vanished", (RESULT, STAGE_ONE, FAILURE), out, by_name, seen)
    finished = {n for n, r in out.results.items() if r.result is not None}
    out.progress = cache.progress.collect(uid, store, running_trials(kept, jobs, {*finished, *out.failures}), by_name)
    out.schedule = schedule(name, plan, spec, out.stage_ones, finished, set(out.failures),
                            recorded=out.eliminations, kept=kept)  # fmt: skip
    return out
