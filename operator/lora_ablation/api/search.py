"""The grid an ablation searches: module sets x ranks x variants x seeds x layer subsets, and the
two-stage elimination that prunes it."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

from pydantic import AfterValidator, Field, WithJsonSchema, field_validator

from lora_ablation.api.base import ApiModel
from lora_ablation.api.stages import EarlyStoppingSpec
from lora_ablation.modules.groups import canonical_module_set, validate_module_name
from lora_ablation.modules.layers import PATTERN as LAYERS_PATTERN
from lora_ablation.modules.layers import check as check_layers

MAX_SEEDS = 32  # a seed interval narrows as 1/sqrt(n): past 32 seeds it barely moves, and the grid multiplies


class Variant(str, Enum):
    lora = "lora"
    rslora = "rslora"
    dora = "dora"
    loraplus = "loraplus"


ModuleSet = Annotated[
    list[str],
    Field(min_length=1, max_length=32, json_schema_extra={"x-kubernetes-list-type": "atomic"}),
]


def _layer_subset(value: str) -> str:
    problem = check_layers(value)
    if problem:
        raise ValueError(problem)
    return value


LayerSubset = Annotated[
    str,
    AfterValidator(_layer_subset),
    WithJsonSchema({"type": "string", "pattern": LAYERS_PATTERN.pattern, "maxLength": 320}),
]


class SearchSpec(ApiModel):
    module_sets: list[ModuleSet] = Field(
        description="Module sets to compare. Each entry is a list of logical groups (qkv, o_proj, fc1, fc2, "
        "attn, mlp, all) or raw module names (q_proj, attn.c_proj) resolved against the model.",
        min_length=1,
        max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "atomic"},
    )
    ranks: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        [16],
        description="LoRA ranks r to try; every module set is trained at every rank.",
        min_length=1,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    alpha_over_rank: float = Field(
        2.0, gt=0, le=1024, description="lora_alpha = alphaOverRank x r, so the update scale is constant across ranks."
    )
    variants: list[Variant] = Field(
        [Variant.lora],
        description="Adapter variants: lora, rslora (rank-stabilised scaling), dora (weight-decomposed) or "
        "loraplus (larger learning rate for B).",
        min_length=1,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    include_baseline: bool = Field(
        True, description="Also evaluate and time the base model with no adapter, once per dataset."
    )
    seeds: list[Annotated[int, Field(ge=0, le=2**32 - 1)]] | None = Field(
        None,
        description="Train every configuration once per seed (data order, adapter initialisation, dropout), "
        "e.g. [1, 2, 3]; the summary then reports a mean and a 95% interval per configuration and ranks "
        "configurations whose intervals overlap as tied. Unset: one run with training.seed. Overrides "
        "training.seed when set.",
        min_length=1,
        max_length=MAX_SEEDS,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )

    layers: list[LayerSubset] = Field(
        ["all"],
        description="Layer subsets to try: every configuration is trained once per subset. all, firstHalf, "
        "lastHalf, everyOther (even indices), or explicit 0-based indices such as '0,2,4' or '8-15'; mapped to "
        "PEFT's layers_to_transform.",
        min_length=1,
        max_length=8,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    early_stopping: EarlyStoppingSpec | None = Field(
        None,
        description="Two-stage elimination: train every configuration for a first fraction of its steps, stop "
        "the losing ones per dataset (state Eliminated) and resume the others from their checkpoint.",
    )

    @field_validator("layers")
    @classmethod
    def _layers(cls, layers: list[str]) -> list[str]:
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers repeat a value ({layers})")
        return layers

    @field_validator("module_sets")
    @classmethod
    def _module_sets(cls, sets: list[list[str]]) -> list[list[str]]:
        problems: list[str] = []
        seen: dict[tuple[str, ...], int] = {}
        for index, module_set in enumerate(sets):
            for name in module_set:
                problem = validate_module_name(name)
                if problem:
                    problems.append(f"moduleSets[{index}]: {problem}")
            if len(set(module_set)) != len(module_set):
                problems.append(f"moduleSets[{index}]: lists a module twice ({module_set})")
            if "all" in module_set and len(module_set) > 1:
                problems.append(f"moduleSets[{index}]: 'all' already covers every group; list it alone")
            key = canonical_module_set(module_set)
            if key in seen and not problems:
                problems.append(
                    f"moduleSets[{index}]: same modules as moduleSets[{seen[key]}] ({'+'.join(key)}); remove one"
                )
            seen.setdefault(key, index)
        if problems:
            raise ValueError("; ".join(problems))
        return sets

    @field_validator("ranks")
    @classmethod
    def _ranks(cls, ranks: list[int]) -> list[int]:
        if len(set(ranks)) != len(ranks):
            raise ValueError(f"ranks repeat a value ({ranks})")
        return ranks

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None and len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds repeat a value ({seeds}): a repeated seed repeats the same run")
        return seeds

    @field_validator("variants")
    @classmethod
    def _variants(cls, variants: list[Variant]) -> list[Variant]:
        if len(set(variants)) != len(variants):
            raise ValueError(f"variants repeat a value ({[str(v) for v in variants]})")
        return variants
