"""spec.tracking.mlflow against a real `mlflow server` (SQLite backend, served artifacts): a trial run through the
real trainer logs a child run under the ablation's run; `lora-ablation run` makes one parent with exactly one child
per trial and the summary on the parent, and a re-run duplicates nothing; a server that is down costs a warning, not
the trial; without the field no MLflow code is loaded."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import yaml

from lora_ablation.api.tracking import TrialTracking, ablation_key
from lora_ablation.tracking.mlflow_runs import ADAPTER_TAG, PARENT_TAG, RECORD_TAG, TRIAL_TAG
from lora_ablation_trainer.run import run_trial
from support.s3 import free_port
from support.trainer_data import trial_spec

pytestmark = [pytest.mark.trainer, pytest.mark.slow]
FAST = {"maxSteps": 6, "checkpointEverySteps": 100}


def tracked(spec, uri: str, experiment: str, folder: str):
    tracking = TrialTracking(tracking_uri=uri, experiment_name=experiment, ablation_key=ablation_key(folder))
    return spec.model_copy(update={"tracking": tracking})


def test_a_trial_logs_its_run_under_the_ablation_run_once(mlflow_server, tiny_models, choice_data, tmp_path):
    experiment = f"trial-{uuid.uuid4().hex[:8]}"
    folder = f"file://{tmp_path}/results/default/test"
    spec = trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"], f"{folder}/test-trial",
                      training=FAST, latency={"repeats": 1})  # fmt: skip
    spec = tracked(spec, mlflow_server.uri, experiment, folder)
    result = run_trial(spec)

    runs = mlflow_server.runs(experiment)
    (parent,) = [r for r in runs if r.data.tags.get(RECORD_TAG) == ablation_key(folder)]
    (child,) = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
    assert len(runs) == 2 and child.info.status == "FINISHED"
    tags, params, metrics = child.data.tags, child.data.params, child.data.metrics
    assert tags[TRIAL_TAG] == "test-trial" and tags[ADAPTER_TAG] == f"{folder}/test-trial/adapter"
    assert params["modules"] == "o_proj+fc2" and params["rank"] == "8" and params["variant"] == "lora"
    assert params["dataset"] == "choice" and params["seed"] == "42" and float(params["learning_rate"]) == 3e-3
    assert metrics["score"] == pytest.approx(result.eval.score) and metrics["eval_loss"] == pytest.approx(
        result.eval.eval_loss)
    assert metrics["tpot_p95_ms"] == pytest.approx(result.latency.adapter.tpot_p95_ms)
    assert metrics["gpu_hours"] == pytest.approx(result.gpu_seconds / 3600)
    assert metrics["compute_hours"] == pytest.approx(result.compute_seconds / 3600)
    history = mlflow_server.client().get_metric_history(child.info.run_id, "train_loss")
    assert [m.step for m in history] == result.train.curve.steps
    assert [m.value for m in history] == pytest.approx(result.train.curve.loss)
    (point,) = mlflow_server.client().get_metric_history(child.info.run_id, "eval_score")
    assert point.step == 6
    artifacts = {a.path for a in mlflow_server.client().list_artifacts(child.info.run_id)}
    assert artifacts == {"adapter", "result.json"}
    adapter = {a.path for a in mlflow_server.client().list_artifacts(child.info.run_id, "adapter")}
    assert "adapter/adapter_model.safetensors" in adapter and "adapter/adapter_config.json" in adapter

    # A retried trial (its result already stored) logs nothing twice: the finished run is found and kept.
    assert run_trial(spec) == result
    assert {r.info.run_id for r in mlflow_server.runs(experiment)} == {parent.info.run_id, child.info.run_id}


KILLED_MID_LOGGING = """
import sys
from lora_ablation.api.trial import TrialResult, TrialSpec
from lora_ablation.tracking import log_trial

spec = TrialSpec.model_validate_json(open(sys.argv[1]).read())
log_trial(spec, TrialResult.model_validate_json(open(sys.argv[2]).read()))
"""


def test_a_pod_killed_while_logging_leaves_a_run_the_next_log_replaces_whole(mlflow_server, tmp_path):
    """A trainer killed between creating its run and finishing it (an eviction while it logs) leaves a RUNNING run
    with parameters but no metrics; the retried trial deletes it and logs one complete run, so the trial has
    exactly one active run, finished, with everything."""
    from lora_ablation.api.trial import TrialResult
    from lora_ablation.tracking import log_trial
    from support.auth_proxy import TokenProxy

    experiment = f"killed-{uuid.uuid4().hex[:8]}"
    folder = f"file://{tmp_path}/results/default/test"
    spec = tracked(trial_spec(tmp_path / "model", tmp_path / "t.jsonl", tmp_path / "e.jsonl", f"{folder}/test-trial"),
                   mlflow_server.uri, experiment, folder)  # fmt: skip
    steps = list(range(1, 41))
    result = TrialResult.model_validate({
        "ablation": "test", "trial": "test-trial", "dataset": "choice", "modules": ["o_proj"], "rank": 8,
        "variant": "lora", "eval": {"metric": "accuracy", "score": 0.75, "samples": 24},
        "train": {"steps": 40, "tokens": 4000, "seconds": 8.0, "tokensPerSecond": 500.0,
                  "curve": {"steps": steps, "loss": [2.0 - s / 40 for s in steps]}},
    })  # fmt: skip
    (tmp_path / "result.json").write_text(result.model_dump_json(by_alias=True))
    # The front holds the first batch of metrics unanswered: the run exists, its parameters are logged.
    front = TokenProxy(mlflow_server.uri, stall_when=lambda method, path, body: path.endswith("/runs/log-batch")
                       and b'"metrics"' in body)  # fmt: skip
    cut = spec.model_copy(update={"tracking": spec.tracking.model_copy(update={"tracking_uri": front.uri})})
    (tmp_path / "spec.json").write_text(cut.model_dump_json(by_alias=True))
    pod = subprocess.Popen([sys.executable, "-c", KILLED_MID_LOGGING, str(tmp_path / "spec.json"),
                            str(tmp_path / "result.json")])  # fmt: skip
    try:
        assert front.stalled.wait(120), "the trainer never logged its metrics"
        pod.kill()  # SIGKILL, as the kubelet does after the grace period
        pod.wait(30)
    finally:
        front.stop()
    (left,) = [r for r in mlflow_server.runs(experiment) if r.data.tags.get(TRIAL_TAG) == "test-trial"]
    assert left.info.status == "RUNNING" and "score" not in left.data.metrics and left.data.params["rank"] == "8"

    run_id = log_trial(spec, result)  # the retried pod, straight to the server
    (child,) = [r for r in mlflow_server.runs(experiment) if r.data.tags.get(TRIAL_TAG) == "test-trial"]
    assert child.info.run_id == run_id != left.info.run_id and child.info.status == "FINISHED"
    assert child.data.metrics["score"] == 0.75
    assert len(mlflow_server.client().get_metric_history(run_id, "train_loss")) == 40
    assert mlflow_server.client().get_run(left.info.run_id).info.lifecycle_stage == "deleted"


def test_a_tracking_server_that_is_down_costs_a_warning_not_the_trial(tiny_models, choice_data, tmp_path, caplog,
                                                                       monkeypatch):  # fmt: skip
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the default (2) would only make this slower
    folder = f"file://{tmp_path}/results/default/test"
    spec = trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"], f"{folder}/base",
                      variant="none", latency={"repeats": 1})  # fmt: skip
    spec = tracked(spec, f"http://127.0.0.1:{free_port()}", "nowhere", folder)  # nothing listens there
    with caplog.at_level(logging.WARNING):
        result = run_trial(spec)
    assert result.eval.samples == 24 and (tmp_path / "results/default/test/base/result.json").exists()
    assert any("MLflow tracking" in r.getMessage() and "going on without it" in r.getMessage() for r in caplog.records)


def _ablation(tmp_path: Path, model: Path, choice_data: dict, tracking: dict | None) -> Path:
    spec = {
        "baseModel": {"uri": f"file://{model}", "dtype": "float32"},
        "datasets": [{
            "name": "first", "train": f"file://{choice_data['train']}", "eval": f"file://{choice_data['eval']}",
            "format": "prompt-completion", "metric": "accuracy", "maxEvalSamples": 8,
        }],
        "search": {"moduleSets": [["o_proj"]], "ranks": [4]},
        "training": {"maxSteps": 3, "batchSize": 8, "gradientAccumulation": 1, "maxSeqLength": 48},
        "latency": {"promptTokens": 8, "outputTokens": 4, "warmup": 0, "repeats": 1},
        "storage": {"uri": f"file://{tmp_path / 'results'}"},
    }
    if tracking is not None:
        spec["tracking"] = tracking
    path = tmp_path / "tracked.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "lora.ablation.dev/v1alpha1", "kind": "LoraAblation",
                                    "metadata": {"name": "tracked"}, "spec": spec}))  # fmt: skip
    return path


def _run(path: Path, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "lora_ablation.cli", "run", str(path), "--parallel", "2"], cwd=cwd,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_local_run_makes_one_parent_with_one_child_per_trial_and_a_rerun_adds_none(mlflow_server, tiny_models,
                                                                                  choice_data, tmp_path):  # fmt: skip
    experiment = f"local-{uuid.uuid4().hex[:8]}"
    path = _ablation(tmp_path, tiny_models["llama"], choice_data,
                     {"mlflow": {"trackingUri": mlflow_server.uri, "experimentName": experiment}})  # fmt: skip
    out = _run(path, tmp_path).stdout
    assert f"in experiment {experiment!r}" in out
    trials = sorted(p.parent.name for p in (tmp_path / "results/default/tracked").glob("*/result.json"))
    assert len(trials) == 2  # the baseline and o_proj r4

    def check() -> tuple[str, dict[str, str]]:
        runs = mlflow_server.runs(experiment)
        (parent,) = [r for r in runs if RECORD_TAG in r.data.tags]
        children = {
            r.data.tags[TRIAL_TAG]: r.info.run_id for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id
        }
        assert len(runs) == 1 + len(trials) and sorted(children) == trials, [r.data.tags for r in runs]
        assert parent.info.status == "FINISHED" and parent.data.tags["lora.ablation.dev/ablation"] == "default/tracked"
        artifacts = {a.path for a in mlflow_server.client().list_artifacts(parent.info.run_id)}
        assert {"summary.json", "summary.md"} <= artifacts
        plots = {a.path for a in mlflow_server.client().list_artifacts(parent.info.run_id, "plots")}
        assert "plots/pareto.png" in plots
        stored = json.loads((tmp_path / "results/default/tracked/summary.json").read_text())
        assert parent.data.metrics["configs"] == len(stored["configs"]) >= 1
        return parent.info.run_id, children

    first = check()
    # A second attempt that retries one trial (its result gone) finds the same runs and adds none.
    (baseline,) = [t for t in trials if "-base-" in t]  # the cheapest to run again
    (tmp_path / "results/default/tracked" / baseline / "result.json").unlink()
    _run(path, tmp_path)
    assert check() == first


def test_without_tracking_no_mlflow_module_is_loaded(tiny_models, choice_data, tmp_path):
    """A trial run, the local runner's and the operator's code paths, all without spec.tracking, in a fresh
    interpreter: mlflow never enters sys.modules."""
    spec = trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"], f"file://{tmp_path}/base",
                      variant="none", latency={"enabled": False})  # fmt: skip
    manifest = yaml.safe_load(_ablation(tmp_path, tiny_models["llama"], choice_data, None).read_text())
    script = textwrap.dedent(f"""
        import json, sys
        from lora_ablation.api.resource import parse_ablation
        from lora_ablation.api.trial import TrialSpec
        from lora_ablation.local import runner
        from lora_ablation.planning.plan import plan_trials
        from lora_ablation_operator import jobs, reconcile_pass
        from lora_ablation_trainer.run import run_trial
        ablation = parse_ablation(json.loads({json.dumps(json.dumps(manifest))}))
        plan = plan_trials(ablation.metadata.name, ablation.metadata.namespace, ablation.spec)
        assert all(t.spec.tracking is None for t in plan.trials)
        assert '"tracking"' not in plan.trials[0].spec.model_dump_json(by_alias=True, exclude_none=True)
        run_trial(TrialSpec.model_validate_json({json.dumps(spec.model_dump_json(by_alias=True))}))
        loaded = sorted(m for m in sys.modules if m == "mlflow" or m.startswith("mlflow."))
        print(json.dumps(loaded))
    """)  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
