"""A trial given several GPUs trains across them inside its pod: the entry point relaunches itself with
torchrun (one process per GPU), data-parallel or sharded with FSDP (TrialSpec.sharding); rank 0 evaluates,
times and publishes, so the result contract is the same as on one GPU.

Several nodes: the pods of a multi-node trial (JobSet, Kubeflow Trainer) carry torchrun's own variables,
PET_NNODES, PET_NODE_RANK, PET_NPROC_PER_NODE, PET_MASTER_ADDR and PET_MASTER_PORT (the names Kubeflow
Trainer's torch runtime sets). With PET_NNODES > 1 the entry point of each pod launches torchrun with a
static rendezvous at PET_MASTER_ADDR:PET_MASTER_PORT; global rank 0 (node 0) alone publishes, and every
pod exits with its own ranks' code.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import torch

from lora_ablation.api.trial import TrialBatch, TrialResult, TrialSpec
from lora_ablation_trainer.errors import EXIT_TRANSIENT, PermanentTrialError, TrialError

log = logging.getLogger(__name__)
EXIT_FILE_ENV = "LORA_ABLATION_EXIT_FILE"  # torchrun reports 1 for any failure; ranks leave the real code here
# Seconds a training collective may wait (all-reduce, FSDP gathers); unset, torch's default for the backend.
COLLECTIVE_TIMEOUT_ENV = "LORA_ABLATION_COLLECTIVE_TIMEOUT_S"
# Seconds the other ranks wait for rank 0 to publish a trial of a batch before the next one starts.
IDLE_TIMEOUT_ENV = "LORA_ABLATION_BETWEEN_TRIALS_TIMEOUT_S"
IDLE_TIMEOUT = 24 * 3600.0  # longer than any evaluation; the Job's activeDeadlineSeconds still bounds the pod


def timeout_from_env(name: str, default: float | None = None) -> timedelta | None:
    """A timeout in seconds from the environment; unset, `default` (None: torch's own)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None if default is None else timedelta(seconds=default)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise PermanentTrialError(f"{name}={raw!r}: expected a number of seconds greater than 0, such as 600")
    return timedelta(seconds=value)


class _ChildFailed(TrialError):
    def __init__(self, code: int):
        super().__init__(f"a worker process failed with exit code {code}")
        self.exit_code = code


def wanted_processes() -> int:
    requested = os.environ.get("LORA_ABLATION_PROCESSES")
    if requested:
        return int(requested)
    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def node_count() -> int:
    """Nodes of this trial (PET_NNODES; 1 without it): a multi-node trial's pods all hold as many GPUs."""
    value = os.environ.get("PET_NNODES", "1").strip() or "1"
    if not value.isdigit():  # an elastic range such as 1:4 is not what a trial Job sets
        raise PermanentTrialError(f"PET_NNODES={value!r}: expected a number of nodes such as 2")
    return int(value)


def rendezvous(nodes: int) -> list[str]:
    """torchrun's arguments to meet the other nodes (static rendezvous), or to run alone on this one."""
    if nodes <= 1:
        return ["--standalone"]
    missing = [name for name in ("PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise PermanentTrialError(
            f"PET_NNODES={nodes} asks for a multi-node trial, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set: the pods of a "
            "multi-node trial need PET_NODE_RANK, PET_MASTER_ADDR and PET_MASTER_PORT (JobSet or Kubeflow Trainer)"
        )
    env = os.environ
    return [
        f"--nnodes={nodes}", f"--node_rank={env['PET_NODE_RANK']}",
        f"--master_addr={env['PET_MASTER_ADDR']}", f"--master_port={env['PET_MASTER_PORT']}",
    ]  # fmt: skip


def _sharded(work: TrialSpec | TrialBatch) -> bool:
    """A batch shards every trial when any of its trials needs it (the process group is the batch's)."""
    trials = work.trials if isinstance(work, TrialBatch) else [work]
    return any(t.sharding == "fsdp" for t in trials)


def _run(work: TrialSpec | TrialBatch, workdir: Path | None, dist=None):
    # Imported here: the launcher itself never loads transformers.
    if isinstance(work, TrialBatch):
        from lora_ablation_trainer.run import run_batch

        return run_batch(work, workdir, dist)
    from lora_ablation_trainer.run import run_trial

    return run_trial(work, workdir, dist)


def run_maybe_distributed(spec: TrialSpec | TrialBatch, workdir: Path | None) -> TrialResult | None:
    if "WORLD_SIZE" in os.environ:
        return _run_as_rank(spec, workdir)
    nodes = node_count()
    per_node = os.environ.get("PET_NPROC_PER_NODE", "")
    processes = int(per_node) if nodes > 1 and per_node.isdigit() else wanted_processes()
    if processes <= 1 and nodes <= 1:
        if _sharded(spec):
            log.warning("sharding fsdp with one process: the trial trains unsharded")
        return _run(spec, workdir)
    return _launch(processes, rendezvous(nodes))


def _launch(processes: int, meet: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        exit_file = Path(tmp) / "exit-code"
        command = [
            sys.executable, "-m", "torch.distributed.run", *meet, f"--nproc_per_node={processes}",
            "-m", "lora_ablation_trainer", *sys.argv[1:],
        ]  # fmt: skip
        code = subprocess.call(command, env={**os.environ, EXIT_FILE_ENV: str(exit_file)})
        if code != 0:
            raise _ChildFailed(int(exit_file.read_text()) if exit_file.exists() else EXIT_TRANSIENT)
    return None


def _run_as_rank(spec: TrialSpec | TrialBatch, workdir: Path | None) -> TrialResult | None:
    from lora_ablation_trainer.train import Distributed

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    torch.distributed.init_process_group(backend=backend, timeout=timeout_from_env(COLLECTIVE_TIMEOUT_ENV))
    # Between two trials of a batch the other ranks wait while rank 0 evaluates, times and uploads, which can
    # take longer than a training collective may (NCCL's default is 10 minutes): they wait on a CPU group whose
    # timeout is the batch's, not a collective's.
    idle = torch.distributed.new_group(backend="gloo", timeout=timeout_from_env(IDLE_TIMEOUT_ENV, default=IDLE_TIMEOUT))
    dist = Distributed(rank=rank, world=world, local_rank=local, sharded=_sharded(spec) and world > 1,
                       idle_group=idle)  # fmt: skip
    try:
        result = _run(spec, workdir, dist)
        return result if dist.is_main else None
    except TrialError as error:
        exit_file = os.environ.get(EXIT_FILE_ENV)
        if exit_file:
            Path(exit_file).write_text(str(error.exit_code))
        raise
    finally:
        torch.distributed.destroy_process_group()
