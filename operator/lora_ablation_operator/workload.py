"""The one place that answers, for any workload a unit runs as (a Job, or a JobSet or TrainJob in the compact
Job-like form observe/multinode keep), what it is doing: finished, failed, suspended, running, and which trials it
runs. Like kueue's GenericJob, so nothing else reads Job conditions. Pure."""

from __future__ import annotations

from typing import Any

from lora_ablation.planning.plan import PlannedTrial
from lora_ablation.run.lifecycle import Run
from lora_ablation.run.schedule import ROUND_ONE, ROUND_TWO, Unit
from lora_ablation_operator.jobs import STAGE_ANNOTATION, TRIALS_ANNOTATION
from lora_ablation_operator.observe import UNIT_ANNOTATIONS, failure_message, is_trial_job, job_finished


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def finished(job: dict[str, Any] | None) -> bool:
    return job is not None and bool(job_finished(job, "Complete") or job_finished(job, "Failed"))


def run_of(job: dict[str, Any] | None, *, stuck: str | None = None, termination: str | None = None,
           rejected: str | None = None) -> tuple[Run, str | None]:  # fmt: skip
    """(what the workload does, why) for a unit's workload, None when there is none."""
    if job is None:
        return Run.none, (f"Job rejected by the API server: {rejected}" if rejected else None)
    if job_finished(job, "Failed"):
        return Run.failed, failure_message(job) + (f"; trainer: {termination}" if termination else "")
    if job_finished(job, "Complete"):
        return Run.complete, None
    if _dict(job.get("spec")).get("suspend"):
        return Run.suspended, None
    if stuck:
        return Run.stuck, stuck
    return Run.running, None


def annotations(job: dict[str, Any]) -> dict[str, str]:
    found = _dict(_dict(job.get("metadata")).get("annotations"))
    return {k: str(v) for k, v in found.items() if k in UNIT_ANNOTATIONS}


def trial_names(job: dict[str, Any]) -> list[str]:
    return [t for t in annotations(job).get(TRIALS_ANNOTATION, "").split(",") if t]


def unit_of(name: str, job: dict[str, Any], planned: dict[str, PlannedTrial],
            named: dict[str, tuple[str, ...]]) -> Unit | None:  # fmt: skip
    """The unit an existing trial workload runs, from its own annotations (which trials, which stage), restricted to
    the trials still planned; None when it runs none of them (removed by an edit) or is not a trial workload.
    `named`: unit name -> trials, for workloads of older operators that did not list their trials."""
    if not is_trial_job(job):
        return None
    notes = annotations(job)
    if TRIALS_ANNOTATION in notes:
        trials = tuple(t for t in notes[TRIALS_ANNOTATION].split(",") if t)
    elif name in planned:
        trials = (name,)
    else:
        trials = named.get(name, ())
    members = tuple(planned[t] for t in trials if t in planned)
    if not members:
        return None
    stage = notes.get(STAGE_ANNOTATION)
    round_ = ROUND_TWO if stage == "stage-two" else ROUND_ONE
    return Unit(name, round_, members[0].spec.dataset.name, members, stage_one=stage == "stage-one")
