"""The trainer as the Job runs it: a real process, real exit codes, killed and resumed, S3 over HTTP."""

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

from lora_ablation.api.trial import TrialResult
from lora_ablation_trainer.errors import EXIT_PERMANENT, EXIT_TRANSIENT
from support.s3 import s3_client
from support.trainer_data import choice_records, trial_spec

pytestmark = pytest.mark.trainer


def trainer(spec, tmp_path: Path, env: dict | None = None, wait: bool = True):
    trial_file = tmp_path / f"trial-{time.monotonic_ns()}.json"
    trial_file.write_text(spec.model_dump_json(by_alias=True))
    command = [sys.executable, "-m", "lora_ablation_trainer", "--trial", str(trial_file)]
    full_env = {**os.environ, **(env or {})}
    if not wait:
        return subprocess.Popen(command, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=300)


def test_success_exits_0(tiny_models, choice_data, tmp_path):
    spec = trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"], f"file://{tmp_path}/out",
                      training={"maxSteps": 5}, latency={"repeats": 1})  # fmt: skip
    done = trainer(spec, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "step 5/5" in done.stderr
    assert TrialResult.model_validate_json((tmp_path / "out" / "result.json").read_text()).train.steps == 5


def test_trial_from_environment_variable(tiny_models, choice_data, tmp_path):
    spec = trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"], f"file://{tmp_path}/out",
                      variant="none", latency={"enabled": False})  # fmt: skip
    env = {**os.environ, "LORA_ABLATION_TRIAL": spec.model_dump_json(by_alias=True)}
    done = subprocess.run([sys.executable, "-m", "lora_ablation_trainer"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "result.json").exists()


@pytest.mark.parametrize(
    ("case", "expected_code", "message"),
    [
        ("missing train file", EXIT_PERMANENT, "nowhere.jsonl: file does not exist"),
        ("malformed line", EXIT_PERMANENT, "bad.jsonl:3: not valid JSON"),
        ("missing field", EXIT_PERMANENT, "bad-field.jsonl:2: field 'completion' must be a string"),
        ("group not in model", EXIT_PERMANENT, "module 'attn.c_attn' matches no weight"),
        ("storage unreachable", EXIT_TRANSIENT, "127.0.0.1:9"),
        ("bad trial json", EXIT_PERMANENT, "not valid JSON"),
    ],
)
def test_bad_inputs_exit_with_the_documented_code(case, expected_code, message, tiny_models, choice_data, tmp_path):
    out = tmp_path / "out"
    kwargs: dict = {}
    train = choice_data["train"]
    if case == "missing train file":
        train = tmp_path / "nowhere.jsonl"
    elif case == "malformed line":
        train = tmp_path / "bad.jsonl"
        lines = [json.dumps(r) for r in choice_records(4, 0)]
        lines[2] = lines[2][:-5]
        train.write_text("\n".join(lines) + "\n")
    elif case == "missing field":
        train = tmp_path / "bad-field.jsonl"
        train.write_text(json.dumps(choice_records(1, 0)[0]) + "\n" + json.dumps({"prompt": "x"}) + "\n")
    elif case == "group not in model":
        kwargs["modules"] = ["o_proj", "attn.c_attn"]
    elif case == "storage unreachable":
        kwargs["storage_options"] = {"endpoint": "http://127.0.0.1:9"}
    storage = "s3://results/t" if case == "storage unreachable" else f"file://{out}"
    spec = trial_spec(tiny_models["llama"], train, choice_data["eval"], storage, **kwargs)
    if case == "bad trial json":
        bad = tmp_path / "trial.json"
        bad.write_text("{not json")
        done = subprocess.run([sys.executable, "-m", "lora_ablation_trainer", "--trial", str(bad)], capture_output=True,
                              text=True)  # fmt: skip
    else:
        env = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_MAX_ATTEMPTS": "1"}
        done = trainer(spec, tmp_path, env)
    assert done.returncode == expected_code, done.stderr[-3000:]
    assert message in done.stderr, done.stderr[-3000:]
    assert not (out / "result.json").exists(), "a failed trial must leave no result"


def _checkpoint_step(path: Path) -> int:
    return torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=False)["state"]["step"]


def test_killed_run_resumes_from_its_last_checkpoint(tiny_models, choice_data, tmp_path):
    spec = trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"], f"file://{tmp_path}/out",
                      training={"maxSteps": 120, "checkpointEverySteps": 10}, latency={"repeats": 1})  # fmt: skip
    checkpoint = tmp_path / "out" / "checkpoints" / "latest.pt"
    process = trainer(spec, tmp_path, wait=False)
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    assert checkpoint.exists(), "no checkpoint was written"
    process.send_signal(signal.SIGKILL)  # as the kubelet does after an OOM or node loss
    process.wait()
    killed_at = _checkpoint_step(checkpoint)
    assert 10 <= killed_at < 120 and killed_at % 10 == 0
    assert not (tmp_path / "out" / "result.json").exists()

    done = trainer(spec, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    result = TrialResult.model_validate_json((tmp_path / "out" / "result.json").read_text())
    assert result.train.resumed_from_step >= killed_at
    assert result.train.steps == 120
    assert f"resuming from checkpoint at step {result.train.resumed_from_step}" in done.stderr
    assert not checkpoint.exists(), "checkpoints are removed once the result is published"


def test_model_data_and_results_through_s3(tiny_models, choice_data, s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    client = s3_client(endpoint)
    for file in Path(tiny_models["gpt_neox"]).iterdir():
        client.upload_file(str(file), bucket, f"models/tiny-neox/{file.name}")
    client.upload_file(str(choice_data["train"]), bucket, "data/train.jsonl")
    client.upload_file(str(choice_data["eval"]), bucket, "data/eval.jsonl")
    spec = trial_spec(tiny_models["gpt_neox"], choice_data["train"], choice_data["eval"], f"s3://{bucket}/results/t1",
                      storage_options={"endpoint": endpoint}, training={"maxSteps": 12, "checkpointEverySteps": 5},
                      latency={"repeats": 2})  # fmt: skip
    raw = spec.model_dump(by_alias=True)
    raw["baseModel"]["uri"] = f"s3://{bucket}/models/tiny-neox/"
    raw["dataset"]["train"], raw["dataset"]["eval"] = (
        f"s3://{bucket}/data/train.jsonl",
        f"s3://{bucket}/data/eval.jsonl",
    )
    spec = type(spec).model_validate(raw)
    done = trainer(spec, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="results/t1/")["Contents"])
    assert keys == [
        "results/t1/adapter/README.md",
        "results/t1/adapter/adapter_config.json",
        "results/t1/adapter/adapter_model.safetensors",
        "results/t1/progress.json",  # the last progress record stays: the run's final step
        "results/t1/result.json",
    ]
    body = client.get_object(Bucket=bucket, Key="results/t1/result.json")["Body"].read()
    result = TrialResult.model_validate_json(body)
    assert result.train.steps == 12 and result.targeted_module_names


def test_two_processes_train_data_parallel(tiny_models, choice_data, tmp_path):
    """The multi-GPU path (torchrun, one process per device) exercised with two CPU processes and gloo."""
    spec = trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"], f"file://{tmp_path}/out",
                      training={"maxSteps": 6, "gradientAccumulation": 2}, latency={"repeats": 1})  # fmt: skip
    done = trainer(spec, tmp_path, {"LORA_ABLATION_PROCESSES": "2", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = TrialResult.model_validate_json((tmp_path / "out" / "result.json").read_text())
    assert result.train.steps == 6
    assert result.train.loss_last < result.train.loss_first


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " ERROR " in line]


def test_chat_dataset_without_a_chat_template_is_a_permanent_error(no_template_model, choice_data, tmp_path):
    spec = trial_spec(no_template_model, choice_data["chat_train"], choice_data["chat_eval"], f"file://{tmp_path}/out",
                      format="chat")  # fmt: skip
    done = trainer(spec, tmp_path)
    assert done.returncode == EXIT_PERMANENT, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    (line,) = _error_lines(done.stderr)  # one line says it all
    assert f"dataset 'choice' (file://{choice_data['chat_train']}" in line
    assert "has format 'chat', but the base model's tokenizer has no chat template" in line
    assert "set the dataset's format to 'prompt-completion' or 'text'" in line
    assert not (tmp_path / "out" / "result.json").exists()


def test_non_finite_loss_ends_the_trial_as_diverged_and_publishes_nothing(poisoned_token_model, tmp_path):
    from lora_ablation_trainer.data import micro_batch_order
    from support.trainer_data import write_jsonl

    model, token = poisoned_token_model
    records = choice_records(64, 5)
    # The record that the fifth micro-batch (batch 8, one per step) begins with gets the token whose weights are NaN.
    poisoned = micro_batch_order(len(records), 8, 42, epoch=0)[4][0]
    records[poisoned]["prompt"] += f" {token}"
    train = write_jsonl(tmp_path / "train.jsonl", records)
    eval_ = write_jsonl(tmp_path / "eval.jsonl", choice_records(8, 6))
    spec = trial_spec(model, train, eval_, f"file://{tmp_path}/out",
                      training={"seed": 42, "checkpointEverySteps": 2}, latency={"repeats": 1})  # fmt: skip
    termination = tmp_path / "termination-log"
    done = trainer(spec, tmp_path, env={"LORA_ABLATION_TERMINATION_LOG": str(termination)})
    assert done.returncode == EXIT_PERMANENT, done.stderr[-3000:]
    (line,) = _error_lines(done.stderr)
    assert termination.read_text().startswith("diverged at step 5 of 30: the training loss is nan")  # in pod status
    assert termination.read_text().endswith("(exit 42)")
    assert "diverged at step 5 of 30: the training loss is nan; the last finite loss was " in line
    assert "lower training.learningRate (now 0.003)" in line and "no result was published" in line
    out = tmp_path / "out"
    assert not (out / "result.json").exists() and not (out / "adapter").exists()
    # The last checkpoint is the last good step: nothing non-finite was ever saved.
    checkpoint = torch.load(io.BytesIO((out / "checkpoints" / "latest.pt").read_bytes()), weights_only=False)
    assert checkpoint["state"]["step"] == 4
    assert all(torch.isfinite(t).all() for t in checkpoint["adapter"].values())
