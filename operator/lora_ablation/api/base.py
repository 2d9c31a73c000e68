"""Shared pydantic plumbing: camelCase aliases, strict unknown-field handling, error formatting."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, WithJsonSchema
from pydantic.alias_generators import to_camel

GROUP = "lora.ablation.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "LoraAblation"
PLURAL = "loraablations"
SINGULAR = "loraablation"
SHORT_NAMES = ("lab", "lorab")

# What the API server and the kubelet accept, so a spec that passes here never yields a refused Job.
# The patterns are RE2 (the API server's regex engine) and Python alike.
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # Job names, namespaces; <= 63
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")  # <= 253
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")  # <= 63
QUALIFIED_NAME = re.compile(  # label and annotation keys, extended resource names: [prefix/]name
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")  # <= 253
NO_SPACE = re.compile(r"^\S+$")


def _qualified_name_ok(value: str) -> bool:
    prefix, _, name = value.rpartition("/")
    return bool(QUALIFIED_NAME.fullmatch(value)) and len(prefix) <= 253 and len(name) <= 63


def _constrained(pattern: re.Pattern[str], max_length: int, expected: str, extra_check: Any = None) -> Any:
    """A string type checked with a message that says what is expected; the CRD gets the same pattern."""

    def check(value: str) -> str:
        if len(value) > max_length or not pattern.fullmatch(value) or (extra_check and not extra_check(value)):
            raise ValueError(f"expected {expected}, at most {max_length} characters")
        return value

    schema = {"type": "string", "pattern": pattern.pattern, "maxLength": max_length}
    return Annotated[str, AfterValidator(check), WithJsonSchema(schema)]


ObjectName = _constrained(
    DNS1123_SUBDOMAIN, 253, "a Kubernetes object name: lowercase letters, digits, '-' and '.', "
    "starting and ending with a letter or digit"
)
LabelName = _constrained(DNS1123_LABEL, 63, "a DNS-1123 label: lowercase letters, digits and '-', "
                         "starting and ending with a letter or digit")  # fmt: skip
LabelValue = _constrained(LABEL_VALUE, 63, "a label value: letters, digits, '-', '_' and '.', "
                          "starting and ending with a letter or digit")  # fmt: skip
QualifiedName = _constrained(
    QUALIFIED_NAME, 317, "a qualified name such as example.com/name (prefix a DNS subdomain of at most 253 "
    "characters, name at most 63 letters, digits, '-', '_' or '.')", _qualified_name_ok
)
SecretKey = _constrained(SECRET_KEY, 253, "a Secret key: letters, digits, '-', '_' and '.'")
ImageReference = _constrained(NO_SPACE, 1024, "a container image reference without whitespace")


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, snake_case in Python, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
        use_enum_values=True,
        validate_default=True,  # so enum defaults are stored as their plain values too
        allow_inf_nan=False,  # NaN and Infinity are not JSON: a status or summary holding one cannot be stored
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
        elif part == "[key]":  # pydantic's marker for a mapping key that failed, not its value
            out += " (key)"
        elif str(part).startswith(("function-", "tagged-union", "list[", "dict[")):
            continue  # pydantic's internal validator names say nothing to a user
        else:
            out += f".{part}" if out else str(part)
    return out or "(root)"


_SCALAR_TYPES = {"int_type", "float_type", "bool_type", "int_parsing", "float_parsing", "bool_parsing"}


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
            if isinstance(got, str) and item["type"] in _SCALAR_TYPES:
                message += "; a quoted value is a string, which the API server refuses too: write it without quotes"
        lines.append(f"{where}: {message}")
    return lines


class SpecError(ValueError):
    """A manifest or spec that cannot be used, with one line per problem, each naming its field."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))
