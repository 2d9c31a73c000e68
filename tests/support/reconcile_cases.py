"""What the pure-reconcile tests share: the settings, a spec, an observation, a finished Job, a condition, and an
ablation whose preflight passed."""

from __future__ import annotations

import copy

from conftest import minimal_manifest
from lora_ablation_operator.policy import Policy
from lora_ablation_operator.reconcile import Observed, reconcile
from lora_ablation_operator.settings import Settings

SETTINGS = Settings(trainer_image="trainer:test", policy=Policy.open())  # policy: tests/operator/test_policy.py
NOW = "2026-11-23T12:00:00Z"


def spec(**overrides) -> dict:
    raw = minimal_manifest(**overrides)["spec"]
    raw.setdefault("execution", {}).setdefault("parallelism", 2)
    return raw


def observed(raw_spec, jobs=(), results=None, status=None, preflight_problems=None, generation=1, *, name="demo",
             namespace="ns", now=NOW, **seen) -> Observed:
    """An observation of one ablation; `jobs` a list of Jobs or a dict by name."""
    by_name = dict(jobs) if isinstance(jobs, dict) else {j["metadata"]["name"]: j for j in jobs}
    return Observed(name=name, namespace=namespace, generation=generation, spec=raw_spec, status=status or {},
                    jobs=by_name, results=results or {}, preflight_problems=preflight_problems, now=now,
                    **seen)  # fmt: skip


def finished(job: dict, kind: str, reason: str = "", message: str = "") -> dict:
    job = copy.deepcopy(job)
    job["status"] = {"conditions": [{"type": kind, "status": "True", "reason": reason, "message": message}]}
    return job


def cond(decision, type_):
    return next(x for x in decision.status["conditions"] if x["type"] == type_)


def run_preflight(raw) -> tuple[dict, list]:
    first = reconcile(observed(raw), SETTINGS)
    (job,) = first.create
    return finished(job, "Complete"), first
