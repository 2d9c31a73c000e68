"""Hypothesis strategies for "every object the CRD's OpenAPI schema admits", built from the generated schema itself.

hypothesis-jsonschema would be the tool, but its current release breaks on current Hypothesis (`'many' object has
no attribute 'more'`), and a CRD schema is OpenAPI 3.0 (nullable, boolean exclusiveMinimum, x-kubernetes-*) rather
than the JSON Schema drafts it reads. The subset a structural CRD schema uses is small, so it is covered here.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# Free text reaches names, messages and Job env: make sure odd and non-ASCII characters show up.
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


def _string(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    longest = schema.get("maxLength", 80)
    shortest = schema.get("minLength", 0)
    if "pattern" in schema:
        base = st.from_regex(schema["pattern"], fullmatch=True)
    else:
        base = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=shortest, max_size=longest)
    return base.filter(lambda s: shortest <= len(s) <= longest)


def _number(schema: dict[str, Any], integer: bool) -> st.SearchStrategy[Any]:
    low, high = schema.get("minimum"), schema.get("maximum")
    if integer:
        low = None if low is None else int(low) + (1 if schema.get("exclusiveMinimum") else 0)
        high = None if high is None else int(high) - (1 if schema.get("exclusiveMaximum") else 0)
        return st.integers(low if low is not None else -(2**31), high if high is not None else 2**31)
    return st.floats(low, high, allow_nan=False, allow_infinity=False, exclude_min=bool(schema.get("exclusiveMinimum")),
                     exclude_max=bool(schema.get("exclusiveMaximum")))  # fmt: skip


def from_crd_schema(schema: dict[str, Any], skip: frozenset[str] = frozenset(), max_items: int = 4) -> Any:
    """A strategy for values valid against a structural CRD schema (CEL rules are not applied: the models and the
    operator must cope with what they forbid too). Properties named in `skip` are never generated."""
    kind = schema.get("type")
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return st.dictionaries(st.text(max_size=8), st.none() | st.integers() | TEXT, max_size=3)
    if kind == "object" and "properties" in schema:
        props = {k: v for k, v in schema["properties"].items() if k not in skip}
        required = [k for k in schema.get("required", []) if k in props]
        optional = {k: from_crd_schema(v, skip, max_items) for k, v in props.items() if k not in required}
        return st.fixed_dictionaries({k: from_crd_schema(props[k], skip, max_items) for k in required},
                                     optional=optional)  # fmt: skip
    if kind == "object":
        values = from_crd_schema(schema.get("additionalProperties") or {"type": "string"}, skip, max_items)
        return st.dictionaries(TEXT, values, max_size=min(schema.get("maxProperties", 3), 3))
    if kind == "array":
        items = from_crd_schema(schema["items"], skip, max_items)
        low = schema.get("minItems", 0)
        high = max(low, min(schema.get("maxItems", max_items), max_items))
        unique = schema.get("x-kubernetes-list-type") in {"set", "map"}
        return st.lists(items, min_size=low, max_size=high, unique_by=(lambda x: repr(x)) if unique else None)
    if kind == "string":
        return _string(schema)
    if kind in {"integer", "number"}:
        return _number(schema, kind == "integer")
    if kind == "boolean":
        return st.booleans()
    raise ValueError(f"schema type {kind!r} is not covered: {schema}")


# Module sets that are pairwise different after canonicalisation (attn == qkv+o_proj would be a duplicate).
MODULE_SETS = [["qkv"], ["o_proj"], ["fc1"], ["fc2"], ["o_proj", "fc2"], ["all"], ["mlp"], ["q_proj", "v_proj"]]


@st.composite
def usable_specs(draw: Any, spec_schema: dict[str, Any]) -> dict[str, Any]:
    """Specs the CRD admits, repaired where the models ask more than the schema can say (valid module groups,
    unique dataset names, one of epochs/maxSteps), so most of them plan and reach the Job builders."""
    raw = draw(from_crd_schema(spec_schema, skip=frozenset({"affinity"})))
    raw["search"]["moduleSets"] = draw(st.lists(st.sampled_from(MODULE_SETS), min_size=1, max_size=4, unique_by=str))
    for index, dataset in enumerate(raw["datasets"]):
        dataset["name"] = (dataset["name"][:20].rstrip("-") or "d") + f"-{index}"
    training = raw.get("training") or {}
    if "epochs" in training and "maxSteps" in training:
        del training["maxSteps"]
    if (raw.get("latency") or {}).get("enabled") is False:
        (raw.get("selection") or {}).pop("latencyBudgetMs", None)
    # file:// exists only on one machine (InvalidSpec in a cluster, covered by from_crd_schema): plan the rest.
    if raw["baseModel"]["uri"].startswith("file://"):
        raw["baseModel"]["uri"] = "hf://org/model"
    for dataset in raw["datasets"]:
        for split in ("train", "eval"):
            if dataset[split].startswith(("file://", "/")):
                dataset[split] = f"s3://data/{split}.jsonl"
    if raw["storage"]["uri"].startswith("file://"):
        raw["storage"]["uri"] = "s3://results/ablations"
    return raw
