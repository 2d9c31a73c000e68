"""The chart's multi-node switch: the operator's RBAC grows by the chosen engine's kind only, and only when enabled."""

from __future__ import annotations

import pytest
from test_chart import CHART, EXAMPLE_VALUES, render

from support.chart import helm, of_kind

ENGINE_RULES = {"JobSet": ("jobset.x-k8s.io", "jobsets"), "TrainJob": ("trainer.kubeflow.org", "trainjobs")}


def engine_rules(docs: list[dict]) -> list[tuple[str, str, tuple[str, ...]]]:
    groups = {g for g, _ in ENGINE_RULES.values()}
    return [(group, resource, tuple(sorted(rule["verbs"])))
            for role in of_kind(docs, "ClusterRole") + of_kind(docs, "Role") for rule in role["rules"]
            for group in rule["apiGroups"] if group in groups for resource in rule["resources"]]  # fmt: skip


def env(docs: list[dict]) -> dict[str, str]:
    (deployment,) = of_kind(docs, "Deployment")
    return {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_off_by_default_grants_no_engine_kind():
    docs = render()
    assert engine_rules(docs) == []
    assert env(docs)["LORA_ABLATION_MULTI_NODE_ENABLED"] == "false"


@pytest.mark.parametrize("engine", sorted(ENGINE_RULES))
def test_enabled_grants_exactly_the_chosen_kind(engine):
    values = {"multiNode.enabled": "true", "multiNode.engine": engine, "multiNode.trainingRuntime": "torch-lora"}
    docs = render(**values)
    group, resource = ENGINE_RULES[engine]
    assert engine_rules(docs) == [(group, resource, ("create", "delete", "get", "list", "patch", "watch"))]
    settings = env(docs)
    assert settings["LORA_ABLATION_MULTI_NODE_ENABLED"] == "true"
    assert settings["LORA_ABLATION_MULTI_NODE_ENGINE"] == engine
    assert settings["LORA_ABLATION_TRAINING_RUNTIME"] == "torch-lora"


def test_namespaced_mode_grants_the_kind_in_each_watched_namespace_only():
    docs = render(str(EXAMPLE_VALUES), **{"multiNode.enabled": "true"})
    rules = [(r["metadata"]["namespace"], rule["resources"]) for r in of_kind(docs, "Role") for rule in r["rules"]
             if "jobsets" in rule["resources"]]  # fmt: skip
    assert sorted(ns for ns, _ in rules) == ["ml-prod", "ml-research"]
    assert all("jobsets" not in rule["resources"] for r in of_kind(docs, "ClusterRole") for rule in r["rules"])


def test_an_unknown_engine_is_refused_by_the_values_schema():
    done = helm("template", "r", str(CHART), "--set", "multiNode.engine=MPIJob")
    assert done.returncode != 0 and "multiNode" in done.stderr
