"""Load the base model and put the trial's adapter on it: the four variants and the module check."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training, set_peft_model_state_dict
from peft.optimizers import create_loraplus_optimizer
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer
from transformers.pytorch_utils import Conv1D

from lora_ablation.api.trial import TrialSpec
from lora_ablation.modules import layers
from lora_ablation.modules.inventory import (
    ModelInventory,
    ModuleResolutionError,
    Resolution,
    in_layers,
    resolve_module_set,
)
from lora_ablation_trainer.errors import PermanentTrialError
from lora_ablation_trainer.module_tree import tree_inventory
from lora_ablation_trainer.vision import Vision, is_vision_language

log = logging.getLogger(__name__)


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[requested]


@dataclass
class Targets(Resolution):
    """A resolution narrowed to the trial's layer subset (search.layers); None: every layer."""

    layers_to_transform: list[int] | None = None
    layers_pattern: str | None = None


def resolve_targets(spec: TrialSpec, model_dir: Path, inventory: ModelInventory | None = None) -> Targets:
    """Resolve the module set on the real module tree (meta device) before any weight is loaded, then keep
    the weights of the chosen layers."""
    inventory = inventory or tree_inventory(model_dir)
    try:
        resolution = resolve_module_set(inventory, spec.modules)
    except ModuleResolutionError as error:
        raise PermanentTrialError(f"modules {spec.modules}: {error}") from None
    targets = _in_layers(spec.layers, resolution, inventory)
    if spec.target_modules is not None and sorted(spec.target_modules) != sorted(targets.target_modules):
        log.warning(
            "planner's module names differ from the model's; using the model's (%d names)", len(targets.weights)
        )
    return targets


def _in_layers(selection: str, resolution: Resolution, inventory: ModelInventory) -> Targets:
    try:
        picked = layers.indices(selection, inventory.layers)
    except ValueError as error:
        raise PermanentTrialError(f"search.layers: {error}") from None
    if picked is None:
        return Targets(resolution.module_set, resolution.by_entry)
    narrowed = in_layers(resolution, inventory, picked)
    # PEFT's layers_pattern is the container's own name ("layers", "h"); the exact names already pick the
    # layers, layers_to_transform records the choice in adapter_config.json.
    return Targets(resolution.module_set, narrowed.by_entry, picked, inventory.layers_path.rsplit(".", 1)[-1])


def load_tokenizer(model_dir: Path):
    """Loaded apart from the weights, so the data can be checked before a weight is read."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantization_config(quantization: str, dtype: torch.dtype):
    """bitsandbytes' 4-bit NormalFloat with double quantization (the QLoRA recipe), computing in `dtype`."""
    if quantization == "none":
        return None
    try:
        import bitsandbytes  # noqa: F401  (transformers imports it lazily; fail here with a clear message)
    except ImportError:
        raise PermanentTrialError(
            f"baseModel.quantization {quantization}: bitsandbytes is not installed in the trainer; use the trainer "
            "image or install the trainer extra (pip install 'lora-ablation-operator[trainer]')"
        ) from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantization,
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )


def load_vision(model_dir: Path) -> Vision | None:
    """A vision-language model's processor (it renders chat records with images), or None for a text model."""
    if not is_vision_language(model_dir):
        return None
    from transformers import AutoProcessor

    try:
        return Vision(AutoProcessor.from_pretrained(model_dir))
    except (OSError, ValueError) as error:
        raise PermanentTrialError(f"the vision-language base model has no usable processor ({error})") from None


def load_model(model_dir: Path, dtype: torch.dtype, device: torch.device, quantization: str = "none"):
    """Transformers' default attention: sdpa where the architecture has it (memory linear in length, which long
    documents need, on CPU too), eager otherwise; one implementation for base and adapter timing alike."""
    quantized = quantization_config(quantization, dtype)
    auto = AutoModelForImageTextToText if is_vision_language(model_dir) else AutoModelForCausalLM
    if quantized is None:
        model = auto.from_pretrained(model_dir, dtype=dtype)
        model.to(device)
    else:  # quantized weights are placed while loading; they cannot be moved afterwards
        model = auto.from_pretrained(model_dir, dtype=dtype, quantization_config=quantized, device_map={"": device})
        # The QLoRA preparation (norms and embeddings to float32, every weight frozen) changes the model in place, so
        # it is done here, once, rather than when an adapter is attached: every trial of a batch that shares this
        # base, the first, later ones and the baseline, sees the same prepared weights.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        if device.type == "cpu":
            _no_cpu_repacking(model)
    model.config.use_cache = True
    return model


def _no_cpu_repacking(model: torch.nn.Module) -> None:
    """On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit layer's weights for inference on its first forward
    without gradients, and converts them back when a state dict is taken (a checkpoint, save_pretrained) by
    quantizing the block scales again: lossy, so a shared base would drift from trial to trial. Kept in the
    layout it was loaded in, every trial computes on the same weights (GPUs never repack)."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def lora_config(spec: TrialSpec, resolution: Resolution, model: torch.nn.Module) -> LoraConfig:
    picked = resolution.layers_to_transform if isinstance(resolution, Targets) else None
    conv1d = any(isinstance(model.get_submodule(name), Conv1D) for name in resolution.target_modules)
    return LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.training.lora_dropout,
        target_modules=resolution.target_modules,
        target_parameters=resolution.target_parameters or None,
        use_rslora=spec.variant == "rslora",
        use_dora=spec.variant == "dora",
        fan_in_fan_out=conv1d,  # GPT-2's Conv1D stores weights transposed
        layers_to_transform=picked,
        layers_pattern=resolution.layers_pattern if picked is not None else None,
        bias="none",
        task_type="CAUSAL_LM",
    )


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    # Non-reentrant: gradients reach the adapters though the frozen embeddings' outputs need no grad.
    if hasattr(model, "activation_checkpointing_enable"):  # the name from transformers 5 on
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def attach_adapter(spec: TrialSpec, resolution: Resolution, model: torch.nn.Module) -> PeftModel:
    # A quantized base arrives prepared for k-bit training (load_model).
    if spec.training.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    torch.manual_seed(spec.training.seed)  # the same initial A matrices on every retry
    peft_model = get_peft_model(model, lora_config(spec, resolution, model))
    wrapped = sorted(peft_model.targeted_module_names)
    if wrapped != sorted(resolution.target_modules):
        raise PermanentTrialError(f"PEFT wrapped {len(wrapped)} modules, expected {len(resolution.target_modules)}")
    return peft_model


def with_adapter_weights(spec: TrialSpec, resolution: Resolution, model: torch.nn.Module, weights: dict) -> PeftModel:
    """The trial's adapter on a freshly loaded base, holding trained weights (PEFT's own state-dict format)."""
    peft_model = attach_adapter(spec, resolution, model)
    loaded = set_peft_model_state_dict(peft_model, weights)
    if loaded.unexpected_keys:
        raise PermanentTrialError(f"the trained adapter does not fit the model: {loaded.unexpected_keys[:3]}")
    return peft_model


def make_optimizer(model: PeftModel, spec: TrialSpec) -> torch.optim.Optimizer:
    lr = spec.training.learning_rate
    if spec.variant == "loraplus":
        return create_loraplus_optimizer(
            model, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=spec.training.loraplus_lr_ratio, weight_decay=0.0
        )
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
