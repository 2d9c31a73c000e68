"""Module-group catalog: for each architecture family, where the qkv / o_proj / fc1 / fc2 weights live
and how big they are. Pure data plus arithmetic on config.json, so the operator and the planner can
resolve groups and estimate adapter sizes without torch. The trainer checks the same answer against
the real module tree (lora_ablation_trainer.module_tree); tests keep the two in agreement.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from lora_ablation.modules.dims import Dims

Size = Callable[[Dims], int]


@dataclass(frozen=True)
class Target:
    """One weight in every decoder layer, addressed relative to the layer ('self_attn.q_proj')."""

    path: str
    in_features: Size
    out_features: Size
    kind: Literal["module", "parameter"] = "module"  # parameter: a 3-D MoE expert tensor (PEFT target_parameters)
    experts: Size | None = None

    def lora_params(self, dims: Dims, rank: int, dora: bool = False) -> int:
        """LoRA adds A (r x in) and B (out x r); PEFT stacks experts along r; DoRA adds a magnitude per output."""
        per = rank * (self.in_features(dims) + self.out_features(dims))
        if dora:
            per += self.out_features(dims)
        return per * (self.experts(dims) if self.experts else 1)


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    layers_path: str
    groups: Mapping[str, tuple[Target, ...]]
    note: str = ""
    extra_linear: tuple[Target, ...] = field(default=())  # linear layers in no group (router, shared-expert gate)

    def targets(self) -> tuple[Target, ...]:
        return tuple(t for group in self.groups.values() for t in group) + self.extra_linear


def _h(d: Dims) -> int:
    return d.hidden


def _q(d: Dims) -> int:
    return d.heads * d.head_dim


def _kv(d: Dims) -> int:
    return d.kv_heads * d.head_dim


def _i(d: Dims) -> int:
    return d.intermediate


_LLAMA_GROUPS: dict[str, tuple[Target, ...]] = {
    "qkv": (
        Target("self_attn.q_proj", _h, _q),
        Target("self_attn.k_proj", _h, _kv),
        Target("self_attn.v_proj", _h, _kv),
    ),
    "o_proj": (Target("self_attn.o_proj", _q, _h),),
    "fc1": (Target("mlp.gate_proj", _h, _i), Target("mlp.up_proj", _h, _i)),
    "fc2": (Target("mlp.down_proj", _i, _h),),
}

_FUSED_QKV = (lambda d: d.hidden, lambda d: (d.heads + 2 * d.kv_heads) * d.head_dim)

FAMILIES: tuple[Family, ...] = (
    Family(
        "llama",
        ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2", "granite"),
        "model.layers",
        _LLAMA_GROUPS,
    ),
    Family(
        "phi3",
        ("phi3",),
        "model.layers",
        {
            "qkv": (Target("self_attn.qkv_proj", *_FUSED_QKV),),
            "o_proj": (Target("self_attn.o_proj", _q, _h),),
            "fc1": (Target("mlp.gate_up_proj", _h, lambda d: 2 * d.intermediate),),
            "fc2": (Target("mlp.down_proj", _i, _h),),
        },
    ),
    Family(
        "phi",
        ("phi",),
        "model.layers",
        {
            "qkv": _LLAMA_GROUPS["qkv"],
            "o_proj": (Target("self_attn.dense", _q, _h),),
            "fc1": (Target("mlp.fc1", _h, _i),),
            "fc2": (Target("mlp.fc2", _i, _h),),
        },
    ),
    Family(
        "gpt_neox",
        ("gpt_neox",),
        "gpt_neox.layers",
        {
            "qkv": (Target("attention.query_key_value", _h, lambda d: 3 * d.hidden),),
            "o_proj": (Target("attention.dense", _h, _h),),
            "fc1": (Target("mlp.dense_h_to_4h", _h, _i),),
            "fc2": (Target("mlp.dense_4h_to_h", _i, _h),),
        },
    ),
    Family(
        "falcon_bloom",
        ("falcon", "bloom"),
        "transformer.h",
        {
            "qkv": (Target("self_attention.query_key_value", *_FUSED_QKV),),
            "o_proj": (Target("self_attention.dense", _h, _h),),
            "fc1": (Target("mlp.dense_h_to_4h", _h, _i),),
            "fc2": (Target("mlp.dense_4h_to_h", _i, _h),),
        },
    ),
    Family(
        "gpt2",
        ("gpt2", "gpt_bigcode"),
        "transformer.h",
        {
            "qkv": (Target("attn.c_attn", _h, lambda d: d.hidden + 2 * d.kv_heads * d.head_dim),),
            "o_proj": (Target("attn.c_proj", _h, _h),),
            "fc1": (Target("mlp.c_fc", _h, _i),),
            "fc2": (Target("mlp.c_proj", _i, _h),),
        },
        note="c_proj is ambiguous: attn.c_proj is o_proj, mlp.c_proj is fc2 (GPT-2 uses Conv1D, which PEFT supports).",
    ),
    Family(
        "mpt",
        ("mpt",),
        "transformer.blocks",
        {
            "qkv": (Target("attn.Wqkv", _h, lambda d: 3 * d.hidden),),
            "o_proj": (Target("attn.out_proj", _h, _h),),
            "fc1": (Target("ffn.up_proj", _h, _i),),
            "fc2": (Target("ffn.down_proj", _i, _h),),
        },
    ),
    Family(
        "mixtral",
        ("mixtral", "qwen3_moe", "olmoe"),
        "model.layers",
        {
            "qkv": _LLAMA_GROUPS["qkv"],
            "o_proj": _LLAMA_GROUPS["o_proj"],
            "fc1": (
                Target(
                    "mlp.experts.gate_up_proj", _h, lambda d: 2 * d.moe_intermediate, "parameter", lambda d: d.experts
                ),
            ),
            "fc2": (
                Target("mlp.experts.down_proj", lambda d: d.moe_intermediate, _h, "parameter", lambda d: d.experts),
            ),
        },
        note="Experts are fused 3-D parameters, adapted through PEFT's target_parameters; "
        "the router is never targeted.",
    ),
    Family(
        "qwen2_moe",
        ("qwen2_moe",),
        "model.layers",
        {
            "qkv": _LLAMA_GROUPS["qkv"],
            "o_proj": _LLAMA_GROUPS["o_proj"],
            "fc1": (
                Target(
                    "mlp.experts.gate_up_proj", _h, lambda d: 2 * d.moe_intermediate, "parameter", lambda d: d.experts
                ),
                Target("mlp.shared_expert.gate_proj", _h, lambda d: d.shared_intermediate),
                Target("mlp.shared_expert.up_proj", _h, lambda d: d.shared_intermediate),
            ),
            "fc2": (
                Target("mlp.experts.down_proj", lambda d: d.moe_intermediate, _h, "parameter", lambda d: d.experts),
                Target("mlp.shared_expert.down_proj", lambda d: d.shared_intermediate, _h),
            ),
        },
        note="Routed experts are 3-D parameters (target_parameters); the shared expert is ordinary Linear layers.",
        extra_linear=(Target("mlp.shared_expert_gate", _h, lambda d: 1),),
    ),
)

# Vision-language models: only the language model is adapted; vision tower and projector are left alone.
VISION_LANGUAGE_TYPES: dict[str, str] = {
    "llava": "model.language_model",
    "llava_next": "model.language_model",
    "qwen2_vl": "model.language_model",
    "qwen2_5_vl": "model.language_model",
    "gemma3": "model.language_model",
    "mistral3": "model.language_model",
}

_BY_TYPE: dict[str, Family] = {t: f for f in FAMILIES for t in f.model_types}


class UnsupportedModel(ValueError):
    """The catalog has no entry for this architecture; resolve against the real module tree instead."""


def supported_model_types() -> list[str]:
    return sorted(_BY_TYPE) + sorted(VISION_LANGUAGE_TYPES)


def family_for(model_type: str) -> Family:
    try:
        return _BY_TYPE[model_type]
    except KeyError:
        raise UnsupportedModel(
            f"model_type {model_type!r} is not in the module catalog (known: {', '.join(supported_model_types())}); "
            "use raw module names, or let the trainer resolve groups against the real model"
        ) from None


def text_model_config(config: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """(the language model's config, the module path prefix of its decoder layers' container)."""
    model_type = config.get("model_type", "")
    if model_type in VISION_LANGUAGE_TYPES:
        text = dict(config.get("text_config") or {})
        text.setdefault("model_type", _default_text_type(model_type))
        family = family_for(text["model_type"])
        return text, VISION_LANGUAGE_TYPES[model_type] + "." + family.layers_path.split(".")[-1]
    return config, family_for(model_type).layers_path


def _default_text_type(vlm_type: str) -> str:
    return {"qwen2_vl": "qwen2", "qwen2_5_vl": "qwen2", "gemma3": "gemma3_text", "mistral3": "mistral"}.get(
        vlm_type, "llama"
    )
