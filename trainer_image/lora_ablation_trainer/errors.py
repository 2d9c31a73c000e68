"""Failures the operator can act on, mapped to process exit codes.

Kubernetes sees only the exit code. A Job's podFailurePolicy fails the Job at once on EXIT_PERMANENT
(retrying a bad config or a module the model lacks only burns GPU time) and lets the backoffLimit
retry EXIT_TRANSIENT (storage or hub briefly unreachable). Anything else (a crash, an OOM kill) is
retried like a transient failure.
"""

from __future__ import annotations

from lora_ablation.api.contract import EXIT_OK, EXIT_PERMANENT, EXIT_TRANSIENT

__all__ = ["EXIT_OK", "EXIT_PERMANENT", "EXIT_TRANSIENT", "DataError", "PermanentTrialError", "TransientTrialError"]


class TrialError(Exception):
    exit_code = EXIT_PERMANENT


class PermanentTrialError(TrialError):
    """Retrying cannot help: the input is wrong."""

    exit_code = EXIT_PERMANENT


class TransientTrialError(TrialError):
    """Retrying may help: something outside the trial was unavailable."""

    exit_code = EXIT_TRANSIENT


class DataError(PermanentTrialError):
    """A dataset file that cannot be used; the message names the file and line."""
