"""The launcher's contract with multi-node engines: torchrun's own PET_* variables decide how it starts."""

from __future__ import annotations

import pytest

from lora_ablation_trainer.distributed import rendezvous
from lora_ablation_trainer.errors import PermanentTrialError

pytestmark = pytest.mark.trainer
NODE_1 = {"PET_NODE_RANK": "1", "PET_MASTER_ADDR": "trial-0.trial", "PET_MASTER_PORT": "29500"}


def test_one_node_runs_standalone():
    assert rendezvous(1) == ["--standalone"]


def test_several_nodes_meet_at_the_master_address(monkeypatch):
    for name, value in NODE_1.items():
        monkeypatch.setenv(name, value)
    assert rendezvous(2) == ["--nnodes=2", "--node_rank=1", "--master_addr=trial-0.trial", "--master_port=29500"]


def test_a_node_without_its_rendezvous_address_is_a_permanent_error(monkeypatch):
    monkeypatch.setenv("PET_NODE_RANK", "1")
    for name in ("PET_MASTER_ADDR", "PET_MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(PermanentTrialError, match="PET_NNODES=2 asks for a multi-node trial, but PET_MASTER_ADDR, "
                       "PET_MASTER_PORT are not set"):  # fmt: skip
        rendezvous(2)
