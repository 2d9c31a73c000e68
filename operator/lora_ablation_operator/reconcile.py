"""The one decision function: spec + observed Jobs + collected results -> Jobs to create, stop, suspend or
resume, events, and the new status. Pure and level-based: it runs the same on create, update, resume,
timers and Job events, and running it twice on the same input gives the same answer."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from lora_ablation.api.progress import TrialProgress
from lora_ablation.api.spec import LoraAblationSpec
from lora_ablation.api.stages import EliminationDecision, StageOneResult, TrialFailure
from lora_ablation.planning.plan import Plan
from lora_ablation.run.budget import Admission, Costs, admit
from lora_ablation.run.budget import costs as budget_costs
from lora_ablation.run.live import ablation_progress, trial_entry
from lora_ablation.run.schedule import ROUND_TWO, Schedule
from lora_ablation.run.schedule import schedule as build_schedule
from lora_ablation.storage.publish import summary_of
from lora_ablation.storage.results import ResultRead
from lora_ablation.summary.build import leaderboard
from lora_ablation.summary.effects_view import beyond_noise
from lora_ablation.summary.models import Summary
from lora_ablation_operator import conditions as c
from lora_ablation_operator.gather import kept_units
from lora_ablation_operator.jobs import preflight_job, preflight_name
from lora_ablation_operator.multinode import unit_workload
from lora_ablation_operator.observe import failure_message, is_trial_job, job_finished
from lora_ablation_operator.planning import Planned, plan_for
from lora_ablation_operator.settings import Settings
from lora_ablation_operator.trial_states import DONE, Judged, judge_all, trial_cost


@dataclass(kw_only=True)
class Observed:
    name: str
    namespace: str
    generation: int | None
    spec: dict[str, Any]
    status: dict[str, Any]
    jobs: dict[str, dict[str, Any]]  # Jobs owned by this ablation, by name
    results: dict[str, ResultRead]  # for trials whose Job completed
    preflight_problems: list[str] | None  # from preflight.json once the preflight Job finished
    now: str
    planned: Planned | None = None  # the handler's cached plan for this generation; computed here when None
    storage_problem: str | None = None  # why results storage could not be read (StorageUnavailable)
    rejected: dict[str, str] = field(default_factory=dict)  # Job name -> why the API server refused to create it
    stuck: dict[str, str] = field(default_factory=dict)  # Job name -> why its pod cannot start
    terminations: dict[str, str] = field(default_factory=dict)  # Job name -> its failed pod's termination message
    # Trial states at the previous pass, as the process remembers them; None after a restart, when the status's
    # (capped) trialStatuses stand in. Events go out on changes from these, so a restart repeats none.
    previous_states: dict[str, str] | None = None
    stage_ones: dict[str, StageOneResult] = field(default_factory=dict)  # two-stage trials' stage-one scores
    failures: dict[str, TrialFailure] = field(default_factory=dict)  # trials that failed inside a multi-trial pod
    schedule: Schedule | None = None  # units and the elimination; computed here when None
    eliminations: dict[str, EliminationDecision] = field(default_factory=dict)  # recorded decisions, by dataset
    progress: dict[str, TrialProgress] = field(default_factory=dict)  # running trials' progress.json (advisory)


@dataclass(kw_only=True)
class Decision:
    create: list[dict[str, Any]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    suspend: list[str] = field(default_factory=list)
    resume: list[str] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    status: dict[str, Any] = field(default_factory=dict)
    summary: Summary | None = None
    all_trial_statuses: list[dict[str, Any]] = field(default_factory=list)  # uncapped, for storage
    trial_states: dict[str, str] | None = None  # every planned trial's state (None before trials are judged)
    # What to record in storage before any Job is created: runs that ended without a file, and decisions.
    failures: list[TrialFailure] = field(default_factory=list)
    eliminations: list[EliminationDecision] = field(default_factory=list)
    finished: bool = False


def _invalid(observed: Observed, message: str, reason: str) -> Decision:
    conds = observed.status.get("conditions") or []
    gen, now = observed.generation, observed.now
    status = {
        "observedGeneration": gen,
        "conditions": [
            c.condition(conds, c.READY, False, reason, message, gen, now),
            c.condition(conds, c.PROGRESSING, False, reason, message, gen, now),
        ],
    }
    events = [("Warning", reason, message)] if _changed(conds, c.READY, reason) else []
    return Decision(status=status, events=events, finished=True)


def _changed(previous: list[dict[str, Any]], type_: str, reason: str) -> bool:
    old = next((x for x in previous if x.get("type") == type_), None)
    return old is None or old.get("reason") != reason


def reconcile(observed: Observed, settings: Settings) -> Decision:
    planned = observed.planned or plan_for(observed.name, observed.namespace, observed.spec, settings)
    if planned.spec is None or planned.plan is None:
        return _invalid(observed, planned.problem or "invalid spec", planned.reason)
    spec, plan = planned.spec, planned.plan
    if observed.storage_problem:
        decision = _storage_unavailable(observed, observed.storage_problem)
        _warnings(observed, planned.guardrails, decision)
        return decision
    decision = Decision()
    if not settings.preflight or _preflight_passed(observed, spec, plan, settings, decision):
        _run_trials(observed, spec, plan, settings, decision)
    _warnings(observed, planned.guardrails, decision)
    return _with_warnings(observed, planned.warnings, decision)


def _with_warnings(observed: Observed, warnings: tuple[str, ...], decision: Decision) -> Decision:
    """Warnings in status (and as events when they change) from the first pass, before any trial Job exists."""
    decision.status["warnings"] = list(warnings) or None  # None removes stale ones from the status
    if warnings and list(warnings) != (observed.status.get("warnings") or []):
        decision.events += [("Warning", c.MEMORY_ESTIMATE, warning) for warning in warnings]
    return decision


def _warnings(observed: Observed, warnings: tuple[str, ...], decision: Decision) -> None:
    """The Warnings condition beside the others, and one Warning event listing the guardrails when they first
    appear for this generation (a re-reconcile repeats nothing)."""
    conds = decision.status.get("conditions")
    if conds is None:
        return
    previous, gen = observed.status.get("conditions") or [], observed.generation
    reason = c.GUARDRAILS if warnings else c.NO_WARNINGS
    message = "; ".join(warnings)
    conds.append(c.condition(previous, c.WARNINGS, bool(warnings), reason, message, gen, observed.now))
    old = next((x for x in previous if x.get("type") == c.WARNINGS), None)
    if warnings and (old is None or old.get("message") != conds[-1]["message"] or old.get("observedGeneration") != gen):
        decision.events.append(("Warning", c.GUARDRAILS, f"{len(warnings)} guardrail warning(s): {message}"))


def _storage_unavailable(observed: Observed, problem: str) -> Decision:
    """Nothing is started or judged while results cannot be read (a completed trial would look ResultsMissing);
    the last known trial states stay as they are."""
    conds, gen, now = observed.status.get("conditions") or [], observed.generation, observed.now
    reason = c.STORAGE_UNAVAILABLE
    status = {
        "conditions": [
            c.condition(conds, c.READY, False, reason, problem, gen, now),
            c.condition(conds, c.PROGRESSING, False, reason, problem, gen, now),
        ]
    }
    events = [("Warning", reason, problem)] if _changed(conds, c.READY, reason) else []
    return Decision(status=status, events=events)


def _preflight_passed(observed: Observed, spec: LoraAblationSpec, plan: Plan, settings: Settings,
                      decision: Decision) -> bool:  # fmt: skip
    name = preflight_name(observed.name, spec)
    job = observed.jobs.get(name)
    if job is not None and job_finished(job, "Complete"):
        return True
    if job is not None and job_finished(job, "Failed"):
        problems = observed.preflight_problems or [failure_message(job)]
        failed = _invalid(observed, "preflight failed: " + "; ".join(problems), c.PREFLIGHT_FAILED)
        decision.status, decision.events, decision.finished = failed.status, failed.events, True
        decision.delete = [n for n, j in observed.jobs.items() if n != name and not job_finished(j, "Complete")]
        return False
    conds, gen, now = observed.status.get("conditions") or [], observed.generation, observed.now
    message = (
        f"preflight Job {name} checks {len(spec.search.module_sets)} module sets and {len(spec.datasets)} datasets"
    )
    ready = progressing = (c.PREFLIGHT_RUNNING, message)
    if job is None and name in observed.rejected:
        ready = progressing = (c.JOB_REJECTED, f"preflight Job {name} rejected by the API server: "
                               f"{observed.rejected[name]}")  # fmt: skip
    elif job is None and not spec.execution.suspend:
        decision.create.append(preflight_job(observed.name, observed.namespace, spec, settings))
        decision.events.append(("Normal", "PreflightStarted", f"{name}: checking modules and data"))
    elif name in observed.stuck:  # as for trials: still running as far as the Job knows, but not progressing
        progressing = (c.TRIAL_STUCK, f"preflight Job {name} cannot start: {observed.stuck[name]}")
    if progressing[0] != c.PREFLIGHT_RUNNING and _changed(conds, c.PROGRESSING, progressing[0]):
        decision.events.append(("Warning", *progressing))
    decision.status = {
        "observedGeneration": gen,
        "conditions": [
            c.condition(conds, c.READY, False, *ready, gen, now),
            c.condition(conds, c.PROGRESSING, progressing[0] == c.PREFLIGHT_RUNNING, *progressing, gen, now),
            c.condition(conds, c.SUSPENDED, spec.execution.suspend,
                        c.SUSPENDED_BY_SPEC if spec.execution.suspend else c.NOT_SUSPENDED, "", gen, now),
        ],
        "progress": f"0/{len(plan.trials)}",
        "trials": {"total": len(plan.trials), "pending": len(plan.trials)},
    }  # fmt: skip
    return False


def _schedule(observed: Observed, spec: LoraAblationSpec, plan: Plan, skipped: Collection[str] = ()) -> Schedule:
    """`skipped`: trials the budget will never start; like failed ones, their dataset decides without them."""
    finished = [n for n, r in observed.results.items() if r is not None and r.result is not None]
    kept = kept_units(observed.jobs, {t.name: t for t in plan.trials})
    return build_schedule(observed.name, plan, spec, observed.stage_ones, finished,
                          set(observed.failures) | set(skipped), recorded=observed.eliminations,
                          kept=kept)  # fmt: skip


def _admission(observed: Observed, spec: LoraAblationSpec, schedule: Schedule, judged: Judged,
               costs: Costs) -> Admission:  # fmt: skip
    # After a refusal nothing more is created this pass: the next Job would most likely be refused alike.
    capacity = 0 if observed.rejected else spec.execution.parallelism - len(judged.active)
    early = spec.search.early_stopping
    by_name = {u.name: u for u in schedule.units}
    return admit(
        candidates=judged.startable, running=[by_name[n] for n in judged.active if n in by_name], capacity=capacity,
        limit_hours=spec.execution.max_gpu_hours, costs=costs,
        done={n for n, (s, _) in judged.states.items() if s in DONE},
        stage_one_fraction=early.stage_one_fraction if early else None,
    )  # fmt: skip


def _run_trials(observed: Observed, spec: LoraAblationSpec, plan: Plan, settings: Settings, decision: Decision) -> None:
    schedule = observed.schedule or _schedule(observed, spec, plan)
    trial_jobs = {n: j for n, j in observed.jobs.items() if is_trial_job(j)}
    records = judge_all(plan.trials, schedule, trial_jobs, dataclasses.replace(observed, schedule=schedule)).records
    if records:  # runs that ended without a file count as recorded now: the decisions they allow are made now too
        observed = dataclasses.replace(observed, failures={**observed.failures, **{f.trial: f for f in records}})
        schedule = _schedule(observed, spec, plan)
    observed = dataclasses.replace(observed, schedule=schedule)
    unit_names = {u.name for u in schedule.units}
    # Trials removed from the spec by an edit (or regrouped): stop their Jobs (results stay in storage).
    decision.delete += sorted(n for n, j in trial_jobs.items() if n not in unit_names and not _terminal_job(j))
    previous = observed.previous_states
    # After a restart the status's capped list stands in: a trial past the cap may have been reported already.
    unknown_reported = previous is None and bool(observed.status.get("trialStatusesTruncated"))
    if previous is None:
        previous = {t.get("name"): t.get("state") for t in observed.status.get("trialStatuses") or []}
    judged = judge_all(plan.trials, schedule, trial_jobs, observed)
    costs = budget_costs({n: r.result for n, r in observed.results.items() if r is not None and r.result},
                         observed.stage_ones)  # fmt: skip
    admission = _admission(observed, spec, schedule, judged, costs)
    unscored = [n for n in admission.skipped if n not in observed.stage_ones]
    if spec.search.early_stopping is not None and unscored:
        # A trial whose stage one the budget never starts leaves its dataset's stage one as finished as it will get.
        schedule = _schedule(observed, spec, plan, skipped=unscored)
        observed = dataclasses.replace(observed, schedule=schedule)
        judged = judge_all(plan.trials, schedule, trial_jobs, observed)
        admission = _admission(observed, spec, schedule, judged, costs)
    states, active = judged.states, judged.active
    decision.failures = records
    decision.eliminations = sorted(schedule.elimination.new.values(), key=lambda d: d.dataset)
    failures = sum(1 for s, _ in states.values() if s in {c.FAILED, c.RESULTS_MISSING})
    too_many = failures > spec.execution.max_failed_trials
    suspended = spec.execution.suspend
    suspended_units = [n for n in active if (trial_jobs[n].get("spec") or {}).get("suspend")]
    if too_many:
        decision.delete += sorted(active)  # stop what is still running: the ablation has failed
    elif suspended:
        decision.suspend += sorted(n for n in active if n not in suspended_units)
    else:
        queued = bool(spec.execution.queue_name)  # Kueue owns suspend on queued Jobs
        decision.resume += sorted(n for n in suspended_units if not queued)
        for name, why in admission.skipped.items():
            if states[name][0] == c.PENDING:
                states[name] = (c.SKIPPED, why)
        for unit in admission.waiting:  # say why a unit waits only when it is the budget's doing
            if (why := admission.reasons.get(unit.name)) and "parallelism" not in why:
                for trial in unit.trials:
                    state, said = states[trial.name]
                    if state == c.PENDING and not (said or "").startswith("stage one scored"):
                        states[trial.name] = (c.PENDING, why)
        for unit in admission.start:
            decision.create.append(unit_workload(observed.name, observed.namespace, spec, unit, settings))
            what = unit.trials[0].label if len(unit.trials) == 1 else f"{len(unit.trials)} trials"
            stage = " (stage one)" if unit.stage_one else " (stage two)" if unit.round == ROUND_TWO else ""
            decision.events.append(("Normal", "TrialStarted", f"{unit.name}: {unit.dataset} {what}{stage}"))
            for trial in unit.trials:
                if states[trial.name][0] == c.PENDING:
                    states[trial.name] = (c.RUNNING, None)
    for trial in plan.trials:
        state, message = states[trial.name]
        if unknown_reported and trial.name not in previous:
            continue
        if previous.get(trial.name) != state and state == c.SUCCEEDED:
            result = observed.results[trial.name].result
            decision.events.append(("Normal", "TrialSucceeded",
                                    f"{trial.name}: {result.eval.metric} {result.eval.score:.4f}"))  # fmt: skip
        elif previous.get(trial.name) != state and state == c.ELIMINATED:
            decision.events.append(("Normal", "TrialEliminated", f"{trial.name}: {message}"))
        elif previous.get(trial.name) != state and state in {c.FAILED, c.RESULTS_MISSING, c.STUCK}:
            reason = {c.FAILED: "TrialFailed", c.RESULTS_MISSING: c.RESULTS_MISSING, c.STUCK: c.TRIAL_STUCK}[state]
            decision.events.append(("Warning", reason, f"{trial.name}: {message}"))
    _status(observed, spec, plan, states, too_many, settings, decision, costs)
    decision.trial_states = {name: state for name, (state, _) in states.items()}


def _terminal_job(job: dict[str, Any]) -> bool:
    return bool(job_finished(job, "Complete") or job_finished(job, "Failed"))


def _status(observed: Observed, spec: LoraAblationSpec, plan: Plan, states: dict[str, tuple[str, str | None]],
            too_many: bool, settings: Settings, decision: Decision, costs: Costs) -> None:  # fmt: skip
    counts = {"total": len(plan.trials), "pending": 0, "running": 0, "stuck": 0, "succeeded": 0, "failed": 0,
              "resultsMissing": 0, "eliminated": 0, "skipped": 0}  # fmt: skip
    key = {c.PENDING: "pending", c.TRIAL_SUSPENDED: "pending", c.RUNNING: "running", c.STUCK: "running",
           c.SUCCEEDED: "succeeded", c.FAILED: "failed", c.RESULTS_MISSING: "resultsMissing",
           c.ELIMINATED: "eliminated", c.SKIPPED: "skipped"}  # fmt: skip
    for state, _ in states.values():
        counts[key[state]] += 1
        counts["stuck"] += state == c.STUCK
    finished_trials = counts["succeeded"] + counts["failed"] + counts["resultsMissing"] + counts["eliminated"]
    # Skipped trials end the ablation only once nothing runs: a finishing trial may leave room in the budget.
    all_done = finished_trials + (counts["skipped"] if not counts["running"] else 0) == len(plan.trials)
    succeeded = {n: observed.results[n].result for n, (s, _) in states.items() if s == c.SUCCEEDED}
    results = list(succeeded.values())
    schedule = observed.schedule
    assert schedule is not None
    summary = summary_of(plan=plan, spec=spec, name=observed.name, namespace=observed.namespace, results=succeeded,
                         elimination=schedule.elimination, stage_ones=observed.stage_ones, costs=costs,
                         skipped=[n for n, (s, _) in states.items() if s == c.SKIPPED])  # fmt: skip
    trial_statuses = []
    for trial in plan.trials:
        state, message = states[trial.name]
        entry: dict[str, Any] = {"name": trial.name, "dataset": trial.spec.dataset.name, "modules": trial.spec.modules,
                                 "rank": trial.spec.rank, "variant": trial.spec.variant, "state": state}  # fmt: skip
        if trial.seed is not None and len(spec.seeds) > 1:
            entry["seed"] = trial.seed
        unit = schedule.current.get(trial.name)
        if unit is not None and unit.name in observed.jobs:
            entry["job"] = unit.name
        if trial.spec.layers != "all":
            entry["layers"] = trial.spec.layers
        if trial.name in observed.stage_ones:
            entry["stageOneScore"] = observed.stage_ones[trial.name].score
        if (cost := trial_cost(observed, trial.name)) is not None:
            entry["gpuSeconds"] = cost
        read = observed.results.get(trial.name)
        if state == c.SUCCEEDED and read and read.result:
            entry["score"] = read.result.eval.score
            if read.result.latency and read.result.latency.adapter:
                entry["tpotP95Ms"] = read.result.latency.adapter.tpot_p95_ms
        if message:
            entry["message"] = message[:512]
        if state in {c.RUNNING, c.STUCK} and trial.name in observed.progress:
            entry["progress"] = trial_entry(observed.progress[trial.name])
        trial_statuses.append(entry)

    conds, gen, now = observed.status.get("conditions") or [], observed.generation, observed.now
    failures = counts["failed"] + counts["resultsMissing"]
    rec = summary.recommendation
    done_text = f"{finished_trials}/{len(plan.trials)} trials done"
    if too_many:
        limit = spec.execution.max_failed_trials
        message = f"{failures} trials failed (maxFailedTrials {limit}); running trials were stopped"
        ready = (False, c.TOO_MANY_FAILURES, message)
    elif all_done and counts["skipped"]:
        first = next(m for s, m in states.values() if s == c.SKIPPED)
        ready = (True, c.BUDGET_EXHAUSTED, f"{done_text}, {counts['skipped']} skipped ({first}); accuracy-first "
                 f"{rec.accuracy_first}, balanced {rec.balanced}")  # fmt: skip
    elif all_done:
        reason = c.COMPLETED_WITH_FAILURES if failures else c.COMPLETED
        eliminated = f", {counts['eliminated']} eliminated after stage one" if counts["eliminated"] else ""
        ready = (True, reason, f"{done_text}{eliminated}; accuracy-first {rec.accuracy_first}, "
                 f"balanced {rec.balanced}")  # fmt: skip
    elif observed.rejected:
        job, why = next(iter(sorted(observed.rejected.items())))
        ready = (False, c.JOB_REJECTED, f"Job {job} rejected by the API server: {why}")
    else:
        ready = (False, c.TRIALS_RUNNING, done_text)
    finished = too_many or all_done
    progressing = (c.SUSPENDED_BY_SPEC if spec.execution.suspend else c.TRIALS_RUNNING, done_text)
    if counts["stuck"]:
        first = next(m for s, m in states.values() if s == c.STUCK)
        progressing = (c.TRIAL_STUCK, f"{done_text}; {counts['stuck']} trial(s) cannot start, first: {first}")
    decision.finished = finished
    decision.status = {
        "observedGeneration": gen,
        "conditions": [
            c.condition(conds, c.READY, ready[0], ready[1], ready[2], gen, now),
            c.condition(conds, c.PROGRESSING, not finished and not spec.execution.suspend,
                        ready[1] if finished else progressing[0], done_text if finished else progressing[1], gen, now),
            c.condition(conds, c.DEGRADED, failures > 0, c.TRIALS_FAILED if failures else c.NO_FAILURES,
                        f"{failures} trial(s) failed or left no result" if failures else "", gen, now),
            c.condition(conds, c.SUSPENDED, spec.execution.suspend,
                        c.SUSPENDED_BY_SPEC if spec.execution.suspend else c.NOT_SUSPENDED, "", gen, now),
        ],
        "progress": f"{finished_trials}/{len(plan.trials)}",
        "bestConfig": summary.configs[0].config if summary.configs else None,
        "trials": counts,
        "trialStatuses": trial_statuses[: settings.max_trial_statuses],
        "trialStatusesTruncated": len(plan.trials) > settings.max_trial_statuses,
        "leaderboard": [e.to_wire() for e in leaderboard(summary, spec.selection.leaderboard_size)],
        "paretoFront": summary.pareto_front,
        "effects": beyond_noise(summary.effects),
        "recommendation": rec.to_wire() if results else None,
        "resultsUri": f"{spec.storage.uri.rstrip('/')}/{observed.namespace}/{observed.name}",
        "gpuHours": round(costs.hours, 4),
        "liveProgress": None if finished else ablation_progress({n: s for n, (s, _) in states.items()},
                                                                observed.progress, spec.execution.parallelism),
    }  # fmt: skip
    if _changed(conds, c.READY, ready[1]) and (finished or ready[1] == c.JOB_REJECTED):
        decision.events.append(("Normal" if ready[0] else "Warning", ready[1], ready[2]))
    decision.summary = summary if results else None
    decision.all_trial_statuses = trial_statuses
