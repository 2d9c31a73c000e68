"""MLflow runs of an ablation: one run per ablation (the parent), one child run per trial under it.

Idempotent by construction, with no state beyond the tracking server and the storage record:
- the ablation's run is the run tagged with its record's key (a hash of its storage folder: TrialTracking's
  ablation_key). Whoever needs it (the local runner, a trial, the operator publishing the summary) looks it up
  and creates it only when there is none. Two that create it at once both look again afterwards and keep the
  oldest (start time, then run id); the other is deleted. So restarts, repeated passes and parallel trials
  converge on one parent, and the operator needs no call to the server before it creates Jobs;
- a trial's run is the child of that parent tagged with the trial's name. A finished one is kept (a retried or
  re-run trial logs nothing twice); an unfinished one (a pod that died while logging) is deleted and logged again.

Tracking is advisory: every public function catches every error, logs a warning and returns None, so a tracking
server that is down, slow or refuses the credentials never fails a trial or a pass. Retries and timeouts are kept
short (MLFLOW_HTTP_REQUEST_* unless already set) for the same reason. mlflow is imported inside the functions
only: nothing here loads it until tracking is configured."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lora_ablation.api.tracking import TrialTracking
from lora_ablation.api.trial import BASELINE_VARIANT, TrialResult, TrialSpec
from lora_ablation.planning.trials import config_label
from lora_ablation.summary.models import Summary
from lora_ablation.summary.report import render_markdown

log = logging.getLogger(__name__)
GROUP = "lora.ablation.dev"
RECORD_TAG = f"{GROUP}/record"  # the ablation's run: its record's key
ABLATION_TAG = f"{GROUP}/ablation"  # namespace/name, for people
STORAGE_TAG = f"{GROUP}/storage-uri"
TRIAL_TAG = f"{GROUP}/trial"  # a trial's run: its name, under the ablation's run
ADAPTER_TAG = f"{GROUP}/adapter-uri"
PARENT_TAG = "mlflow.parentRunId"  # what MLflow nests runs by
# Short: a trial must not wait minutes on a server that is down (MLflow's own default retries 7 times).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}  # fmt: skip
MAX_PARAM = 500  # characters of a parameter value (MLflow allows 6,000; module lists are the long ones)
BATCH = 900  # metrics per log_batch call (MLflow allows 1,000)


def _client(uri: str) -> Any:
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from mlflow.tracking import MlflowClient  # lazily: only an ablation with spec.tracking.mlflow loads MLflow

    return MlflowClient(tracking_uri=uri)


def _experiment(client: Any, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage != "active":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # created meanwhile by another trial: RESOURCE_ALREADY_EXISTS
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _search(client: Any, experiment: str, filter_string: str) -> list[Any]:
    runs = list(client.search_runs([experiment], filter_string=filter_string, max_results=100))
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def _parent(client: Any, experiment: str, tracking: TrialTracking, ablation: str, namespace: str,
            storage_uri: str | None) -> str:  # fmt: skip
    by_key = f"tags.`{RECORD_TAG}` = '{tracking.ablation_key}'"  # a hex key: nothing to quote
    found = _search(client, experiment, by_key)
    if found:
        return found[0].info.run_id
    tags = {RECORD_TAG: tracking.ablation_key, ABLATION_TAG: f"{namespace}/{ablation}"}
    if storage_uri:
        tags[STORAGE_TAG] = storage_uri
    mine = client.create_run(experiment, tags=tags, run_name=ablation).info.run_id
    chosen = _search(client, experiment, by_key)[0].info.run_id  # another may have created one at the same time
    if chosen != mine:
        client.delete_run(mine)
    return chosen


def _warn(what: str, error: BaseException) -> None:
    log.warning("MLflow tracking: %s failed, going on without it: %s: %s", what, type(error).__name__,
                str(error).splitlines()[0][:300] if str(error) else "")  # fmt: skip


def ablation_run(tracking: TrialTracking, *, ablation: str, namespace: str, storage_uri: str | None = None
                 ) -> str | None:  # fmt: skip
    """The id of the ablation's run (created when there is none); None when the server cannot be used."""
    try:
        client = _client(tracking.tracking_uri)
        return _parent(client, _experiment(client, tracking.experiment_name), tracking, ablation, namespace,
                       storage_uri)  # fmt: skip
    except Exception as error:
        _warn(f"the run of ablation {namespace}/{ablation}", error)
        return None


def _params(spec: TrialSpec, result: TrialResult) -> dict[str, str]:
    training = spec.training
    out: dict[str, Any] = {
        "trial": spec.name, "dataset": spec.dataset.name, "metric": spec.dataset.metric,
        "base_model": spec.base_model.uri, "modules": "+".join(spec.modules) or "none", "rank": spec.rank,
        "alpha": spec.alpha, "variant": spec.variant, "layers": spec.layers,
        "learning_rate": training.learning_rate, "max_steps": training.max_steps, "epochs": training.epochs,
        "batch_size": training.batch_size, "gradient_accumulation": training.gradient_accumulation,
        "max_seq_length": training.max_seq_length, "packing": training.packing, "lora_dropout": training.lora_dropout,
        "warmup_ratio": training.warmup_ratio, "quantization": spec.base_model.quantization,
        "trainable_params": result.trainable_params,
        "targeted_modules": len(result.targeted_module_names),
    }  # fmt: skip
    if not spec.is_baseline:
        out["seed"] = training.seed
    return {key: str(value)[:MAX_PARAM] for key, value in out.items() if value is not None}


def _final_metrics(result: TrialResult) -> dict[str, float]:
    ev = result.eval
    out: dict[str, float | None] = {
        "score": ev.score, "eval_loss": ev.eval_loss, "perplexity": ev.perplexity, "eval_samples": ev.samples,
        "parse_failures": ev.parse_failures, "trainable_params": result.trainable_params,
        "adapter_bytes": result.adapter_bytes,
    }  # fmt: skip
    out.update({f"eval_{key}": value for key, value in ev.details.items()})
    if result.train is not None:
        train = result.train
        out.update({"train_steps": train.steps, "train_seconds": train.seconds, "tokens_per_second":
                    train.tokens_per_second, "train_loss_last": train.loss_last, "train_loss_min": train.loss_min,
                    "peak_memory_bytes": train.peak_memory_bytes})  # fmt: skip
    if result.latency is not None:
        latency = result.latency
        timed = latency.adapter or latency.base  # the baseline is timed without an adapter
        out.update({"tpot_p50_ms": timed.tpot_p50_ms, "tpot_p95_ms": timed.tpot_p95_ms,
                    "ttft_p50_ms": timed.ttft_p50_ms, "ttft_p95_ms": timed.ttft_p95_ms,
                    "base_tpot_p95_ms": latency.base.tpot_p95_ms, "tpot_overhead_pct": latency.tpot_overhead_pct,
                    "merged_tpot_overhead_pct": latency.merged_tpot_overhead_pct})  # fmt: skip
        if latency.merged is not None:
            out["merged_tpot_p95_ms"] = latency.merged.tpot_p95_ms
    for key, seconds in (("gpu_hours", result.gpu_seconds), ("compute_hours", result.compute_seconds)):
        if seconds is not None:
            out[key] = seconds / 3600
    if result.cpu_seconds is not None:
        out["cpu_seconds"] = result.cpu_seconds
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(float(v))}


def _metrics(result: TrialResult, at: int) -> list[Any]:
    from mlflow.entities import Metric

    final_step = result.train.steps if result.train is not None else 0
    out = [Metric(key, value, at, final_step) for key, value in _final_metrics(result).items()]
    if result.train is not None:  # the step metrics: the loss curve and the eval points along it
        curve = result.train.curve
        out += [Metric("train_loss", loss, at, step) for step, loss in zip(curve.steps, curve.loss, strict=True)]
        for point in result.train.eval_points:
            out.append(Metric("eval_score", point.score, at, point.step))
            if point.eval_loss is not None:
                out.append(Metric("eval_point_loss", point.eval_loss, at, point.step))
    return out


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    return (items[i : i + size] for i in range(0, len(items), size))


def log_trial(spec: TrialSpec, result: TrialResult, adapter_dir: Path | None = None) -> str | None:
    """Log a finished trial as a child of the ablation's run: parameters, the loss curve and eval points as step
    metrics, the final score, latency and cost, result.json, and the adapter (files, or its storage URI only).
    Returns the run id; None without tracking or when the server cannot be used (the trial's result stands)."""
    tracking = spec.tracking
    if tracking is None:
        return None
    try:
        return _log_trial(tracking, spec, result, adapter_dir)
    except Exception as error:
        _warn(f"the run of trial {spec.name}", error)
        return None


def _log_trial(tracking: TrialTracking, spec: TrialSpec, result: TrialResult, adapter_dir: Path | None) -> str:
    from mlflow.entities import Param, RunTag

    client = _client(tracking.tracking_uri)
    experiment = _experiment(client, tracking.experiment_name)
    parent = _parent(client, experiment, tracking, spec.ablation, spec.namespace, spec.storage.uri.rsplit("/", 1)[0])
    for run in _search(client, experiment, f"tags.`{PARENT_TAG}` = '{parent}' and tags.`{TRIAL_TAG}` = '{spec.name}'"):
        if run.info.status == "FINISHED":  # logged before: a retried trial, a re-run, a pod restarted after logging
            log.info("MLflow run %s of trial %s was logged before; not logging it again", run.info.run_id, spec.name)
            return run.info.run_id
        client.delete_run(run.info.run_id)  # a run cut off while logging: logged again below, whole
    label = config_label(spec.modules, spec.rank, spec.variant, spec.layers)
    seed = "" if spec.variant == BASELINE_VARIANT else f" seed {spec.training.seed}"
    adapter_uri = f"{spec.storage.uri.rstrip('/')}/adapter" if not spec.is_baseline else None
    tags = {PARENT_TAG: parent, TRIAL_TAG: spec.name, ABLATION_TAG: f"{spec.namespace}/{spec.ablation}",
            STORAGE_TAG: spec.storage.uri, **({ADAPTER_TAG: adapter_uri} if adapter_uri else {})}  # fmt: skip
    run_id = client.create_run(experiment, tags=tags, run_name=f"{spec.dataset.name} {label}{seed}").info.run_id
    params = [Param(key, value) for key, value in _params(spec, result).items()]
    at = int(time.time() * 1000)
    metrics = _metrics(result, at)
    client.log_batch(run_id, params=params[:100], tags=[RunTag("dataset", spec.dataset.name)])
    for chunk in _chunks(metrics, BATCH):
        client.log_batch(run_id, metrics=chunk)
    client.log_dict(run_id, result.model_dump(mode="json", by_alias=True, exclude_none=True), "result.json")
    if adapter_dir is not None and tracking.log_adapter and adapter_dir.is_dir():
        client.log_artifacts(run_id, str(adapter_dir), "adapter")
    client.set_terminated(run_id, "FINISHED")  # last: a finished run is a complete one (see above)
    log.info("logged trial %s as MLflow run %s under %s", spec.name, run_id, parent)
    return run_id


def log_summary(tracking: TrialTracking, summary: Summary, *, storage_uri: str | None = None,
                plots: Iterable[Path] = (), finished: bool = True) -> str | None:  # fmt: skip
    """Put summary.json, summary.md and the plots on the ablation's run, with the recommendation as tags and the
    trial counts and cost as metrics; a finished ablation's run is marked finished. Logged again on every call
    (artifacts are overwritten in place). Returns the run id, None when the server cannot be used."""
    try:
        from mlflow.entities import Metric, RunTag

        client = _client(tracking.tracking_uri)
        experiment = _experiment(client, tracking.experiment_name)
        run_id = _parent(client, experiment, tracking, summary.ablation, summary.namespace, storage_uri)
        client.log_dict(run_id, summary.to_wire(), "summary.json")
        client.log_text(run_id, render_markdown(summary), "summary.md")
        for plot in plots:
            client.log_artifact(run_id, str(plot), "plots")
        recommendation = summary.recommendation
        tags = [RunTag(f"recommendation.{key}", str(value)[:MAX_PARAM]) for key, value in (
            ("accuracy_first", recommendation.accuracy_first), ("balanced", recommendation.balanced),
            ("cheapest_tied", recommendation.cheapest_tied)) if value]  # fmt: skip
        at = int(time.time() * 1000)
        figures = {"configs": len(summary.configs), "gpu_hours": summary.compute.gpu_hours,
                   "trials_eliminated": len(summary.eliminated), "trials_skipped": len(summary.skipped)}  # fmt: skip
        client.log_batch(run_id, metrics=[Metric(k, float(v), at, 0) for k, v in figures.items()], tags=tags)
        if finished:
            client.set_terminated(run_id, "FINISHED")
        return run_id
    except Exception as error:
        _warn(f"the summary of ablation {summary.namespace}/{summary.ablation}", error)
        return None
