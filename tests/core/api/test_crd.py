"""The CRD is generated from the models, structural, checked in without drift, and accepts the examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_schema_validator import OAS30Validator

from conftest import EXAMPLES, ROOT, minimal_manifest
from lora_ablation.api import parse_ablation
from lora_ablation.api.crdgen import build_crd, render_crd

CRD_FILE = ROOT / "crds" / "lora.ablation.dev_loraablations.yaml"


def _schema() -> dict[str, Any]:
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _walk(node: Any, path: str = ""):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.get("properties", {}).items():
            yield from _walk(value, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            yield from _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_checked_in_crd_matches_the_models():
    assert CRD_FILE.read_text() == render_crd(), "crds/ drifted from the API models: run `make crds`"


def test_chart_copy_matches():
    copies = list((ROOT / "helm").glob(f"*/files/crds/{CRD_FILE.name}"))
    assert copies, "the chart must ship the CRD"
    for copy in copies:
        assert copy.read_text() == CRD_FILE.read_text(), f"{copy} drifted from crds/: run `make crds`"


def test_schema_is_structural():
    forbidden = {"$ref", "anyOf", "oneOf", "allOf", "$defs", "default", "title", "const", "not"}
    for path, node in _walk(_schema()):
        assert not forbidden & node.keys(), f"{path}: {forbidden & node.keys()}"
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        assert node.get("additionalProperties") is not False, f"{path}: additionalProperties false"
        assert not ("properties" in node and "additionalProperties" in node), (
            f"{path}: both properties and additionalProperties"
        )
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, f"{path}: 2020-12 exclusiveMinimum"


def test_no_defaults_so_the_server_never_writes_them_into_spec():
    assert "default:" not in CRD_FILE.read_text()


def test_optional_fields_are_nullable_not_anyof():
    spec = _schema()["properties"]["spec"]
    assert spec["properties"]["baseModel"]["properties"]["revision"] == {
        "type": "string",
        "description": "Hub revision (branch, tag or commit) for hf:// models.",
        "nullable": True,
    }
    assert spec["required"] == ["baseModel", "datasets", "search", "storage"]


def test_descriptions_everywhere_in_spec():
    for path, node in _walk(_schema()["properties"]["spec"], "spec"):
        if path.endswith("[]") or path.endswith("{}") or path == "spec":
            continue
        assert node.get("description"), f"{path} has no description"


def test_crd_metadata_columns_subresource_and_cel():
    crd = build_crd()
    version = crd["spec"]["versions"][0]
    assert crd["metadata"]["name"] == "loraablations.lora.ablation.dev"
    assert crd["spec"]["names"]["shortNames"] == ["lab", "lorab"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Progress"] == ".status.progress"
    assert columns["ETA"] == ".status.liveProgress.eta"
    assert columns["Recommendation"] == ".status.recommendation.balanced"
    assert columns["Age"] == ".metadata.creationTimestamp"
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert any("latencyBudgetMs" in r for r in rules)
    training_rules = spec["properties"]["training"]["x-kubernetes-validations"]
    assert training_rules[0]["rule"] == "!has(self.epochs) || !has(self.maxSteps)"
    datasets = spec["properties"]["datasets"]
    assert datasets["x-kubernetes-list-type"] == "map" and datasets["x-kubernetes-list-map-keys"] == ["name"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["properties"]["kopf"]["x-kubernetes-preserve-unknown-fields"] is True


def _validator() -> OAS30Validator:
    return OAS30Validator(yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_the_crd_schema(path: Path):
    for document in yaml.safe_load_all(path.read_text()):
        if document and document.get("kind") == "LoraAblation":
            errors = sorted(str(e.message) for e in _validator().iter_errors(document))
            assert not errors, errors


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda s: s["search"].update(ranks=[0]), "minimum"),
        (lambda s: s["storage"].update(uri="gs://b/x"), "does not match"),
        (lambda s: s["datasets"][0].update(metric="acc"), "is not one of"),
        (
            lambda s: (
                s["execution"].update(parallelism=0) if "execution" in s else s.update(execution={"parallelism": 0})
            ),
            "minimum",
        ),
        (lambda s: s["search"].update(moduleSets=[[]]), "non-empty"),
        (lambda s: s["storage"].update(uri="s3://bucket/../x"), "does not match"),
        (lambda s: s["storage"].update(uri="s3://b-1/a//b"), "does not match"),
        (lambda s: s["storage"].update(uri="s3://b-1/a/./b"), "does not match"),
        (lambda s: s.update(execution={"queueName": "Team_A"}), "does not match"),
        (lambda s: s.update(execution={"priorityClassName": "x" * 254}), "is too long"),
        (lambda s: s.update(execution={"nodeSelector": {"gpu": "bad value!"}}), "does not match"),
        (lambda s: s.update(execution={"image": "a b"}), "does not match"),
        (lambda s: s["storage"].update(credentialsSecretRef={"name": "Upper"}), "does not match"),
    ],
)
def test_crd_schema_rejects_what_the_models_reject(mutate, fragment):
    manifest = minimal_manifest()
    mutate(manifest["spec"])
    errors = [e.message for e in _validator().iter_errors(manifest)]
    assert errors and any(fragment in e or "should be non-empty" in e or "is too short" in e for e in errors), errors


@pytest.mark.parametrize("uri", ["s3://bucket/prefix", "s3://b-1/a/b/", "s3://b-1/.hidden/..x/x..", "s3://b-1"])
def test_crd_schema_accepts_real_storage_prefixes(uri):
    manifest = minimal_manifest(storage={"uri": uri})
    assert not [e.message for e in _validator().iter_errors(manifest)]
    parse_ablation(manifest)  # and the models agree


def test_status_written_by_the_operator_validates():
    manifest = minimal_manifest()
    manifest["status"] = {
        "observedGeneration": 2,
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "TrialsRunning",
                "message": "3/6 trials done",
                "lastTransitionTime": "2026-11-23T12:00:00Z",
                "observedGeneration": 2,
            }
        ],
        "progress": "3/6",
        "trials": {"total": 6, "pending": 1, "running": 2, "succeeded": 3},
        "trialStatuses": [
            {"name": "demo-med-base-1234abcd", "dataset": "med", "variant": "none", "state": "Succeeded", "score": 0.4}
        ],
        "recommendation": {
            "accuracyFirst": "o_proj+fc2 r16 lora",
            "balanced": "o_proj r16 lora",
            "rationale": "within 2%",
        },
        "kopf": {"progress": {"anything": {"goes": True}}},
    }
    assert not list(_validator().iter_errors(manifest))
    manifest["status"]["trialStatuses"][0]["state"] = "Exploded"
    assert list(_validator().iter_errors(manifest))
