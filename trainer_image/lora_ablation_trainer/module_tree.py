"""Resolve module groups against the real module tree, built from config.json on the meta device.

No weights are allocated, so a 70B model resolves in seconds. The inventory has the same shape as the
catalog's (lora_ablation.modules.inventory), and the same resolver maps module sets onto it, so what
this returns is exactly what PEFT will wrap.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, PretrainedConfig
from transformers.pytorch_utils import Conv1D

from lora_ablation.modules.catalog import (
    VISION_LANGUAGE_TYPES,
    UnsupportedModel,
    family_for,
    text_model_config,
)
from lora_ablation.modules.dims import read_dims
from lora_ablation.modules.inventory import ModelInventory, Weight, guess_family


def load_config(source: str | Path | Mapping[str, Any] | PretrainedConfig) -> PretrainedConfig:
    if isinstance(source, PretrainedConfig):
        return source
    if isinstance(source, Mapping):
        values = dict(source)
        return AutoConfig.for_model(values.pop("model_type"), **values)
    return AutoConfig.from_pretrained(str(source))


def build_meta_model(config: PretrainedConfig) -> torch.nn.Module:
    """The model's module tree with every tensor on the meta device (no memory, no weights)."""
    model_class = AutoModelForImageTextToText if config.model_type in VISION_LANGUAGE_TYPES else AutoModelForCausalLM
    with torch.device("meta"):
        return model_class.from_config(config)


def _layers_path(model: torch.nn.Module) -> str:
    """The ModuleList holding the most repeated blocks, preferring a language model's."""
    best, best_len = "", -1
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            score = (
                len(module)
                + (1000 if "language_model" in name else 0)
                - (1000 if "vision" in name or "visual" in name else 0)
            )
            if score > best_len:
                best, best_len = name, score
    return best


def weights_of(model: torch.nn.Module, parameter_paths: set[str] = frozenset()) -> list[Weight]:
    """Every Linear / Conv1D module and every 3-D expert parameter named in parameter_paths."""
    weights: list[Weight] = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            weights.append(Weight(name, module.in_features, module.out_features))
        elif isinstance(module, Conv1D):  # GPT-2 stores (in, out)
            weights.append(Weight(name, module.weight.shape[0], module.weight.shape[1]))
    if parameter_paths:
        for name, parameter in model.named_parameters():
            suffix = re.sub(r"^.*?\.\d+\.", "", name)
            if parameter.dim() == 3 and suffix in parameter_paths:
                experts, out_features, in_features = parameter.shape  # PEFT's ParamWrapper convention
                weights.append(Weight(name, in_features, out_features, "parameter", experts))
    return weights


def tree_inventory(source: str | Path | Mapping[str, Any] | PretrainedConfig) -> ModelInventory:
    config = load_config(source)
    model = build_meta_model(config)
    config_dict = config.to_dict()
    try:
        text_config, layers_path = text_model_config(config_dict)
        family = family_for(str(text_config.get("model_type", "")))
        dims = read_dims(text_config)
        notes = [family.note] if family.note else []
    except UnsupportedModel:
        family, dims, layers_path = None, None, _layers_path(model)
        notes = [f"model_type {config.model_type!r} is not in the catalog; groups matched by layout"]
    parameter_paths = {t.path for t in family.targets() if t.kind == "parameter"} if family else set()
    weights = weights_of(model, parameter_paths)
    if family is None:
        family = guess_family(weights, layers_path)
    layers = len(model.get_submodule(layers_path)) if layers_path else 0
    return ModelInventory(config.model_type, family, layers, layers_path, weights, "module tree", dims, notes)
