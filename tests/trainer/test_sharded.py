"""Sharded (FSDP) trials and the multi-node launch contract, run for real: the trainer's own entry point
relaunches itself under torchrun with two CPU processes on gloo, as it does with one process per GPU."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lora_ablation.api.trial import TrialResult, TrialSpec
from support.s3 import free_port, s3_client
from support.trainer_data import trial_spec

pytestmark = [pytest.mark.trainer, pytest.mark.slow]
TWO_CPU = {"OMP_NUM_THREADS": "1"}


def _spec(tiny_models, choice_data, storage: str, sharding: str, **training):
    # No LoRA dropout: FSDP and data parallel must then compute the same adapter, step for step.
    spec = trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"], storage,
                      training={"maxSteps": 8, "gradientAccumulation": 2, "loraDropout": 0.0, **training},
                      latency={"repeats": 1})  # fmt: skip
    return spec.model_copy(update={"sharding": sharding})


def _start(spec, tmp_path: Path, env: dict) -> subprocess.Popen:
    trial_file = tmp_path / f"trial-{time.monotonic_ns()}.json"
    trial_file.write_text(spec.model_dump_json(by_alias=True))
    command = [sys.executable, "-m", "lora_ablation_trainer", "--trial", str(trial_file)]
    return subprocess.Popen(command, env={**os.environ, **TWO_CPU, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _finish(process: subprocess.Popen, timeout: float = 240) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(process.pid)
        output, _ = process.communicate()
        pytest.fail(f"the trainer did not finish in {timeout} s:\n{output[-3000:]}")
    return output


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant (torchrun starts its workers in their own sessions), as the
    kubelet ends a container."""

    def descendants(parent: int) -> list[int]:
        children: list[int] = []
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):  # the task ended meanwhile
                children += [int(c) for c in (task / "children").read_text().split()]
        return children + [d for child in children for d in descendants(child)]

    for victim in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


def _killed_after_a_checkpoint(spec, tmp_path: Path, checkpoint: Path) -> None:
    """Start the trial on 2 processes and SIGKILL everything once it has written a checkpoint."""
    process = _start(spec, tmp_path, {"LORA_ABLATION_PROCESSES": "2"})
    deadline = time.monotonic() + 180
    while not checkpoint.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    assert checkpoint.exists(), _finish(process)[-3000:]
    _kill_tree(process.pid)  # every rank and torchrun die mid-run
    process.communicate()


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def _loads_and_changes_outputs(model_dir: Path, adapter_dir: Path) -> float:
    """The published adapter as a user loads it (one process, no torch.distributed): the largest logit change."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer("cue B options A=1 B=2 answer", return_tensors="pt").input_ids
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter_dir).eval()
    with torch.inference_mode():
        tuned = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
    return float((tuned - base).abs().max())


def test_sharded_trial_killed_resumes_and_trains_the_adapter_one_process_would(tiny_models, choice_data, tmp_path):
    out = tmp_path / "fsdp"
    spec = _spec(tiny_models, choice_data, f"file://{out}", "fsdp", maxSteps=12, checkpointEverySteps=4)
    checkpoint = out / "checkpoints" / "latest.pt"
    _killed_after_a_checkpoint(spec, tmp_path, checkpoint)
    saved = torch.load(io.BytesIO(checkpoint.read_bytes()), map_location="cpu", weights_only=False)
    killed_at = saved["state"]["step"]
    assert saved["sharding"] == "fsdp" and killed_at in (4, 8)
    assert saved["optimizer"]["state"], "the sharded optimizer state was gathered into the checkpoint"
    assert not (out / "result.json").exists()

    output = _finish(_start(spec, tmp_path, {"LORA_ABLATION_PROCESSES": "2"}))
    assert "sharded with FSDP over 2 processes: 2 layer units and the root" in output, output[-3000:]
    result = TrialResult.model_validate_json((out / "result.json").read_text())
    assert result.train.steps == 12 and result.train.resumed_from_step >= killed_at
    assert result.train.loss_last < result.train.loss_first
    assert not checkpoint.exists()

    # The same micro-batches in one process (gradient accumulation 2 x 2 ranks = 4): FSDP averages the same
    # gradients, so the adapters agree to rounding, kill and resume included.
    from lora_ablation_trainer.run import run_trial

    reference = tmp_path / "one-process"
    raw = spec.model_dump(by_alias=True)
    raw["training"]["gradientAccumulation"], raw["storage"]["uri"], raw["sharding"] = 4, f"file://{reference}", "none"
    raw["latency"]["enabled"] = False
    run_trial(type(spec).model_validate(raw))
    sharded, plain = _adapter(out / "adapter"), _adapter(reference / "adapter")
    assert sorted(sharded) == sorted(plain) and len(sharded) == 8  # o_proj and down_proj, A and B, two layers
    assert max(float((sharded[k] - plain[k]).abs().max()) for k in sharded) < 1e-5
    assert max(float(t.abs().max()) for t in plain.values()) > 1e-3  # the comparison is not between zeros
    assert _loads_and_changes_outputs(tiny_models["llama"], out / "adapter") > 1e-3


def test_every_data_parallel_rank_resumes_from_the_checkpoint(tiny_models, choice_data, tmp_path):
    """Rank 0 alone writes checkpoints, but all ranks must read them: a rank starting over would run more steps
    than rank 0 and wait forever in a collective that rank 0 never joins."""
    out = tmp_path / "dp"
    spec = _spec(tiny_models, choice_data, f"file://{out}", "none", maxSteps=12, checkpointEverySteps=4)
    checkpoint = out / "checkpoints" / "latest.pt"
    _killed_after_a_checkpoint(spec, tmp_path, checkpoint)
    output = _finish(_start(spec, tmp_path, {"LORA_ABLATION_PROCESSES": "2"}), timeout=180)
    result = TrialResult.model_validate_json((out / "result.json").read_text())
    resumed = result.train.resumed_from_step
    assert resumed in (4, 8) and output.count(f"resuming from checkpoint at step {resumed} of 12") == 2, output[-3000:]


def test_two_nodes_meet_through_the_pet_variables_and_only_node_0_publishes(
    tiny_models, choice_data, s3_bucket, tmp_path
):
    """Two 'nodes' as two launchers on 127.0.0.1 (one process each), as two pods of a JobSet would start."""
    endpoint, bucket = s3_bucket
    spec = _spec(tiny_models, choice_data, f"s3://{bucket}/two-nodes/t", "fsdp")
    raw = spec.model_dump(by_alias=True)
    raw["storage"]["endpoint"] = endpoint
    spec = type(spec).model_validate(raw)
    port = str(free_port())
    pods = {"PET_NNODES": "2", "PET_NPROC_PER_NODE": "1", "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": port}
    nodes = [_start(spec, tmp_path, {**pods, "PET_NODE_RANK": str(rank)}) for rank in (0, 1)]
    outputs = [_finish(node) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n---\n".join(o[-2500:] for o in outputs)
    assert "trial test-trial: accuracy" in outputs[0] and "trial test-trial" not in outputs[1]
    assert "sharded with FSDP over 2 processes" in outputs[1]  # node 1 trained its shard
    client = s3_client(endpoint)
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="two-nodes/t/")["Contents"])
    assert keys == [f"two-nodes/t/{k}" for k in
                    ("adapter/README.md", "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                     "progress.json", "result.json")]  # fmt: skip  (node 0 alone reports progress)
    body = client.get_object(Bucket=bucket, Key="two-nodes/t/result.json")["Body"].read()
    result = TrialResult.model_validate_json(body)
    assert result.train.steps == 8


def test_a_batch_shards_each_trial_on_its_own_copy_and_evaluates_on_the_shared_base(tiny_models, choice_data,
                                                                                    tmp_path):  # fmt: skip
    """Two trials in one pod, sharded over 2 processes: each trains what one process trains alone (fully_shard
    changes the modules it wraps, so each trial needs its own host copy; rank 0 evaluates on the shared base)."""
    from lora_ablation.api.trial import TrialBatch
    from lora_ablation_trainer.run import run_trial

    specs = []
    for name, modules in (("p", ["o_proj"]), ("q", ["fc2"])):
        spec = _spec(tiny_models, choice_data, f"file://{tmp_path / name}", "fsdp")
        raw = spec.model_dump(by_alias=True)
        raw.update(name=name, modules=modules, targetModules=None)
        raw["latency"]["enabled"] = False
        specs.append(type(spec).model_validate(raw))
    batch_file = tmp_path / "batch.json"
    batch_file.write_text(TrialBatch(trials=specs).model_dump_json(by_alias=True))
    command = [sys.executable, "-m", "lora_ablation_trainer", "--trials", str(batch_file)]
    process = subprocess.Popen(command, env={**os.environ, **TWO_CPU, "LORA_ABLATION_PROCESSES": "2"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    output = _finish(process)
    assert process.returncode == 0 and output.count("sharded with FSDP over 2 processes") >= 2, output[-3000:]
    for spec in specs:
        raw = spec.model_dump(by_alias=True)
        reference = tmp_path / f"{spec.name}-one-process"
        raw["training"]["gradientAccumulation"], raw["storage"]["uri"] = 4, f"file://{reference}"
        raw["sharding"] = "none"
        run_trial(type(spec).model_validate(raw))
        sharded, plain = _adapter(tmp_path / spec.name / "adapter"), _adapter(reference / "adapter")
        assert sorted(sharded) == sorted(plain) and len(sharded) == 4  # one module, A and B, two layers
        assert max(float((sharded[k] - plain[k]).abs().max()) for k in sharded) < 1e-5
        assert TrialResult.model_validate_json((tmp_path / spec.name / "result.json").read_text()).trial == spec.name


def test_a_fused_group_trains_data_parallel_over_two_processes_as_each_trial_alone_in_one(tiny_models, choice_data,
                                                                                           tmp_path):  # fmt: skip
    """Two adapters fused on 2 data-parallel processes (each rank its share of both adapters' micro-batches, the
    gradients averaged across ranks in one all-reduce): each equals its trial trained alone in one process with
    every micro-batch (gradient accumulation 2 x 2 ranks = 4), to 1e-5; rank 0 alone evaluates and publishes."""
    from lora_ablation.api.trial import TrialBatch
    from lora_ablation_trainer.run import run_trial

    specs = []
    for name, modules, rank in (("p", ["o_proj"], 4), ("q", ["fc2"], 8)):
        raw = _spec(tiny_models, choice_data, f"file://{tmp_path / name}", "none").model_dump(by_alias=True)
        raw.update(name=name, modules=modules, targetModules=None, rank=rank)
        raw["latency"]["enabled"] = False
        specs.append(TrialSpec.model_validate(raw))
    batch_file = tmp_path / "batch.json"
    batch_file.write_text(TrialBatch(trials=specs, fused_group_size=2).model_dump_json(by_alias=True))
    command = [sys.executable, "-m", "lora_ablation_trainer", "--trials", str(batch_file)]
    process = subprocess.Popen(command, env={**os.environ, **TWO_CPU, "LORA_ABLATION_PROCESSES": "2"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    output = _finish(process)
    assert process.returncode == 0, output[-3000:]
    assert "[rank 0] " in output and "[rank 1] " in output and "training 2 trials together: p, q" in output
    assert "evaluat" not in " ".join(line for line in output.splitlines() if line.startswith("[rank 1]")).lower()
    for spec in specs:
        raw = spec.model_dump(by_alias=True)
        reference = tmp_path / f"{spec.name}-one-process"
        raw["training"]["gradientAccumulation"], raw["storage"]["uri"] = 4, f"file://{reference}"
        alone = run_trial(TrialSpec.model_validate(raw))
        fused, plain = _adapter(tmp_path / spec.name / "adapter"), _adapter(reference / "adapter")
        assert sorted(fused) == sorted(plain) and len(fused) == 4  # one module, A and B, two layers
        assert max(float((fused[k] - plain[k]).abs().max()) for k in fused) < 1e-5
        result = TrialResult.model_validate_json((tmp_path / spec.name / "result.json").read_text())
        assert result.train.steps == alone.train.steps == 8
        assert result.eval.score == alone.eval.score
        assert result.train.curve.loss == pytest.approx(alone.train.curve.loss, abs=1e-5)
        assert result.train.tokens == alone.train.tokens  # counted on every rank, not rank 0's times 2


def test_other_ranks_wait_out_a_long_publish_and_never_load_the_unsharded_base(tiny_models, choice_data, tmp_path):
    """A sharded batch whose baseline rank 0 times for far longer than a training collective may wait (3 s
    here, 10 minutes for NCCL by default): rank 1 waits on the long-timeout group instead of failing the batch,
    and never loads the unsharded base (the baseline is rank 0's alone; the trained trial shards a host copy)."""
    from lora_ablation.api.trial import TrialBatch

    baseline = trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"], f"file://{tmp_path / 'b'}",
                          name="b", variant="none",
                          latency={"outputTokens": 128, "warmup": 2, "repeats": 40})  # fmt: skip
    trained = _spec(tiny_models, choice_data, f"file://{tmp_path / 'p'}", "fsdp", maxSteps=4)
    raw = trained.model_dump(by_alias=True)
    raw.update(name="p", modules=["o_proj"], targetModules=None)
    raw["latency"]["enabled"] = False
    trained = type(trained).model_validate(raw)
    batch_file = tmp_path / "batch.json"
    batch_file.write_text(TrialBatch(trials=[baseline, trained]).model_dump_json(by_alias=True))
    command = [sys.executable, "-m", "lora_ablation_trainer", "--trials", str(batch_file)]
    env = {**os.environ, **TWO_CPU, "LORA_ABLATION_PROCESSES": "2", "LORA_ABLATION_COLLECTIVE_TIMEOUT_S": "3"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = _finish(process)
    assert process.returncode == 0, output[-3000:]
    baseline_result = TrialResult.model_validate_json((tmp_path / "b" / "result.json").read_text())
    assert baseline_result.latency is not None and baseline_result.latency.repeats == 40
    assert TrialResult.model_validate_json((tmp_path / "p" / "result.json").read_text()).train.steps == 4
    # The wait really outlasted the collective timeout: rank 0 spent longer than 3 s on the baseline alone.
    assert baseline_result.compute_seconds > 6, baseline_result.compute_seconds
    loads = [line.split(" INFO ")[0].split()[-2:] for line in output.splitlines()
             if "loading the base model's weights" in line]  # fmt: skip
    assert loads and all(where == ["[rank", "0]"] for where in loads), output[-3000:]
