"""Tiny but real models and tokenizers, built in code: tests, benchmarks and the CPU quickstart use
them where no hub download is possible. Saved with save_pretrained, so they load through the exact
from_pretrained path a real model takes."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedTokenizerFast

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
# A plain-text chat template, so the chat format works on tokenizers that ship none.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the given texts in milliseconds."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(
    family: str,
    vocab_size: int,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    positions: int = 1024,
    intermediate: int | None = None,
) -> PretrainedConfig:
    ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, vocab_size=vocab_size)
    if family in {"llama", "phi3", "qwen2", "mistral"}:
        return AutoConfig.for_model(
            family,
            hidden_size=hidden,
            intermediate_size=intermediate or hidden * 11 // 4,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 2),
            max_position_embeddings=positions,
            tie_word_embeddings=False,
            **ids,
        )
    if family == "gpt_neox":
        return AutoConfig.for_model(
            family,
            hidden_size=hidden,
            intermediate_size=hidden * 4,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=positions,
            **ids,
        )
    if family == "gpt2":
        return AutoConfig.for_model(family, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=positions, **ids)
    raise ValueError(f"no tiny config for {family!r}; expected llama, phi3, qwen2, mistral, gpt_neox or gpt2")


def build_tiny_model(
    family: str,
    out_dir: str | Path,
    texts: Iterable[str],
    vocab_size: int = 512,
    hidden: int = 64,
    layers: int = 2,
    seed: int = 0,
    positions: int = 1024,
    intermediate: int | None = None,
    heads: int = 4,
) -> Path:
    """Train a tokenizer on `texts`, initialise a tiny model of `family`, save both to out_dir. `intermediate`: the
    FFN width where the default (11/4 of hidden) will not do; `heads`: attention heads (half as many KV heads)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(texts, vocab_size)
    config = tiny_config(
        family, len(tokenizer), hidden=hidden, layers=layers, positions=positions, intermediate=intermediate,
        heads=heads,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def vlm_chat_template(image_token: str) -> str:
    """Chat content may be a string or a list of {type: text|image} parts; images render as `image_token`."""
    return (
        "{% for message in messages %}{{ message['role'] }}: {% if message['content'] is string %}"
        "{{ message['content'] }}{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}"
        + image_token
        + "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )


def build_tiny_vlm(
    out_dir: str | Path, texts: Iterable[str], family: str = "llava", image_size: int = 32, seed: int = 0
) -> Path:
    """A tiny vision-language model and its processor, saved like a hub checkpoint (AutoModelForImageTextToText
    and AutoProcessor load it offline): llava (CLIP tower, projector, llama) or gemma3 (SigLIP tower, pooled
    projector, gemma3 text, token type ids)."""
    from transformers import AutoModelForImageTextToText

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = train_tokenizer(texts)
    if family == "llava":
        config, processor = _tiny_llava(base, image_size)
    elif family == "gemma3":
        config, processor = _tiny_gemma3(base, image_size)
    else:
        raise ValueError(f"no tiny vision-language model for {family!r}; expected llava or gemma3")
    torch.manual_seed(seed)
    AutoModelForImageTextToText.from_config(config).save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _tiny_llava(tokenizer: PreTrainedTokenizerFast, image_size: int):
    from transformers import CLIPImageProcessor, LlavaProcessor

    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.chat_template = vlm_chat_template("<image>")
    vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, image_size=image_size, patch_size=16)  # fmt: skip
    config = AutoConfig.for_model("llava", text_config=tiny_config("llama", len(tokenizer)).to_dict(),
                                  vision_config=vision, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                                  vision_feature_layer=-1)  # fmt: skip
    images = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    template = tokenizer.chat_template
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=16,
                               vision_feature_select_strategy="full", chat_template=template)  # fmt: skip
    return config, processor


def _tiny_gemma3(base: PreTrainedTokenizerFast, image_size: int):
    from transformers import Gemma3ImageProcessor, Gemma3Processor

    named = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    base.add_special_tokens({"additional_special_tokens": list(named.values())})
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer, bos_token=BOS, eos_token=EOS,
                                        pad_token=PAD, extra_special_tokens=named)  # fmt: skip
    tokenizer.chat_template = vlm_chat_template(named["boi_token"])
    ids = {k: tokenizer.convert_tokens_to_ids(v) for k, v in named.items()}
    text = dict(model_type="gemma3_text", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=len(tokenizer),
                pad_token_id=0, bos_token_id=1, eos_token_id=2)  # fmt: skip
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, image_size=image_size, patch_size=image_size // 4)  # fmt: skip
    config = AutoConfig.for_model("gemma3", text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                  boi_token_index=ids["boi_token"], eoi_token_index=ids["eoi_token"],
                                  image_token_index=ids["image_token"])  # fmt: skip
    images = Gemma3ImageProcessor(size={"height": image_size, "width": image_size})
    processor = Gemma3Processor(image_processor=images, tokenizer=tokenizer, chat_template=tokenizer.chat_template,
                                image_seq_length=4)  # fmt: skip
    return config, processor
