"""The launcher's contract with multi-node engines: torchrun's own PET_* variables decide how it starts."""

from __future__ import annotations

from datetime import timedelta

import pytest

from lora_ablation_trainer.distributed import (
    COLLECTIVE_TIMEOUT_ENV,
    IDLE_TIMEOUT,
    IDLE_TIMEOUT_ENV,
    rendezvous,
    timeout_from_env,
)
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


def test_timeouts_come_from_the_environment_or_their_defaults(monkeypatch):
    monkeypatch.delenv(COLLECTIVE_TIMEOUT_ENV, raising=False)
    monkeypatch.delenv(IDLE_TIMEOUT_ENV, raising=False)
    assert timeout_from_env(COLLECTIVE_TIMEOUT_ENV) is None  # torch's default for the backend
    assert timeout_from_env(IDLE_TIMEOUT_ENV, default=IDLE_TIMEOUT) == timedelta(hours=24)
    monkeypatch.setenv(COLLECTIVE_TIMEOUT_ENV, "1800")
    assert timeout_from_env(COLLECTIVE_TIMEOUT_ENV) == timedelta(minutes=30)


@pytest.mark.parametrize("raw", ["ten", "0", "-5", "inf", "nan"])
def test_a_timeout_that_is_not_a_positive_number_of_seconds_is_a_permanent_error(monkeypatch, raw):
    monkeypatch.setenv(COLLECTIVE_TIMEOUT_ENV, raw)
    with pytest.raises(PermanentTrialError, match=f"{COLLECTIVE_TIMEOUT_ENV}=.*expected a number of seconds"):
        timeout_from_env(COLLECTIVE_TIMEOUT_ENV)
