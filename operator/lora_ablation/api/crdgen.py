"""Generate the LoraAblation CustomResourceDefinition from the pydantic models.

Pydantic emits JSON Schema 2020-12; a CRD needs a *structural* OpenAPI v3.0 schema: every $ref
inlined, `nullable: true` instead of `anyOf [.., null]`, no `additionalProperties: false`, no
`default` (the API server would write defaults back into spec, which GitOps tools see as drift),
boolean `exclusiveMinimum`, and no `title`/`const`.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from lora_ablation.api.base import API_VERSION, GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION
from lora_ablation.api.resource import MAX_ABLATION_NAME
from lora_ablation.api.spec import LoraAblationSpec
from lora_ablation.api.status import LoraAblationStatus

_DROP_KEYS = {"title", "default", "examples", "discriminator"}

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progress", "description": "Finished trials / total"},
    {
        "name": "ETA",
        "type": "string",
        "jsonPath": ".status.liveProgress.eta",
        "description": "Estimated time left, from the running trials' progress",
    },
    {"name": "Best", "type": "string", "jsonPath": ".status.bestConfig", "description": "Best mean score so far"},
    {
        "name": "Recommendation",
        "type": "string",
        "jsonPath": ".status.recommendation.balanced",
        "description": "Lowest latency within tolerance of the best",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[-1]])
        # Field-level keys (description, validations) win over the referenced model's.
        target.update(node)
        node = target
    any_of = node.pop("anyOf", None)
    if any_of is not None:
        non_null = [option for option in any_of if option.get("type") != "null"]
        if len(non_null) != 1:
            raise ValueError(f"cannot express a union of {len(non_null)} types structurally: {any_of}")
        merged = dict(non_null[0])
        if "$ref" in merged:
            merged = _structural(merged, defs)
        merged.update(node)
        node = merged
        if len(non_null) != len(any_of):
            node["nullable"] = True
    patterns = node.pop("patternProperties", None)
    if patterns:
        # Structural schemas allow neither patternProperties nor propertyNames: keep the value schema and leave
        # the keys to the operator's validation (a CEL rule over map keys has no length bound for the cost budget).
        (node["additionalProperties"],) = patterns.values()
        node.pop("propertyNames", None)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key in {"exclusiveMinimum", "exclusiveMaximum"} and isinstance(value, bool):
            out[key] = value  # already OpenAPI v3.0 (a schema converted once, e.g. inside an anyOf)
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "properties":
            out["properties"] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key in {"items", "additionalProperties"}:
            if isinstance(value, bool):
                continue  # true: unspecified; false: forbidden in CRDs (pruning handles unknown fields)
            out[key] = _structural(value, defs)
        else:
            out[key] = _structural(value, defs)
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("additionalProperties", None)
        out["type"] = "object"
    if "properties" in out:
        out.pop("additionalProperties", None)
    return out


def openapi_schema(model: type) -> dict[str, Any]:
    """A model's structural OpenAPI v3.0 schema."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _structural(raw, defs)


def build_crd() -> dict[str, Any]:
    spec_schema = openapi_schema(LoraAblationSpec)
    spec_schema["description"] = (
        "Desired ablation: model, datasets, search grid, training, latency, execution, storage."
    )
    status_schema = openapi_schema(LoraAblationStatus)
    status_schema["description"] = "Observed progress and results, written by the operator."
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "lora-ablation-operator", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["ml", "lora"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A LoRA target-module and rank ablation, run as one training Job per trial.",
                            "required": ["spec"],
                            # The one rule a root schema may state about metadata: the name's length.
                            "x-kubernetes-validations": [
                                {
                                    "rule": f"size(self.metadata.name) <= {MAX_ABLATION_NAME}",
                                    "message": f"metadata.name must be at most {MAX_ABLATION_NAME} characters: it "
                                    "becomes a label value on every trial Job",
                                }
                            ],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def render_crd() -> str:
    header = (
        "# Generated by `lora-ablation crd` from the pydantic models in lora_ablation.api; do not edit.\n"
        f"# Regenerate with `make crds` (also copies it into the Helm chart). apiVersion {API_VERSION}\n"
    )
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120)
