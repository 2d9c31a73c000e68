"""config.json dimensions of popular hub models, so `plan` can estimate adapter sizes offline.

Only the keys the catalog reads are kept. A model not listed here is read from its config.json (local,
s3://, or the hub when reachable); the trainer always re-resolves against the real model.
"""

from __future__ import annotations

from typing import Any


def _llama(
    hidden: int, inter: int, layers: int, heads: int, kv: int, vocab: int, model_type: str = "llama", **extra: Any
) -> dict[str, Any]:
    return {
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "vocab_size": vocab,
        **extra,
    }


KNOWN_MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-3.1-8B": _llama(4096, 14336, 32, 32, 8, 128256),
    "meta-llama/Llama-3.1-8B-Instruct": _llama(4096, 14336, 32, 32, 8, 128256),
    "meta-llama/Llama-3.1-70B-Instruct": _llama(8192, 28672, 80, 64, 8, 128256),
    "meta-llama/Llama-3.2-1B-Instruct": _llama(2048, 8192, 16, 32, 8, 128256, head_dim=64),
    "meta-llama/Llama-3.2-3B-Instruct": _llama(3072, 8192, 28, 24, 8, 128256, head_dim=128),
    "mistralai/Mistral-7B-Instruct-v0.3": _llama(4096, 14336, 32, 32, 8, 32768, "mistral"),
    "Qwen/Qwen2.5-0.5B-Instruct": _llama(896, 4864, 24, 14, 2, 151936, "qwen2"),
    "Qwen/Qwen2.5-7B-Instruct": _llama(3584, 18944, 28, 28, 4, 152064, "qwen2"),
    "Qwen/Qwen3-8B": _llama(4096, 12288, 36, 32, 8, 151936, "qwen3", head_dim=128),
    "google/gemma-2-9b-it": _llama(3584, 14336, 42, 16, 8, 256000, "gemma2", head_dim=256),
    "microsoft/Phi-3-mini-4k-instruct": _llama(3072, 8192, 32, 32, 32, 32064, "phi3"),
    "microsoft/phi-2": _llama(2560, 10240, 32, 32, 32, 51200, "phi"),
    "EleutherAI/pythia-1b": {
        "model_type": "gpt_neox",
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 8,
        "vocab_size": 50304,
    },
    "openai-community/gpt2": {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257},
    "mistralai/Mixtral-8x7B-Instruct-v0.1": _llama(4096, 14336, 32, 32, 8, 32000, "mixtral", num_local_experts=8),
}
