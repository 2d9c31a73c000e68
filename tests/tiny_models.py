"""Tiny configs of every supported family: real architectures, built in code, seconds to instantiate."""

from __future__ import annotations

SMALL = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
)

TINY_CONFIGS: dict[str, dict] = {
    "llama": dict(model_type="llama", **SMALL),
    "mistral": dict(model_type="mistral", **SMALL),
    "qwen2": dict(model_type="qwen2", **SMALL),
    "qwen3": dict(model_type="qwen3", head_dim=32, **SMALL),
    "gemma": dict(model_type="gemma", head_dim=16, **SMALL),
    "gemma2": dict(model_type="gemma2", head_dim=16, **SMALL),
    "gemma3_text": dict(model_type="gemma3_text", head_dim=16, **SMALL),
    "olmo": dict(model_type="olmo", pad_token_id=0, eos_token_id=1, **SMALL),
    "phi3": dict(model_type="phi3", pad_token_id=0, bos_token_id=1, eos_token_id=2, **SMALL),
    "phi": dict(model_type="phi", bos_token_id=1, eos_token_id=2, **SMALL),
    "gpt_neox": dict(
        model_type="gpt_neox",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=256,
    ),
    "falcon": dict(model_type="falcon", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=256),
    "falcon_new": dict(
        model_type="falcon",
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_kv_heads=2,
        new_decoder_architecture=True,
        vocab_size=256,
    ),
    "bloom": dict(model_type="bloom", hidden_size=64, n_layer=2, n_head=4, vocab_size=256),
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, vocab_size=256, bos_token_id=1, eos_token_id=2),
    "gpt_bigcode": dict(
        model_type="gpt_bigcode", n_embd=64, n_layer=2, n_head=4, vocab_size=256, bos_token_id=1, eos_token_id=2
    ),
    "mpt": dict(model_type="mpt", d_model=64, n_layers=2, n_heads=4, vocab_size=256),
    "mixtral": dict(model_type="mixtral", num_local_experts=4, **SMALL),
    "qwen2_moe": dict(
        model_type="qwen2_moe", num_experts=4, moe_intermediate_size=32, shared_expert_intermediate_size=64, **SMALL
    ),
    "llava": dict(
        model_type="llava",
        text_config=dict(model_type="llama", **SMALL),
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=16,
        ),
    ),
    "qwen2_vl": dict(
        model_type="qwen2_vl",
        text_config=dict(**SMALL),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2),
    ),
}

# What the design table says each family's groups resolve to (leaf paths inside a decoder layer).
EXPECTED_GROUPS: dict[str, dict[str, set[str]]] = {
    "llama": {
        "qkv": {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"},
        "o_proj": {"self_attn.o_proj"},
        "fc1": {"mlp.gate_proj", "mlp.up_proj"},
        "fc2": {"mlp.down_proj"},
    },
    "phi3": {
        "qkv": {"self_attn.qkv_proj"},
        "o_proj": {"self_attn.o_proj"},
        "fc1": {"mlp.gate_up_proj"},
        "fc2": {"mlp.down_proj"},
    },
    "phi": {
        "qkv": {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"},
        "o_proj": {"self_attn.dense"},
        "fc1": {"mlp.fc1"},
        "fc2": {"mlp.fc2"},
    },
    "gpt_neox": {
        "qkv": {"attention.query_key_value"},
        "o_proj": {"attention.dense"},
        "fc1": {"mlp.dense_h_to_4h"},
        "fc2": {"mlp.dense_4h_to_h"},
    },
    "falcon": {
        "qkv": {"self_attention.query_key_value"},
        "o_proj": {"self_attention.dense"},
        "fc1": {"mlp.dense_h_to_4h"},
        "fc2": {"mlp.dense_4h_to_h"},
    },
    "gpt2": {"qkv": {"attn.c_attn"}, "o_proj": {"attn.c_proj"}, "fc1": {"mlp.c_fc"}, "fc2": {"mlp.c_proj"}},
    "mpt": {"qkv": {"attn.Wqkv"}, "o_proj": {"attn.out_proj"}, "fc1": {"ffn.up_proj"}, "fc2": {"ffn.down_proj"}},
}
EXPECTED_GROUPS["bloom"] = EXPECTED_GROUPS["falcon"]
EXPECTED_GROUPS["gpt_bigcode"] = EXPECTED_GROUPS["gpt2"]
for _name in ("mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "llava", "qwen2_vl"):
    EXPECTED_GROUPS[_name] = EXPECTED_GROUPS["llama"]

# An architecture the catalog does not list (llama-style attention, GPT-2-style MLP names).
OUTSIDE_CATALOG = dict(model_type="starcoder2", **SMALL)
