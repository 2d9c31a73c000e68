"""A trial's state: the one vocabulary of the operator, the local runner and the CRD (status.trialStatuses[].state),
and which states are final. Kept next to the API types, as kuberay keeps its terminal-state helpers."""

from __future__ import annotations

from enum import Enum


class TrialState(str, Enum):
    pending = "Pending"  # not started yet, or waiting (for parallelism, the budget's probe, its dataset's stage one)
    running = "Running"  # its workload runs
    stuck = "Stuck"  # its workload exists but a pod cannot start (image pull, missing Secret, unschedulable)
    succeeded = "Succeeded"  # a valid result.json
    failed = "Failed"  # its run failed for good (failure.json, or a failed workload recorded as one)
    results_missing = "ResultsMissing"  # its run ended without leaving what it had to write
    suspended = "Suspended"  # its workload is suspended (spec.execution.suspend, or a queue holds it)
    eliminated = "Eliminated"  # stopped after stage one by its dataset's recorded decision
    skipped = "Skipped"  # never started: execution.maxGpuHours would have been exceeded

    def __str__(self) -> str:
        return self.value


# Final: nothing more runs for the trial, and neither an edit nor a deleted workload makes it run again.
TERMINAL = frozenset({TrialState.succeeded, TrialState.failed, TrialState.results_missing, TrialState.eliminated})
FAILED = frozenset({TrialState.failed, TrialState.results_missing})  # what counts against maxFailedTrials
ACTIVE = frozenset({TrialState.running, TrialState.stuck, TrialState.suspended})  # a workload exists for it


def is_terminal(state: TrialState | str) -> bool:
    return TrialState(state) in TERMINAL
