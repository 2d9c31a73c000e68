"""For every spec the CRD admits and every file a trial image can write: reconcile never raises, every Job it
emits passes Kubernetes' own validation, and the status it writes validates against the CRD schema.

Example counts: a CI-sized default; `HYPOTHESIS_PROFILE=thorough` runs thousands (the numbers in the issue note)."""

from __future__ import annotations

import json
import math
import os
import re

import kubernetes_validate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_schema_validator import OAS30Validator

from lora_ablation.api.crdgen import build_crd
from lora_ablation.storage.open import open_store
from lora_ablation.storage.results import read_result
from lora_ablation_operator.collector import preflight_problems
from lora_ablation_operator.policy import Policy
from lora_ablation_operator.reconcile import reconcile
from lora_ablation_operator.settings import Settings
from support.kube_validation import validate_metadata, validate_pod_template
from support.reconcile_cases import observed
from support.schema_strategies import from_crd_schema, usable_specs

settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
settings.register_profile("thorough", max_examples=2500, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT_SCHEMA = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
SPEC_SCHEMA = ROOT_SCHEMA["properties"]["spec"]
CRD = OAS30Validator(ROOT_SCHEMA)
SETTINGS = Settings(trainer_image="trainer:test", max_trial_statuses=20, policy=Policy.open())
NOW = "2026-11-23T12:00:00Z"
# Kubernetes' rules, written out here rather than imported from the code under test.
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
NAMES = st.one_of(
    st.just("a" * 63),
    st.from_regex(DNS1123_LABEL, fullmatch=True).filter(lambda s: len(s) <= 63),
    st.from_regex(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", fullmatch=True).filter(lambda s: len(s) <= 253),
)


def assert_valid_job(job: dict) -> None:
    name = job["metadata"]["name"]
    assert len(name) <= 63 and DNS1123_LABEL.match(name), name  # it becomes the pods' job-name label
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        for key, value in labels.items():
            assert LABEL_KEY.match(key) and len(key.rpartition("/")[2]) <= 63, key
            assert len(value) <= 63 and LABEL_VALUE.match(value), (key, value)
    # What the emulated API server checks on create, and the built-in Job schema.
    errors = validate_metadata(job["metadata"]) + validate_pod_template(job["spec"]["template"], "spec.template")
    assert not errors, errors
    kubernetes_validate.validate(job, "1.33.0", strict=True)


def assert_status_valid(raw_spec: dict, name: str, status: dict) -> None:
    json.dumps(status, allow_nan=False)  # storable at all
    obj = {"apiVersion": "lora.ablation.dev/v1alpha1", "kind": "LoraAblation", "metadata": {"name": name},
           "spec": raw_spec, "status": status}  # fmt: skip
    errors = [f"{list(e.path)}: {e.message}" for e in CRD.iter_errors(obj) if list(e.path)[:1] == ["status"]]
    assert not errors, errors


def finish(job: dict, kind: str) -> dict:
    return {**job, "status": {"conditions": [{"type": kind, "status": "True", "reason": "X", "message": "m"}]}}


def lifecycle(raw: dict, name: str, outcomes: list[str]) -> None:
    """create -> preflight passes -> trials start -> they end as `outcomes` say; checked at every step."""
    status: dict = {}
    jobs: dict[str, dict] = {}
    for step in range(4):
        decision = reconcile(
            observed(raw, name=name, namespace="team-a", status=status, jobs=jobs, now=NOW),
            SETTINGS,
        )
        for job in decision.create:
            assert_valid_job(job)
            jobs[job["metadata"]["name"]] = job
        status = {**status, **decision.status}
        assert_status_valid(raw, name, status)
        if decision.finished:
            return
        for index, (job_name, job) in enumerate(sorted(jobs.items())):
            if not job.get("status"):
                outcome = outcomes[(index + step) % len(outcomes)] if outcomes else "Complete"
                jobs[job_name] = finish(job, outcome) if outcome in {"Complete", "Failed"} else job


@given(NAMES, st.data())
def test_every_admitted_spec_ends_in_a_condition_without_raising(name, data):
    raw = data.draw(from_crd_schema(SPEC_SCHEMA, skip=frozenset({"affinity"})))
    decision = reconcile(
        observed(raw, name=name, now=NOW),
        SETTINGS,
    )
    assert decision.status["conditions"] and all(c["reason"] for c in decision.status["conditions"])
    for job in decision.create:
        assert_valid_job(job)
    assert_status_valid(raw, name, decision.status)


@given(NAMES, usable_specs(SPEC_SCHEMA), st.lists(st.sampled_from(["Complete", "Failed", "Running"]), max_size=4))
def test_usable_specs_run_their_lifecycle_with_valid_jobs_and_status(name, raw, outcomes):
    lifecycle(raw, name, outcomes)


JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)  # fmt: skip
GOOD = {"ablation": "a", "trial": "t", "dataset": "d", "variant": "lora", "modules": ["o_proj"], "rank": 8,
        "eval": {"metric": "accuracy", "score": 0.5, "samples": 10}}  # fmt: skip


@st.composite
def hostile_files(draw) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "spoiled", "truncated"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(JSON_VALUES)).encode()
    spoiled = json.loads(json.dumps(GOOD))
    path = draw(st.sampled_from([("eval", "score"), ("rank",), ("eval", "samples"), ("trial",), ("modules",)]))
    node = spoiled
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = draw(JSON_VALUES)
    text = json.dumps(spoiled)
    return text[: draw(st.integers(0, len(text)))].encode() if kind == "truncated" else text.encode()


@given(hostile_files())
def test_hostile_result_files_are_a_problem_never_an_exception(tmp_path_factory, body):
    store = open_store(str(tmp_path_factory.mktemp("store")))
    store.write_bytes("t/result.json", body)
    store.write_bytes("preflight/preflight.json", body)
    read = read_result(store, "t")
    assert (read.result is None) == bool(read.problem)
    if read.result is not None:
        assert math.isfinite(read.result.eval.score) and read.result.trial == "t"
    problems = preflight_problems(store)
    assert problems is None or all(isinstance(p, str) for p in problems)
