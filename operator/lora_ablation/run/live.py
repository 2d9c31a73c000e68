"""Live progress of running trials as the operator's status and the local runner show it: per trial, and the
ablation's share done and ETA. Pure: the operator (collector.ProgressCache) and the runner read the files.
Advisory: nothing here decides a trial's state."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any

from lora_ablation.api.contract import PROGRESS_SECONDS, PROGRESS_SECONDS_ENV
from lora_ablation.api.progress import TrialProgress
from lora_ablation.api.trial_state import TrialState

log = logging.getLogger(__name__)
_DONE = {s.value for s in (TrialState.succeeded, TrialState.failed, TrialState.results_missing,
                           TrialState.eliminated, TrialState.skipped)}  # fmt: skip
_RUNNING = {TrialState.running.value, TrialState.stuck.value}
_WAITING = {TrialState.pending.value, TrialState.suspended.value}


def interval_from_env(environ: Mapping[str, str] | None = None) -> float:
    """The write interval in seconds; a value that is not a finite non-negative number is warned about and the
    default used (a typo must not stop a trial)."""
    raw = (os.environ if environ is None else environ).get(PROGRESS_SECONDS_ENV, "")
    if not raw.strip():
        return PROGRESS_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        log.warning("%s=%r is not a number of seconds >= 0; using %g", PROGRESS_SECONDS_ENV, raw, PROGRESS_SECONDS)
        return PROGRESS_SECONDS
    return value


def trial_entry(progress: TrialProgress) -> dict[str, Any]:
    """The `progress` of one trial's status entry."""
    entry: dict[str, Any] = {
        "step": progress.step,
        "totalSteps": progress.total_steps,
        "percent": round(100 * progress.fraction, 1),
        "updatedAt": progress.updated_at,
    }
    if progress.train_loss is not None:
        entry["trainLoss"] = round(progress.train_loss, 5)
    if progress.tokens_per_second is not None:
        entry["tokensPerSecond"] = round(progress.tokens_per_second, 1)
    if progress.eta_seconds is not None:
        entry["etaSeconds"] = round(progress.eta_seconds)
    if progress.eval is not None:
        entry["evalStep"], entry["evalScore"] = progress.eval.step, progress.eval.score
    return entry


def trial_line(progress: TrialProgress) -> str:
    """One running trial's progress for people: 'step 40/100 (40%) loss 1.5000, 4096 tok/s, ETA 2m00s'."""
    parts = [f"step {progress.step}/{progress.total_steps} ({100 * progress.fraction:.0f}%)"]
    if progress.train_loss is not None:
        parts[0] += f" loss {progress.train_loss:.4f}"
    if progress.tokens_per_second is not None:
        parts.append(f"{progress.tokens_per_second:.0f} tok/s")
    if progress.eta_seconds is not None:
        parts.append(f"ETA {duration(progress.eta_seconds)}")
    if progress.eval is not None:
        parts.append(f"eval {progress.eval.score:.4f} at step {progress.eval.step}")
    return ", ".join(parts)


def duration(seconds: float) -> str:
    """3725 -> '1h02m', 95 -> '1m35s', 7 -> '7s'."""
    whole = round(seconds)
    if whole >= 86400:
        return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    if whole >= 60:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole}s"


def ablation_progress(states: Mapping[str, str], progress: Mapping[str, TrialProgress],
                      parallelism: int) -> dict[str, Any] | None:  # fmt: skip
    """The ablation's share done (finished trials count whole, running ones by their steps) and, once a running
    trial reports, its ETA: the longest running trial's time left, plus the pending trials in waves of
    `parallelism`, each as long as the reporting trials' mean duration so far. None before anything runs."""
    total = len(states)
    running = [n for n, s in states.items() if s in _RUNNING]
    if not total or not (running or progress):
        return None
    reporting = [progress[n] for n in running if n in progress]
    done = sum(1 for s in states.values() if s in _DONE)
    share = (done + sum(p.fraction for p in reporting)) / total
    out: dict[str, Any] = {"percent": round(100 * min(share, 1.0), 1), "reporting": len(reporting)}
    etas = [p.eta_seconds for p in reporting if p.eta_seconds is not None]
    if etas:
        lengths = [p.elapsed_seconds + p.eta_seconds for p in reporting if p.eta_seconds is not None]
        pending = sum(1 for s in states.values() if s in _WAITING)
        waves = math.ceil(pending / max(parallelism, 1))
        eta = max(etas) + waves * (sum(lengths) / len(lengths))
        out["etaSeconds"] = round(min(eta, 1e9))
        out["eta"] = duration(out["etaSeconds"])
    return out
