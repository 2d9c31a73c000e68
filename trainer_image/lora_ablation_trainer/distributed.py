"""A trial given several GPUs trains data-parallel inside its pod: the entry point relaunches itself
with torchrun (one process per GPU); rank 0 evaluates, times and publishes, so the result contract
is the same as on one GPU."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from lora_ablation.api.trial import TrialBatch, TrialResult, TrialSpec
from lora_ablation_trainer.errors import EXIT_TRANSIENT, TrialError
from lora_ablation_trainer.run import run_trial
from lora_ablation_trainer.train import Distributed

EXIT_FILE_ENV = "LORA_ABLATION_EXIT_FILE"  # torchrun reports 1 for any failure; ranks leave the real code here


class _ChildFailed(TrialError):
    def __init__(self, code: int):
        super().__init__(f"a data-parallel worker failed with exit code {code}")
        self.exit_code = code


def wanted_processes() -> int:
    requested = os.environ.get("LORA_ABLATION_PROCESSES")
    if requested:
        return int(requested)
    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def _run(work: TrialSpec | TrialBatch, workdir: Path | None, dist: Distributed | None = None):
    if isinstance(work, TrialBatch):
        from lora_ablation_trainer.batch import run_batch

        return run_batch(work, workdir, dist)
    return run_trial(work, workdir, dist)


def run_maybe_distributed(spec: TrialSpec | TrialBatch, workdir: Path | None) -> TrialResult | None:
    if "WORLD_SIZE" in os.environ:
        return _run_as_rank(spec, workdir)
    processes = wanted_processes()
    if processes <= 1:
        return _run(spec, workdir)
    return _launch(processes)


def _launch(processes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        exit_file = Path(tmp) / "exit-code"
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "lora_ablation_trainer", *sys.argv[1:],
        ]  # fmt: skip
        code = subprocess.call(command, env={**os.environ, EXIT_FILE_ENV: str(exit_file)})
        if code != 0:
            raise _ChildFailed(int(exit_file.read_text()) if exit_file.exists() else EXIT_TRANSIENT)
    return None


def _run_as_rank(spec: TrialSpec | TrialBatch, workdir: Path | None) -> TrialResult | None:
    dist = Distributed(rank=int(os.environ["RANK"]), world=int(os.environ["WORLD_SIZE"]))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", dist.rank)))
    torch.distributed.init_process_group(backend=backend)
    try:
        result = _run(spec, workdir, dist)
        torch.distributed.barrier()
        return result if dist.is_main else None
    except TrialError as error:
        exit_file = os.environ.get(EXIT_FILE_ENV)
        if exit_file:
            Path(exit_file).write_text(str(error.exit_code))
        raise
    finally:
        torch.distributed.destroy_process_group()
