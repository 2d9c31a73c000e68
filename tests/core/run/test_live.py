"""The ablation's share done and ETA from its running trials' progress (what the status and the runner show)."""

from __future__ import annotations

import pytest

from lora_ablation.api.progress import TrialProgress
from lora_ablation.run.live import ablation_progress, duration, trial_entry


def report(trial: str, step: int, total: int = 100, eta: float | None = 100.0) -> TrialProgress:
    return TrialProgress(trial=trial, step=step, total_steps=total, elapsed_seconds=float(step), eta_seconds=eta,
                         updated_at="2026-01-01T00:00:00Z")  # fmt: skip


def test_nothing_running_has_no_live_progress():
    assert ablation_progress({"a": "Pending", "b": "Succeeded"}, {}, 2) is None
    assert ablation_progress({}, {}, 2) is None


def test_running_without_reports_has_a_share_but_no_eta():
    assert ablation_progress({"a": "Running", "b": "Succeeded"}, {}, 2) == {"percent": 50.0, "reporting": 0}


def test_pending_trials_add_waves_of_parallelism():
    states = {"a": "Running", "b": "Running", **{f"p{i}": "Pending" for i in range(5)}, "f": "Failed"}
    progress = {"a": report("a", 50, eta=50.0), "b": report("b", 20, eta=80.0)}
    live = ablation_progress(states, progress, parallelism=2)
    # The longest running trial's 80 s, then 3 waves (5 pending, 2 at a time) of the mean length (100 s).
    assert live == {"percent": round(100 * (1 + 0.5 + 0.2) / 8, 1), "reporting": 2, "etaSeconds": 380,
                    "eta": "6m20s"}  # fmt: skip


def test_a_report_of_a_trial_no_longer_running_is_not_counted():
    assert ablation_progress({"a": "Succeeded", "b": "Running"}, {"a": report("a", 99)}, 1) == {
        "percent": 50.0, "reporting": 0}  # fmt: skip


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (7.4, "7s"), (95, "1m35s"), (3725, "1h02m"),
                                               (200000, "2d07h")])  # fmt: skip
def test_durations_read_for_people(seconds, text):
    assert duration(seconds) == text


def test_a_status_entry_leaves_out_what_the_trial_did_not_say():
    assert trial_entry(report("a", 0, eta=None)) == {"step": 0, "totalSteps": 100, "percent": 0.0,
                                                     "updatedAt": "2026-01-01T00:00:00Z"}  # fmt: skip
