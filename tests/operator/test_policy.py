"""The admin policy as the operator enforces it: the shared case table against policy.py, the plan a refused spec
gets (Forbidden, no Job), the storage the operator opens itself, and the real operator end to end."""

from __future__ import annotations

import re
from typing import Any

import pytest
from test_reconcile import NOW

from lora_ablation.api.resource import SpecError, parse_spec
from lora_ablation_operator import conditions as c
from lora_ablation_operator.collector import delete_results
from lora_ablation_operator.policy import Forbidden, Policy, image_parts, violations
from lora_ablation_operator.reconcile import reconcile
from lora_ablation_operator.settings import Settings
from support.cluster import manifest, trial_jobs, wait_for
from support.policy_cases import (
    CONTEXT,
    DEFAULT_ENDPOINT,
    DEFAULT_SECRET,
    TRAINER_IMAGE,
    params,
    policy_values,
)  # fmt: skip
from support.policy_cases import manifest as case_manifest
from support.reconcile_cases import observed

pytestmark = pytest.mark.timeout(120)


def settings_for(values: dict[str, Any]) -> Settings:
    """Settings as the chart's values make them (the chart side: tests/chart/test_admission_policy.py)."""
    policy = Policy(tuple(values["allowedImageRepositories"]), tuple(values["allowedImageDigests"]),
                    tuple(values["allowedServiceAccounts"]), tuple(values["allowedSecrets"]),
                    tuple(values["allowedBuckets"]), tuple(values["allowedStorageEndpoints"]),
                    tuple(values["allowedTrackingUris"]), tuple(values["allowedClaims"]),
                    tuple(values["allowedPriorityClasses"]),
                    tuple(values["allowedTolerationKeys"]), tuple(values["allowedTolerationEffects"]),
                    tuple(values["allowedNodeSelectors"]), values["allowAffinity"])  # fmt: skip
    return Settings(trainer_image=CONTEXT["trainerImage"], default_storage_endpoint=DEFAULT_ENDPOINT,
                    default_credentials_secret=DEFAULT_SECRET, policy=policy)  # fmt: skip


def refused_paths(messages: list[str]) -> set[str]:
    return {re.sub(r"\[\d+\]", "[*]", m.split(":", 1)[0]) for m in messages}


@pytest.mark.parametrize(("policy", "patch", "refused"), params())
def test_policy_cases(policy, patch, refused):
    settings = settings_for(policy_values(policy))
    spec = parse_spec(case_manifest(**patch)["spec"])
    got = violations(spec, settings.policy, trainer_image=TRAINER_IMAGE, default_secret=DEFAULT_SECRET,
                     default_endpoint=DEFAULT_ENDPOINT)  # fmt: skip
    assert refused_paths(got) == refused, got
    for message in got:  # each names its rule and the chart value that changes it
        assert "allowed" in message and ("chart value policy." in message), message


def test_a_forbidden_spec_plans_nothing_and_says_why():
    raw = case_manifest(execution={"image": "docker.io/evil/miner:1"}, storage={"uri": "s3://elsewhere/x"})["spec"]
    decision = reconcile(
        observed(raw, generation=3, now=NOW),
        settings_for(policy_values({})),
    )
    ready = next(x for x in decision.status["conditions"] if x["type"] == c.READY)
    assert decision.create == [] and decision.summary is None and decision.finished
    assert ready["reason"] == c.FORBIDDEN == "Forbidden" and ready["observedGeneration"] == 3
    assert "spec.execution.image: 'docker.io/evil/miner:1'" in ready["message"]
    assert "spec.storage.uri: bucket 'elsewhere'" in ready["message"]
    assert [e[:2] for e in decision.events] == [("Warning", c.FORBIDDEN)]


def test_the_default_settings_allow_only_the_operators_own_image_secret_and_endpoint():
    settings = Settings(default_storage_endpoint=DEFAULT_ENDPOINT, default_credentials_secret=DEFAULT_SECRET)
    raw = case_manifest(storage={"uri": "s3://any/x", "endpoint": DEFAULT_ENDPOINT,
                                 "credentialsSecretRef": {"name": DEFAULT_SECRET}})["spec"]  # fmt: skip
    got = violations(parse_spec(raw), settings.policy, trainer_image=settings.trainer_image,
                     default_secret=DEFAULT_SECRET, default_endpoint=DEFAULT_ENDPOINT)  # fmt: skip
    assert refused_paths(got) == {"spec.storage.uri", "spec.datasets[*].train", "spec.datasets[*].eval"}


def test_settings_read_the_policy_from_the_environment(monkeypatch):
    monkeypatch.setenv("LORA_ABLATION_POLICY_IMAGE_REPOSITORIES", "registry.corp/ml/, ghcr.io/x/y")
    monkeypatch.setenv("LORA_ABLATION_POLICY_BUCKETS", "a,,b")
    monkeypatch.setenv("LORA_ABLATION_WORKERS", "3")
    settings = Settings.from_env()
    assert settings.policy.image_repositories == ("registry.corp/ml/", "ghcr.io/x/y")
    assert settings.policy.buckets == ("a", "b") and settings.policy.secrets == () and settings.workers == 3


@pytest.mark.parametrize(("image", "parts"), [
    ("trainer", ("trainer", None)), ("trainer:1", ("trainer", None)),
    ("registry:5000/a/b", ("registry:5000/a/b", None)), ("registry:5000/a/b:v1.2", ("registry:5000/a/b", None)),
    ("r/a@sha256:" + "c" * 64, ("r/a", "sha256:" + "c" * 64)),
    ("r/a:t@sha256:" + "c" * 64, ("r/a", "sha256:" + "c" * 64)),
])  # fmt: skip
def test_image_references_split_into_repository_and_digest(image, parts):
    assert image_parts(image) == parts


def test_a_trailing_newline_is_part_of_the_image_reference():
    """Python's `$` matches before a final newline (RE2's, in CEL and the CRD pattern, does not): the API type and the
    policy both read the whole string (fullmatch), so the two enforcement points agree."""
    image = "ghcr.io/lora-ablation/trainer:0.2.0\n"
    with pytest.raises(SpecError, match=r"execution\.image"):
        parse_spec(case_manifest(execution={"image": image})["spec"])
    spec = parse_spec(case_manifest()["spec"])  # the policy on its own, as if the type let it through
    spec.execution = spec.execution.model_copy(update={"image": image})
    got = violations(spec, settings_for(policy_values({})).policy, trainer_image=TRAINER_IMAGE)
    assert refused_paths(got) == {"spec.execution.image"} and image_parts(image) == (image, None)


def test_deleting_results_in_a_forbidden_bucket_or_endpoint_touches_nothing():
    settings = settings_for(policy_values({}))
    for storage in (
        {"uri": "s3://other-team/x", "retainOnDelete": False},
        {"uri": "s3://results/x", "endpoint": "http://169.254.169.254", "retainOnDelete": False},
    ):
        with pytest.raises(Forbidden, match="not an allowed"):  # before any client exists, let alone a request
            delete_results(storage, "ns", "demo", settings)


# -- the real operator -------------------------------------------------------------------------------------------
def test_operator_refuses_a_forbidden_spec_without_a_job_and_keeps_other_buckets(operated, s3_bucket):
    cluster = operated(policy_buckets=f"{s3_bucket[1]},datasets", policy_storage_endpoints="")  # chart defaults else
    cluster.s3.create_bucket(Bucket="other-team")
    cluster.s3.put_object(Bucket="other-team", Key="ablations/default/grab/keep.txt", Body=b"theirs")
    bad = manifest("grab", cluster.bucket, search={"moduleSets": [["o_proj"]]},
                   execution={"image": "docker.io/evil/miner:1", "serviceAccountName": "deployer"})  # fmt: skip
    bad["spec"]["storage"] = {"uri": "s3://other-team/ablations", "retainOnDelete": False}
    cluster.apply(bad)
    ready = wait_for(lambda: cluster.condition("grab") if cluster.condition("grab").get("reason") == "Forbidden"
                     else None, what="Forbidden")  # fmt: skip
    for field in ("spec.execution.image", "spec.execution.serviceAccountName", "spec.storage.uri"):
        assert field in ready["message"]
    assert cluster.jobs() == {} and "Forbidden" in cluster.events("grab")
    cluster.custom.delete_namespaced_custom_object("lora.ablation.dev", "v1alpha1", "default", "loraablations", "grab")
    wait_for(lambda: "ResultsKept" in cluster.events("grab"), what="ResultsKept")
    assert cluster.s3.list_objects_v2(Bucket="other-team")["KeyCount"] == 1, "the operator deleted in another bucket"
    # The same ablation within the policy runs: its preflight Job is created.
    cluster.apply(manifest("fine", cluster.bucket, search={"moduleSets": [["o_proj"]]}))
    wait_for(lambda: cluster.jobs(component="preflight"), what="a preflight Job")
    assert trial_jobs(cluster) == {}


def test_volumes_priority_and_placement_are_refused_at_apply_time_and_in_status_without_a_job(operated):
    """A tenant's reach past the pod (another team's claims, a system PriorityClass, every taint, nodes kept for
    another team) under the chart's defaults: the rendered ValidatingAdmissionPolicy refuses the manifest, and the
    operator, which sees objects created before a policy existed, says the same in status and makes no Job."""
    cluster = operated()  # every policy setting but buckets and endpoints at the operator's (and chart's) default
    bad = manifest("reach", cluster.bucket, search={"moduleSets": [["o_proj"]]},
                   baseModel={"uri": "pvc://team-b-models/llama"},
                   execution={"priorityClassName": "system-cluster-critical", "modelCacheClaim": "team-b-private",
                              "tolerations": [{"operator": "Exists"}],
                              "nodeSelector": {"dedicated": "team-b"}})  # fmt: skip
    bad["spec"]["datasets"] = [{**bad["spec"]["datasets"][0], "train": "pvc://payroll-db-backup/train.jsonl"}]
    fields = {"spec.baseModel.uri", "spec.datasets[*].train", "spec.execution.modelCacheClaim",
              "spec.execution.priorityClassName", "spec.execution.tolerations[*].key", "spec.execution.nodeSelector"}
    from support.chart import admit, chart  # the chart side, on the very manifest the operator gets

    at_apply = admit(chart({**policy_values({}), "allowedBuckets": ["*"]}), bad)
    assert refused_paths(at_apply or []) == fields, at_apply
    cluster.apply(bad)
    ready = wait_for(lambda: cluster.condition("reach") if cluster.condition("reach").get("reason") == "Forbidden"
                     else None, what="Forbidden")  # fmt: skip
    assert refused_paths(ready["message"].split("; ")) == fields, ready["message"]
    for value in ("policy.allowedClaims", "policy.allowedPriorityClasses", "policy.allowedTolerationKeys",
                  "policy.allowedNodeSelectors", "'team-b-models'", "'payroll-db-backup'", "'team-b-private'"):
        assert value in ready["message"]
    assert cluster.jobs() == {} and "Forbidden" in cluster.events("reach")
    logged = [line for line in cluster.operator_log().splitlines() if "default/reach: Forbidden:" in line]
    assert logged and "policy.allowedClaims" in logged[0], cluster.operator_log()[-3000:]
    # Within the policy (the GPU taint, a GPU model, the namespace's default priority) the same ablation runs.
    # A merge patch: None removes a field, and a map is merged (so the refused label is removed by name).
    placement = {"priorityClassName": None, "modelCacheClaim": None,
                 "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                 "nodeSelector": {"dedicated": None, "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}}  # fmt: skip
    cluster.patch_spec("reach", {"baseModel": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct"},
                                 "datasets": manifest("x", cluster.bucket)["spec"]["datasets"],
                                 "execution": placement})  # fmt: skip
    wait_for(lambda: cluster.jobs(component="preflight"), what="a preflight Job")
    # The pass creates the Job before it patches the status: the condition follows within the same pass.
    wait_for(lambda: cluster.condition("reach").get("reason") != "Forbidden", what="Forbidden cleared")
