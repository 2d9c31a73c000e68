"""Prometheus metrics of the operator (served on the port the chart's Service scrapes)."""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

TRIALS = Gauge("lora_ablation_trials", "Trials of all ablations by state", ["state"])
RECONCILE_SECONDS = Histogram("lora_ablation_reconcile_seconds", "Time spent in one reconcile of one ablation")
API_REQUESTS = Counter("lora_ablation_api_requests_total", "Kubernetes API requests of reconciles by verb and resource",
                       ["verb", "resource"])  # fmt: skip
API_ERRORS = Counter("lora_ablation_api_errors_total", "Kubernetes API errors by verb, resource and HTTP status",
                     ["verb", "resource", "status"])  # fmt: skip
QUEUE_DEPTH = Gauge("lora_ablation_queue_depth", "Ablations waiting for a reconcile (due now or later)")
EVENT_TO_STATUS_SECONDS = Histogram(
    "lora_ablation_event_to_status_seconds",
    "From a watch event queuing an ablation to its status patched",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
STORAGE_ERRORS = Counter("lora_ablation_storage_errors_total", "Failed reads and writes of results storage")

# Per ablation (the number of ablations bounds the series; none per trial), removed with the ablation.
PROGRESS = Gauge("lora_ablation_progress_ratio", "Share of an ablation's trials done, running ones by their steps",
                 ["namespace", "ablation"])  # fmt: skip
ETA_SECONDS = Gauge("lora_ablation_eta_seconds", "Estimated seconds until an ablation's trials are done",
                    ["namespace", "ablation"])  # fmt: skip
REPORTING = Gauge("lora_ablation_trials_reporting_progress", "Running trials of an ablation that report progress",
                  ["namespace", "ablation"])  # fmt: skip

_per_ablation: dict[tuple[str, str], dict[str, int]] = {}


def record_trials(namespace: str, name: str, counts: dict[str, int] | None) -> None:
    """Keep the per-state totals summed over ablations (labels per ablation would explode cardinality)."""
    if counts is None:
        _per_ablation.pop((namespace, name), None)
    else:
        _per_ablation[(namespace, name)] = {k: v for k, v in counts.items() if k != "total"}
    totals: dict[str, int] = {}
    for per in _per_ablation.values():
        for state, value in per.items():
            totals[state] = totals.get(state, 0) + value
    for state in ("pending", "running", "stuck", "succeeded", "failed", "resultsMissing"):
        TRIALS.labels(state).set(totals.get(state, 0))


def record_progress(namespace: str, name: str, live: dict[str, Any] | None) -> None:
    """The ablation's live progress (status.liveProgress); None (finished, deleted, nothing ran yet) removes its
    series, so a gauge never shows a stale ETA."""
    live = live or {}
    values = {PROGRESS: live["percent"] / 100 if "percent" in live else None, REPORTING: live.get("reporting"),
              ETA_SECONDS: live.get("etaSeconds")}  # fmt: skip
    for gauge, value in values.items():
        if value is not None:
            gauge.labels(namespace, name).set(value)
        else:
            with contextlib.suppress(KeyError):  # no such series
                gauge.remove(namespace, name)


def serve(port: int) -> None:
    start_http_server(port)
