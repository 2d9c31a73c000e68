"""Read the dimensions LoRA sizes depend on from a config.json, whatever each family calls them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Dims:
    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int = 0
    experts: int = 0
    moe_intermediate: int = 0
    shared_intermediate: int = 0


def _first(config: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        value = config.get(key)
        if value is not None:
            return value
    return default


class ConfigError(ValueError):
    """config.json lacks a dimension the estimate needs."""


def read_dims(config: Mapping[str, Any]) -> Dims:
    """Dimensions of a text decoder config (for a vision-language model pass its text_config)."""
    model_type = str(config.get("model_type", ""))
    attn_config = config.get("attn_config") or {}
    hidden = _first(config, "hidden_size", "n_embd", "d_model")
    layers = _first(config, "num_hidden_layers", "n_layer", "n_layers")
    heads = _first(config, "num_attention_heads", "n_head", "n_heads")
    missing = [
        n
        for n, v in (("hidden_size", hidden), ("num_hidden_layers", layers), ("num_attention_heads", heads))
        if v is None
    ]
    if missing:
        raise ConfigError(f"config.json of model_type {model_type!r} has no {', '.join(missing)}")
    hidden, layers, heads = int(hidden), int(layers), int(heads)
    head_dim = int(_first(config, "head_dim", default=0) or hidden // heads)

    kv_heads = _first(config, "num_key_value_heads", "n_head_kv", "num_kv_heads", default=None)
    if model_type == "falcon":
        if config.get("new_decoder_architecture"):
            kv_heads = _first(config, "num_kv_heads", default=heads)
        elif config.get("multi_query", True):
            kv_heads = 1
        else:
            kv_heads = heads
    elif model_type == "gpt_bigcode":
        kv_heads = 1 if config.get("multi_query", True) else heads
    elif model_type == "mpt":
        kv_heads = attn_config.get("kv_n_heads") or heads
    kv_heads = int(kv_heads or heads)

    if model_type == "mpt":
        intermediate = int(config.get("expansion_ratio", 4) * hidden)
    elif model_type in {"falcon"}:
        intermediate = int(_first(config, "ffn_hidden_size", default=4 * hidden))
    else:
        intermediate = int(_first(config, "intermediate_size", "n_inner", "ffn_dim", default=0) or 4 * hidden)

    experts = int(_first(config, "num_local_experts", "num_experts", "n_routed_experts", default=0) or 0)
    moe_intermediate = int(_first(config, "moe_intermediate_size", default=0) or (intermediate if experts else 0))
    shared = int(_first(config, "shared_expert_intermediate_size", default=0) or 0)
    vocab = int(_first(config, "vocab_size", "padded_vocab_size", default=0) or 0)
    return Dims(
        model_type=model_type,
        hidden=hidden,
        intermediate=intermediate,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        vocab=vocab,
        experts=experts,
        moe_intermediate=moe_intermediate,
        shared_intermediate=shared,
    )
