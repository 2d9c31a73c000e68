"""Shared pydantic plumbing: camelCase aliases, strict unknown-field handling, error formatting."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

GROUP = "lora.ablation.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "LoraAblation"
PLURAL = "loraablations"
SINGULAR = "loraablation"
SHORT_NAMES = ("lab", "lorab")

# DNS-1123 label: what Kubernetes accepts as a Job name or a label value.
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, snake_case in Python, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
        use_enum_values=True,
        validate_default=True,  # so enum defaults are stored as their plain values too
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in YAML/JSON: camelCase keys, unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class OpenModel(ApiModel):
    """An observed object (status, results): unknown fields from newer writers are kept, not rejected."""

    model_config = ConfigDict(extra="allow")


def format_location(loc: tuple[Any, ...], root: str = "") -> str:
    """('spec', 'datasets', 1, 'metric') -> 'spec.datasets[1].metric'."""
    out = root
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "tagged-union", "list[", "dict[")):
            continue  # pydantic's internal validator names say nothing to a user
        else:
            out += f".{part}" if out else str(part)
    return out or "(root)"


def format_validation_error(error: ValidationError, root: str = "") -> list[str]:
    """One line per problem, each naming the field: 'spec.search.ranks[0]: must be >= 1 (got 0)'."""
    lines = []
    for item in error.errors():
        where = format_location(tuple(item["loc"]), root)
        message = item["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if item["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; fields are camelCase)"
        elif item["type"] == "missing":
            message = "required field is missing"
        elif "input" in item and item["type"] not in {"model_type", "dict_type"}:
            got = item["input"]
            if isinstance(got, (str, int, float, bool)) or got is None:
                message += f" (got {got!r})"
        lines.append(f"{where}: {message}")
    return lines


class SpecError(ValueError):
    """A manifest or spec that cannot be used, with one line per problem, each naming its field."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))
