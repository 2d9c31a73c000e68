"""One trial lifecycle for the operator and the local runner: from the evidence about a trial (its files in
storage, its dataset's recorded decision, and what its unit's workload is doing now) to its state and why. Pure.

Storage is the record and the workload only the means: a file or a recorded decision settles the state whatever
the workload says, and a finished trial stays finished when its workload is deleted. The workload's own word
counts only while there is nothing in storage yet (running, stuck, suspended; failed or complete without a file,
which the caller then records as failure.json so that it outlives the workload)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from lora_ablation.api.stages import StageOneResult, TrialFailure
from lora_ablation.api.trial import TrialResult
from lora_ablation.api.trial_state import TrialState


class Run(str, Enum):
    """What the workload of a trial's current unit is doing, as the workload adapter reports it (a Job, JobSet or
    TrainJob in the operator; a subprocess in the local runner)."""

    none = "none"  # no workload: not created yet, or deleted
    running = "running"
    suspended = "suspended"
    stuck = "stuck"  # running as far as the workload knows, but a pod cannot start
    failed = "failed"
    complete = "complete"


@dataclass(frozen=True, kw_only=True)
class Evidence:
    dataset: str
    baseline: bool = False
    result: TrialResult | None = None  # a valid result.json
    result_problem: str | None = None  # why a result.json that exists cannot be used
    stage_one: StageOneResult | None = None
    failure: TrialFailure | None = None  # failure.json: the trainer's, or a recorded failed run
    eliminated: str | None = None  # why, when its dataset's recorded decision eliminated it
    survivor: bool = False  # scored in stage one and going on: its dataset's decision kept it, or one stage only
    in_stage_one: bool = False  # its current unit stops at the stage-one checkpoint
    run: Run = Run.none
    run_message: str | None = None  # why the workload failed or is stuck; or why it could not be created
    companions: int = 0  # other trials in the same workload


@dataclass(frozen=True)
class Judgement:
    state: TrialState
    why: str | None = None
    # The run ended without a file: the caller records it (failure.json) so that deleting the workload changes nothing.
    record: TrialFailure | None = None


def judge(trial: str, evidence: Evidence, recorder: str = "operator") -> Judgement:
    """The state of `trial` and why; `recorder` signs the failure.json to record when the run ended without one."""
    e = evidence
    if e.result is not None:
        return Judgement(TrialState.succeeded)
    if e.failure is not None:
        return Judgement(TrialState(e.failure.state), e.failure.message)
    if e.eliminated is not None:
        return Judgement(TrialState.eliminated, e.eliminated)
    if e.stage_one is not None and not e.survivor:
        s = e.stage_one
        return Judgement(TrialState.pending, f"stage one scored {s.score:.4f} at step {s.step} of {s.steps}; waiting "
                                             f"for the other configurations on {e.dataset}")  # fmt: skip
    if e.stage_one is not None and e.in_stage_one:  # its stage-one run wrote what it had to; round two is next
        return Judgement(TrialState.pending, "survived stage one; waiting to resume")
    if e.run == Run.failed:
        message = e.run_message or "failed"
        return Judgement(TrialState.failed, message, TrialFailure(trial=trial, message=message[:4000], exit_code=1,
                                                                  recorded_by=recorder))  # fmt: skip
    if e.run == Run.complete:
        wrote = "stage-one.json" if e.in_stage_one and not e.baseline else "result.json"
        message = e.result_problem or f"the run succeeded but left no {wrote}"
        record = TrialFailure(trial=trial, message=message[:4000], exit_code=0, state="ResultsMissing",
                              recorded_by=recorder)  # fmt: skip
        return Judgement(TrialState.results_missing, message, record)
    if e.run == Run.suspended:
        return Judgement(TrialState.suspended)
    if e.run == Run.stuck:
        return Judgement(TrialState.stuck, e.run_message)
    if e.run == Run.running:
        return Judgement(TrialState.running, f"with {e.companions} other trial(s) in one run" if e.companions else None)
    if e.stage_one is not None:
        return Judgement(TrialState.pending, "survived stage one; waiting to resume")
    return Judgement(TrialState.pending, e.run_message)
