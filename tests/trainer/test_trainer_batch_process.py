"""Several trials in one trainer process as the pod runs them (--trials, S3 over HTTP), killed and restarted;
and a two-stage trial whose second stage is killed."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lora_ablation.api.contract import TRIALS_ENV
from lora_ablation.api.stages import StageOneResult
from lora_ablation.api.trial import TrialBatch, TrialResult
from lora_ablation_trainer.run import run_trial
from support.s3 import s3_client
from support.trainer_data import trial_spec

pytestmark = [pytest.mark.trainer, pytest.mark.slow]


def _start(args: list[str], env: dict | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "lora_ablation_trainer", *args]
    return subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    output, _ = process.communicate(timeout=300)
    return process.returncode, output


def _wait_for(condition, process: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert condition(), "the awaited state never came: " + (process.stdout.read()[-3000:] if process.poll() else "")


def test_a_killed_batch_resumes_without_retraining_finished_trials(tiny_models, choice_data, s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    client = s3_client(endpoint)
    for file in Path(tiny_models["llama"]).iterdir():
        client.upload_file(str(file), bucket, f"models/llama/{file.name}")
    client.upload_file(str(choice_data["train"]), bucket, "data/train.jsonl")
    client.upload_file(str(choice_data["eval"]), bucket, "data/eval.jsonl")
    trials = []
    for name, steps in (("t1", 3), ("t2", 30), ("t3", 4)):
        spec = trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"], f"s3://{bucket}/r/{name}",
                          name=name, storage_options={"endpoint": endpoint}, latency={"enabled": False},
                          training={"maxSteps": steps, "checkpointEverySteps": 5})  # fmt: skip
        raw = spec.model_dump(by_alias=True)
        raw["baseModel"]["uri"] = f"s3://{bucket}/models/llama/"
        raw["dataset"]["train"], raw["dataset"]["eval"] = (
            f"s3://{bucket}/data/train.jsonl",
            f"s3://{bucket}/data/eval.jsonl",
        )
        trials.append(raw)
    batch = TrialBatch.model_validate({"trials": trials})
    batch_file = tmp_path / "batch.json"
    batch_file.write_text(batch.model_dump_json(by_alias=True))

    def has(key: str) -> bool:
        return client.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0) > 0

    process = _start(["--trials", str(batch_file)])
    _wait_for(lambda: has("r/t2/checkpoints/latest.pt"), process)  # t1 published, t2 under way
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = client.get_object(Bucket=bucket, Key="r/t1/result.json")["Body"].read()
    assert not has("r/t2/result.json") and not has("r/t3/result.json")

    # The restarted pod reads the batch from the environment, as the Job hands it over.
    code, output = _finish(_start([], {TRIALS_ENV: batch_file.read_text()}))
    assert code == 0, output[-3000:]
    assert "trial t1: skipped, it already has a TrialResult" in output
    assert client.get_object(Bucket=bucket, Key="r/t1/result.json")["Body"].read() == first
    results = {n: TrialResult.model_validate_json(client.get_object(Bucket=bucket, Key=f"r/{n}/result.json")["Body"]
                                                  .read()) for n in ("t2", "t3")}  # fmt: skip
    assert results["t2"].train.steps == 30 and results["t2"].train.resumed_from_step >= 5
    assert results["t3"].train.steps == 4 and results["t3"].train.resumed_from_step is None
    assert output.count("loading the base model's weights") == 1, "one load serves both trials"


def test_a_failing_trial_leaves_failure_json_and_the_process_exits_0(tiny_models, choice_data, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")

    def ok(name: str):
        return trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"], f"file://{tmp_path}/{name}",
                          name=name, latency={"enabled": False}, training={"maxSteps": 2})  # fmt: skip

    specs = [ok("ok1"), ok("ok2")]
    broken = trial_spec(tiny_models["llama"], bad, choice_data["eval"], f"file://{tmp_path}/broken", name="broken")
    batch_file = tmp_path / "batch.json"
    batch_file.write_text(TrialBatch(trials=[specs[0], broken, specs[1]]).model_dump_json(by_alias=True))
    code, output = _finish(_start(["--trials", str(batch_file)]))
    assert code == 0, output[-3000:]
    failure = json.loads((tmp_path / "broken" / "failure.json").read_text())
    assert failure["exitCode"] == 42 and "bad.jsonl:1: not valid JSON" in failure["message"]
    assert (tmp_path / "ok1" / "result.json").exists() and (tmp_path / "ok2" / "result.json").exists()
    assert "1 failed for good (broken: see their failure.json)" in output


class _CheckpointStep:
    """The step of the latest checkpoint, read again only when the file changes (the poll must not steal the
    trainer's CPU)."""

    def __init__(self, path: Path):
        self.path, self.seen, self.step = path, None, 0

    def __call__(self) -> int:
        try:
            stamp = self.path.stat().st_mtime_ns
            if stamp != self.seen:
                payload = torch.load(io.BytesIO(self.path.read_bytes()), map_location="cpu", weights_only=False)
                self.seen, self.step = stamp, payload["state"]["step"]
        except (OSError, RuntimeError, EOFError):
            pass
        return self.step


def test_a_killed_stage_two_resumes_and_counts_stage_one(tiny_models, choice_data, tmp_path):
    def spec(**stage):
        return trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"], f"file://{tmp_path}/out",
                          latency={"enabled": False}, training={"maxSteps": 50, "checkpointEverySteps": 5},
                          **stage)  # fmt: skip

    first = run_trial(spec(stage_one={"fraction": 0.2}))
    assert isinstance(first, StageOneResult) and first.step == 10
    trial_file = tmp_path / "trial.json"
    trial_file.write_text(spec().model_dump_json(by_alias=True))
    checkpoint = tmp_path / "out" / "checkpoints" / "latest.pt"
    process = _start(["--trial", str(trial_file)])
    step = _CheckpointStep(checkpoint)
    _wait_for(lambda: step() >= 15, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    code, output = _finish(_start(["--trial", str(trial_file)]))
    assert code == 0, output[-3000:]
    result = TrialResult.model_validate_json((tmp_path / "out" / "result.json").read_text())
    assert result.train.steps == 50 and result.train.resumed_from_step >= 15
    assert result.compute_seconds > first.compute_seconds and result.cpu_seconds > first.cpu_seconds


def test_a_batch_trains_data_parallel(tiny_models, choice_data, tmp_path):
    """The multi-GPU path with a batch: every rank runs every trial, rank 0 publishes, storage decides skips."""

    def spec(name: str, modules: list[str]):
        return trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"], f"file://{tmp_path}/{name}",
                          name=name, latency={"enabled": False}, modules=modules,
                          training={"maxSteps": 4, "gradientAccumulation": 2})  # fmt: skip

    specs = [spec("p", ["o_proj"]), spec("q", ["fc2"])]
    batch_file = tmp_path / "batch.json"
    batch_file.write_text(TrialBatch(trials=specs).model_dump_json(by_alias=True))
    env = {"LORA_ABLATION_PROCESSES": "2", "OMP_NUM_THREADS": "1"}
    code, output = _finish(_start(["--trials", str(batch_file)], env))
    assert code == 0, output[-3000:]
    results = [TrialResult.model_validate_json((tmp_path / n / "result.json").read_text()) for n in "pq"]
    assert [r.train.steps for r in results] == [4, 4]
    assert results[0].targeted_module_names != results[1].targeted_module_names
