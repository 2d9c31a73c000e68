"""The LoraAblation custom resource as a whole: apiVersion, kind, metadata, spec, status."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lora_ablation.api.base import API_VERSION, DNS1123_LABEL, KIND, SpecError, format_validation_error
from lora_ablation.api.spec import LoraAblationSpec
from lora_ablation.api.status import LoraAblationStatus

# The name is the value of the ablation label on every Job (a label value: at most 63 characters); trial and
# preflight Job names trim it before their hash (lora_ablation.api.naming), so any valid name yields valid Jobs.
MAX_ABLATION_NAME = 63


class ObjectMeta(BaseModel):
    """The parts of metadata the project reads; everything else is kept as is."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = Field(description="Name of the LoraAblation.")
    namespace: str = Field("default", description="Namespace.")
    generation: int | None = Field(None, description="Spec generation.")
    uid: str | None = Field(None, description="Object uid.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if len(value) > MAX_ABLATION_NAME or not DNS1123_LABEL.fullmatch(value):
            raise ValueError(
                f"expected a DNS-1123 label of at most {MAX_ABLATION_NAME} characters "
                "(lowercase letters, digits, '-'); it becomes a label value on every trial Job"
            )
        return value


class LoraAblation(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    api_version: str = Field(API_VERSION, alias="apiVersion")
    kind: str = Field(KIND)
    metadata: ObjectMeta
    spec: LoraAblationSpec
    status: LoraAblationStatus | None = None

    @field_validator("api_version")
    @classmethod
    def _api_version(cls, value: str) -> str:
        if value != API_VERSION:
            raise ValueError(f"expected {API_VERSION}")
        return value

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        if value != KIND:
            raise ValueError(f"expected {KIND}")
        return value


def parse_ablation(document: Any) -> LoraAblation:
    """Validate one manifest as the API server would; SpecError lists every problem with its field path.

    Strictly typed, as JSON: `parallelism: "8"` or `gradientCheckpointing: "yes"` is a string where the CRD wants
    an integer or a boolean, and the API server refuses it, so this does too (an integer still passes for a number).
    YAML timestamps and other non-JSON scalars become strings, as kubectl sends them.
    """
    if not isinstance(document, dict):
        raise SpecError([f"(root): expected a {KIND} mapping, got {type(document).__name__}"])
    try:
        return LoraAblation.model_validate_json(json.dumps(document, default=str), strict=True)
    except ValidationError as error:
        raise SpecError(format_validation_error(error)) from None


def parse_spec(spec: Any, name: str = "", namespace: str = "default") -> LoraAblationSpec:
    """Validate a bare spec (what the operator receives from the API), errors rooted at 'spec'."""
    try:
        return LoraAblationSpec.model_validate(spec or {})
    except ValidationError as error:
        raise SpecError(format_validation_error(error, root="spec")) from None
