"""docs/field-reference.md is generated from the API models and kept in step with them, like the CRD."""

from __future__ import annotations

from conftest import ROOT
from lora_ablation.api.crdgen import build_crd
from lora_ablation.api.fieldref import render_reference

PAGE = ROOT / "docs" / "field-reference.md"


def test_the_checked_in_reference_matches_the_models():
    assert PAGE.read_text() == render_reference(), (
        "docs/field-reference.md is stale: python -m lora_ablation.api.fieldref > docs/field-reference.md"
    )


def _crd_paths(node: dict, path: str, out: set[str]) -> None:
    for name, child in node.get("properties", {}).items():
        where = f"{path}.{name}"
        out.add(where)
        inner = child.get("items", {}) if child.get("type") == "array" else child
        _crd_paths(inner, where + ("[]" if child.get("type") == "array" else ""), out)


def test_every_field_the_crd_admits_in_spec_is_in_the_reference_with_its_description():
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    paths: set[str] = set()
    _crd_paths(schema, "spec", paths)
    page = render_reference()
    listed = {line.split("`")[1] for line in page.splitlines() if line.startswith("| `spec")}
    assert paths == listed
    assert "| `spec.execution.parallelism` | integer | `4` | >= 1 | At most this many trials run at once. |" in page
    assert "kubectl explain lab.spec" in page
