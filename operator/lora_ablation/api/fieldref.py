"""The field reference (docs/field-reference.md), generated from the same pydantic models as the CRD: every spec
field with its type, default, bounds and help text. tests/core/api/test_field_reference.py fails when the page
and the models drift apart; regenerate with `python -m lora_ablation.api.fieldref > docs/field-reference.md`."""

from __future__ import annotations

import sys
from typing import Any

from lora_ablation.api.spec import LoraAblationSpec

BOUNDS = (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"),
          ("minLength", "length >="), ("maxLength", "length <="), ("minItems", "items >="),
          ("maxItems", "items <="))  # fmt: skip


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = dict(defs[node["$ref"].rsplit("/", 1)[-1]])
        return {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    options = [o for o in node.get("anyOf", []) if o.get("type") != "null"]
    if len(options) == 1:
        return {**_resolve(options[0], defs), **{k: v for k, v in node.items() if k != "anyOf"}}
    return node


def _type(node: dict[str, Any], defs: dict[str, Any]) -> str:
    node = _resolve(node, defs)
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    if node.get("type") == "array":
        return f"list of {_type(node.get('items', {}), defs)}"
    if node.get("type") == "object" and "properties" not in node:
        values = node.get("additionalProperties")
        return "map of " + (_type(values, defs) if isinstance(values, dict) else "string")
    if "properties" in node:
        return "object"
    if "anyOf" in node:
        return " or ".join(_type(o, defs) for o in node["anyOf"] if o.get("type") != "null")
    return str(node.get("type", "any"))


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _rows(node: dict[str, Any], defs: dict[str, Any], path: str, out: list[str]) -> None:
    node = _resolve(node, defs)
    required = set(node.get("required", []))
    for name, child in node.get("properties", {}).items():
        field = _resolve(child, defs)
        where = f"{path}.{name}"
        default = f"`{child['default']}`" if "default" in child and child["default"] is not None else ""
        if name in required:
            default = "required"
        bounds = ", ".join(f"{word} {field[key]}" for key, word in BOUNDS if key in field)
        if "pattern" in field:
            bounds = ", ".join(filter(None, [bounds, f"pattern `{field['pattern']}`"]))
        description = child.get("description") or field.get("description", "")
        out.append(f"| `{where}` | {_type(child, defs)} | {_cell(default)} | {_cell(bounds)} | {_cell(description)} |")
        inner = field.get("items", {}) if field.get("type") == "array" else field
        inner = _resolve(inner, defs)
        if "properties" in inner:
            _rows(inner, defs, where + ("[]" if field.get("type") == "array" else ""), out)


def render_reference() -> str:
    schema = LoraAblationSpec.model_json_schema(by_alias=True)
    defs = schema.get("$defs", {})
    rows: list[str] = []
    _rows(schema, defs, "spec", rows)
    return "\n".join([
        "# LoraAblation field reference",
        "",
        "Generated from the API models (`python -m lora_ablation.api.fieldref > docs/field-reference.md`); the CRD "
        "carries the same descriptions, so on a cluster `kubectl explain lab.spec`, `kubectl explain "
        "lab.spec.search` or `kubectl explain lab.spec --recursive` show them too. `lora-ablation validate FILE` "
        "checks a manifest against exactly these types and bounds before the API server does.",
        "",
        "| Field | Type | Default | Bounds | Description |",
        "| --- | --- | --- | --- | --- |",
        *rows,
        "",
    ])


if __name__ == "__main__":
    sys.stdout.write(render_reference())
