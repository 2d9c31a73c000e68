"""Condition types and reasons, in one place (kubernetes API conventions: conditions, not a phase)."""

from __future__ import annotations

from typing import Any

from lora_ablation.api.trial_state import TERMINAL as TRIAL_TERMINAL
from lora_ablation.api.trial_state import TrialState

# Types
READY = "Ready"  # True once the ablation finished and its summary is in status and storage
PROGRESSING = "Progressing"  # True while preflight or trials are running
DEGRADED = "Degraded"  # True when some trials failed or left no result
SUSPENDED = "Suspended"  # True while spec.execution.suspend is set
WARNINGS = "Warnings"  # True when the spec breaks a plan-time guardrail (advice from the seeds; never blocking)

# Reasons
INVALID_SPEC = "InvalidSpec"
FORBIDDEN = "Forbidden"  # the spec names something the admin policy refuses (policy.py)
PREFLIGHT_RUNNING = "PreflightRunning"
PREFLIGHT_FAILED = "PreflightFailed"
TRIALS_RUNNING = "TrialsRunning"
COMPLETED = "Completed"
COMPLETED_WITH_FAILURES = "CompletedWithFailures"
TOO_MANY_FAILURES = "TooManyFailedTrials"
TRIALS_FAILED = "TrialsFailed"
NO_FAILURES = "NoFailures"
SUSPENDED_BY_SPEC = "SuspendedBySpec"
NOT_SUSPENDED = "NotSuspended"
STORAGE_UNAVAILABLE = "StorageUnavailable"  # results storage unreachable or access denied (message says which)
JOB_REJECTED = "JobRejected"  # the API server refused a Job (quota, admission webhook, invalid field)
MEMORY_ESTIMATE = "MemoryEstimate"  # event: a configuration is estimated not to fit the GPU's memory
TRIAL_STUCK = "TrialStuck"  # a pod cannot start (image pull, missing Secret, unschedulable)
GUARDRAILS = "GuardrailsTriggered"  # Warnings: the message lists each rule, its field and its source
NO_WARNINGS = "NoWarnings"
BUDGET_EXHAUSTED = "BudgetExhausted"  # execution.maxGpuHours reached: nothing more starts; what finished is summarised

# Trial states (status.trialStatuses[].state): lora_ablation.api.trial_state owns them; plain strings here
PENDING, RUNNING, STUCK, SUCCEEDED, FAILED, RESULTS_MISSING, TRIAL_SUSPENDED, ELIMINATED, SKIPPED = (
    TrialState.pending.value, TrialState.running.value, TrialState.stuck.value, TrialState.succeeded.value,
    TrialState.failed.value, TrialState.results_missing.value, TrialState.suspended.value,
    TrialState.eliminated.value, TrialState.skipped.value,
)  # fmt: skip
TERMINAL = frozenset(state.value for state in TRIAL_TERMINAL)


def condition(
    previous: list[dict[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
) -> dict[str, Any]:
    """A condition dict; lastTransitionTime moves only when the status value changes."""
    value = "True" if status else "False"
    old = next((c for c in previous if c.get("type") == type_), None)
    since = old["lastTransitionTime"] if old and old.get("status") == value and old.get("lastTransitionTime") else now
    return {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message[:1024],
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }
