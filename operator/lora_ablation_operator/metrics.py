"""Prometheus metrics of the operator (served on the port the chart's Service scrapes)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

TRIALS = Gauge("lora_ablation_trials", "Trials of all ablations by state", ["state"])
RECONCILE_SECONDS = Histogram("lora_ablation_reconcile_seconds", "Time spent in one reconcile of one ablation")
API_REQUESTS = Counter("lora_ablation_api_requests_total", "Kubernetes API requests of reconciles by verb and resource",
                       ["verb", "resource"])  # fmt: skip
API_ERRORS = Counter("lora_ablation_api_errors_total", "Kubernetes API errors by verb, resource and HTTP status",
                     ["verb", "resource", "status"])  # fmt: skip
QUEUE_DEPTH = Gauge("lora_ablation_queue_depth", "Ablations waiting for a reconcile (due now or later)")
EVENT_TO_STATUS_SECONDS = Histogram(
    "lora_ablation_event_to_status_seconds", "From a watch event queuing an ablation to its status patched",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
STORAGE_ERRORS = Counter("lora_ablation_storage_errors_total", "Failed reads and writes of results storage")

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


def serve(port: int) -> None:
    start_http_server(port)
