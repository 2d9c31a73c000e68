"""One lifecycle for the operator and the local runner: lifecycle.judge decides every trial state from evidence,
and both workload adapters (a Job, JobSet or TrainJob in the operator; a subprocess's exit code locally) hand it
the same evidence for the same run, so both report the same state."""

from __future__ import annotations

import pytest

from lora_ablation.api.stages import StageOneResult, TrialFailure
from lora_ablation.api.trial import TrialResult
from lora_ablation.api.trial_state import TERMINAL, TrialState
from lora_ablation.local.runner import run_of_exit
from lora_ablation.run.lifecycle import Evidence, Run, judge
from lora_ablation_operator import workload

RESULT = TrialResult.model_validate({"ablation": "a", "trial": "t", "dataset": "d", "variant": "lora",
                                     "eval": {"metric": "accuracy", "score": 0.5, "samples": 10}})  # fmt: skip
STAGE_ONE = StageOneResult(trial="t", dataset="d", step=2, steps=8, metric="accuracy", score=0.4, samples=5)
FAILURE = TrialFailure(trial="t", message="line 3 is not JSON", exit_code=42)
S = TrialState

# evidence -> (state, whether the caller must record the run as failure.json)
TABLE = [
    (dict(result=RESULT, run=Run.failed), S.succeeded, False),  # storage settles it, whatever the workload says
    (dict(result=RESULT), S.succeeded, False),  # its Job deleted: still succeeded
    (dict(failure=FAILURE, run=Run.running), S.failed, False),  # failed inside a pod that goes on
    (dict(failure=FAILURE.model_copy(update={"state": "ResultsMissing"})), S.results_missing, False),
    (dict(eliminated="below the cutoff", stage_one=STAGE_ONE), S.eliminated, False),
    (dict(stage_one=STAGE_ONE, run=Run.complete, in_stage_one=True), S.pending, False),  # waits for the others
    (dict(stage_one=STAGE_ONE, survivor=True), S.pending, False),  # survived; its round two is not created yet
    (dict(stage_one=STAGE_ONE, survivor=True, run=Run.running), S.running, False),
    (dict(run=Run.failed, run_message="failed after 3 attempts"), S.failed, True),
    (dict(run=Run.complete), S.results_missing, True),
    (dict(run=Run.complete, result_problem="result.json is not valid JSON"), S.results_missing, True),
    (dict(run=Run.suspended), S.suspended, False),
    (dict(run=Run.stuck, run_message="pod x: ImagePullBackOff"), S.stuck, False),
    (dict(run=Run.running), S.running, False),
    (dict(), S.pending, False),  # nothing yet, or its workload deleted before anything was written
]


@pytest.mark.parametrize(("given", "state", "records"), TABLE)
def test_the_lifecycle_table(given, state, records):
    judged = judge("t", Evidence(dataset="d", **given))
    assert judged.state == state
    assert (judged.record is not None) == records
    if records:  # what is recorded reads back as the same state, with no workload at all
        again = judge("t", Evidence(dataset="d", failure=judged.record))
        assert again.state == state and again.why == judged.why and again.state in TERMINAL


def _job(condition: str | None) -> dict:
    conditions = [{"type": condition, "status": "True", "reason": "BackoffLimitExceeded"}] if condition else []
    return {"metadata": {"name": "t"}, "status": {"conditions": conditions}}


@pytest.mark.parametrize(("job", "code"), [(_job("Failed"), 1), (_job("Complete"), 0), (_job(None), None)])
@pytest.mark.parametrize("files", [{}, {"result": RESULT}, {"stage_one": STAGE_ONE, "in_stage_one": True}])
def test_operator_and_local_runner_judge_the_same_run_alike(job, code, files):
    operator_run, _ = workload.run_of(job)
    local_run = run_of_exit(code)
    assert operator_run == local_run
    operator = judge("t", Evidence(dataset="d", run=operator_run, **files))
    local = judge("t", Evidence(dataset="d", run=local_run, **files), recorder="runner")
    assert operator.state == local.state
    assert (operator.record is None) == (local.record is None)
