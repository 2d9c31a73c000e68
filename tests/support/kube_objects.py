"""Small Kubernetes objects the emulator tests create (tests/test_kube_emulator.py, tests/test_kube_refusals.py)."""

from __future__ import annotations


def job(name: str, **labels: str) -> dict:
    pod = {"containers": [{"name": "c", "image": "i"}], "restartPolicy": "Never"}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": labels},
            "spec": {"template": {"spec": pod}}}  # fmt: skip
