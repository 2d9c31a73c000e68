"""Operator settings from the environment (the Helm chart sets them); defaults suit a plain cluster."""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field

from lora_ablation.api.execution import ENGINES
from lora_ablation.api.spec import MAX_TRIALS
from lora_ablation_operator.policy import EFFECTS, GPU_LABELS, GPU_TAINT, Policy, parse_list


def _env(name: str, default: str) -> str:
    return os.environ.get(f"LORA_ABLATION_{name}", default)


@dataclass(frozen=True)
class Settings:
    trainer_image: str = "ghcr.io/lora-ablation/trainer:0.1.0"  # used when spec.execution.image is unset
    default_storage_endpoint: str | None = None  # applied when spec.storage.endpoint is unset (e.g. in-cluster MinIO)
    default_credentials_secret: str | None = None  # Secret name when spec.storage.credentialsSecretRef is unset
    preflight: bool = True  # run the CPU preflight Job before any GPU trial
    preflight_cpu: str = "1"
    preflight_memory: str = "4Gi"
    # Reconciles are driven by watch events (the ablation, its Jobs, its pods); this is only the safety net for
    # anything a watch could miss: a full pass over every unfinished ablation this often, in seconds.
    resync_interval: float = 300.0
    batch_window: float = 0.1  # seconds an event waits so that a burst (Jobs finishing together) becomes one pass
    # Seconds between two passes of one ablation at least: under a stream of events (hundreds of trials ending
    # within a minute) its status is rewritten at most this often, not once per batch window.
    min_pass_interval: float = 1.0
    workers: int = 8  # ablations reconciled at once (threads: storage and API calls block)
    # A cap on reconciles' own API requests (token bucket), against a runaway loop: the API server's Priority and
    # Fairness is what shares it among clients. Chosen from tests/benchmarks/operator_scale.py: 100 ablations of
    # 10 trials issue ~1,200 requests at apply; at 100/s the cap alone made Job creation 5.6x a bare client loop.
    api_qps: float = 500.0
    api_burst: int = 1000
    watch_timeout: float = 300.0  # seconds the API server keeps a watch open before Kopf re-establishes it
    backoff_base: float = 1.0  # first retry delay after a failed pass or a refused Job, doubled each time
    backoff_max: float = 300.0  # longest retry delay
    metrics_port: int = 0  # Prometheus metrics port; 0 serves none
    max_trial_statuses: int = 200  # status.trialStatuses cap; etcd objects are limited to ~1.5 MiB
    max_trials: int = MAX_TRIALS  # trials one ablation may plan; the chart's maxTrials can lower it
    summary_interval: float = 30.0  # seconds between summary.json writes while results come in (always at the end)
    result_recheck_seconds: float = 300.0  # how often a collected result.json is checked for a rewrite (ETag/size)
    progress_recheck_seconds: float = 30.0  # how often a running trial's progress.json is read (one request each)
    unschedulable_after: float = 600.0  # a pod Unschedulable this long makes its trial Stuck (autoscalers are slow)
    storage_timeout: float = 5.0  # seconds per storage request: a handler thread must never hang on storage
    storage_retries: int = 2  # botocore attempts per storage request
    delete_retries: int = 5  # deletion tries to remove results (retainOnDelete: false) before letting the object go
    delete_retry_delay: float = 10.0  # seconds between those tries
    run_as_user: int = 10001
    extra_labels: dict[str, str] = field(default_factory=dict)
    # What a LoraAblation may name (policy.py); the default allows only the operator's own image, Secret and
    # endpoint, no other ServiceAccount, no bucket, no claim, no PriorityClass and no affinity, the GPU taint and
    # GPU labels only: an admin lists what each cluster needs.
    policy: Policy = field(default_factory=Policy)
    peering_priority: int = 0  # Kopf peering: replicas of one priority all freeze, so each takes its own
    # Trials of more than one node (execution.nodes > 1): off unless the cluster has the engine (its CRD and
    # controller; the chart grants the kind's verbs only then). JobSet or TrainJob (multinode.py); a TrainJob names
    # this runtime.
    multi_node_enabled: bool = False
    multi_node_engine: str = "JobSet"
    training_runtime: str = "torch-distributed"

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            trainer_image=_env("TRAINER_IMAGE", cls.trainer_image),
            default_storage_endpoint=_env("STORAGE_ENDPOINT", "") or None,
            default_credentials_secret=_env("CREDENTIALS_SECRET", "") or None,
            preflight=_env("PREFLIGHT", "true").lower() not in {"0", "false", "no"},
            preflight_cpu=_env("PREFLIGHT_CPU", cls.preflight_cpu),
            preflight_memory=_env("PREFLIGHT_MEMORY", cls.preflight_memory),
            resync_interval=float(_env("RESYNC_INTERVAL", str(cls.resync_interval))),
            batch_window=float(_env("BATCH_WINDOW", str(cls.batch_window))),
            min_pass_interval=float(_env("MIN_PASS_INTERVAL", str(cls.min_pass_interval))),
            workers=max(1, int(_env("WORKERS", str(cls.workers)))),
            api_qps=float(_env("API_QPS", str(cls.api_qps))),
            api_burst=max(1, int(_env("API_BURST", str(cls.api_burst)))),
            watch_timeout=float(_env("WATCH_TIMEOUT", str(cls.watch_timeout))),
            backoff_base=float(_env("BACKOFF_BASE", str(cls.backoff_base))),
            backoff_max=float(_env("BACKOFF_MAX", str(cls.backoff_max))),
            metrics_port=int(_env("METRICS_PORT", "0")),
            max_trial_statuses=int(_env("MAX_TRIAL_STATUSES", str(cls.max_trial_statuses))),
            max_trials=min(MAX_TRIALS, int(_env("MAX_TRIALS", str(MAX_TRIALS)))),
            summary_interval=float(_env("SUMMARY_INTERVAL", str(cls.summary_interval))),
            result_recheck_seconds=float(_env("RESULT_RECHECK_SECONDS", str(cls.result_recheck_seconds))),
            progress_recheck_seconds=max(0.1, float(_env("PROGRESS_RECHECK_SECONDS", "30"))),
            unschedulable_after=float(_env("UNSCHEDULABLE_AFTER", str(cls.unschedulable_after))),
            storage_timeout=float(_env("STORAGE_TIMEOUT", str(cls.storage_timeout))),
            storage_retries=int(_env("STORAGE_RETRIES", str(cls.storage_retries))),
            delete_retries=int(_env("DELETE_RETRIES", str(cls.delete_retries))),
            delete_retry_delay=float(_env("DELETE_RETRY_DELAY", str(cls.delete_retry_delay))),
            policy=policy_from_env(),
            peering_priority=peering_priority(_env("POD_NAME", "")),
            multi_node_enabled=_env("MULTI_NODE_ENABLED", "false").lower() in {"1", "true", "yes"},
            multi_node_engine=multi_node_engine(_env("MULTI_NODE_ENGINE", cls.multi_node_engine)),
            training_runtime=_env("TRAINING_RUNTIME", cls.training_runtime),
        )


def multi_node_engine(value: str) -> str:
    """The operator refuses to start on an engine it cannot build, rather than failing every multi-node trial."""
    if value not in ENGINES:
        raise ValueError(f"LORA_ABLATION_MULTI_NODE_ENGINE={value!r}: expected one of {', '.join(ENGINES)}")
    return value


def peering_priority(pod_name: str) -> int:
    """A priority of its own for each replica (the chart passes the pod name): Kopf pauses replicas that see a
    higher priority and freezes all of them when two share one. 1..2**31 so it is never the default 0."""
    return zlib.crc32(pod_name.encode()) % (2**31 - 1) + 1 if pod_name else 0


def policy_from_env() -> Policy:
    """LORA_ABLATION_POLICY_<RULE>: comma-separated lists (the chart joins its policy values)."""
    return Policy(
        image_repositories=parse_list(_env("POLICY_IMAGE_REPOSITORIES", "")),
        image_digests=parse_list(_env("POLICY_IMAGE_DIGESTS", "")),
        service_accounts=parse_list(_env("POLICY_SERVICE_ACCOUNTS", "")),
        secrets=parse_list(_env("POLICY_SECRETS", "")),
        buckets=parse_list(_env("POLICY_BUCKETS", "")),
        storage_endpoints=parse_list(_env("POLICY_STORAGE_ENDPOINTS", "")),
        tracking_uris=parse_list(_env("POLICY_TRACKING_URIS", "")),
        claims=parse_list(_env("POLICY_CLAIMS", "")),
        priority_classes=parse_list(_env("POLICY_PRIORITY_CLASSES", "")),
        toleration_keys=parse_list(_env("POLICY_TOLERATION_KEYS", GPU_TAINT)),
        toleration_effects=parse_list(_env("POLICY_TOLERATION_EFFECTS", ",".join(EFFECTS))),
        node_selectors=parse_list(_env("POLICY_NODE_SELECTORS", ",".join(GPU_LABELS))),
        affinity=_env("POLICY_AFFINITY", "false").lower() in {"1", "true", "yes"},
    )
