"""How much GPU memory one trial needs, from the model's dimensions and the spec alone (no torch), and
whether that fits the GPU the spec declares. `lora-ablation plan` prints it; the operator warns in
status before it creates a Job that cannot fit.

The estimate is per GPU (data parallel keeps a full copy on each) at the peak of a training step:

- weights: linear layers at 2 bytes (bfloat16/float16, or auto on a GPU), 4 (float32) or ~0.52 (nf4
  with double quantization); embeddings and the output head in dtype, in float32 under nf4 (PEFT's
  k-bit preparation upcasts every unquantized weight);
- adapter: LoRA parameters, their gradients and AdamW's two moments, all float32: 16 bytes each;
- activations: per token and layer about 9 x hidden + 2 x intermediate values in the compute dtype
  (what autograd saves around frozen weights: norms, rotary q/k, attention output and statistics, the
  MLP's activation inputs; sdpa stores no attention matrix) plus twice the input width of every
  adapted module (LoRA's dropped-out input and its mask). Calibrated against the bytes autograd's
  saved-tensor hooks see on a llama model: 6-12% over for 2 to 7 adapted modules per layer. With
  gradient checkpointing only each layer's input (hidden values) plus one layer recomputed at a time;
- logits: per token, vocabulary x (the logits, their float32 copy for the loss, its log-softmax and
  gradient), 14 bytes in 16-bit compute, 12 in float32; an upper bound (every token scored, as in the
  text format): the trainer computes logits only where a completion token is scored;
- overhead: 1 GiB (CUDA context, kernels) plus 10% for allocator fragmentation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lora_ablation.api.trial import TrialSpec
from lora_ablation.modules.catalog import UnsupportedModel
from lora_ablation.modules.inventory import (
    ModelInventory,
    ModuleResolutionError,
    Resolution,
    catalog_inventory,
    resolve_module_set,
)
from lora_ablation.modules.model_config import known_model_config
from lora_ablation.planning.trials import Plan

GIB = 1024**3
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit codes, 8-bit absmax per 64 weights, float32 per 256 absmax
EVAL_TOKENS = 16384  # the trainer's eval token budget per batch (lora_ablation_trainer.evaluate.TOKEN_BUDGET)
FIT_FRACTION = 0.95  # above this share of the GPU's memory a trial is reported as not fitting

# GPU memory by product name, as node labels spell it (nvidia.com/gpu.product, cloud accelerator labels):
# first match wins, so the more specific names come first.
GPU_MEMORY_GIB: list[tuple[str, float]] = [
    (r"GH200", 96), (r"B200", 180), (r"H200", 141), (r"H100.*NVL", 94), (r"H100|H800", 80),
    (r"A100.*80", 80), (r"A100", 40), (r"L40", 48), (r"L4\b", 24), (r"A10G|A10\b", 24), (r"A6000|RTX-?6000", 48),
    (r"4090|3090", 24), (r"V100.*32", 32), (r"V100", 16), (r"T4\b", 16), (r"MI300X", 192), (r"MI250", 128),
]  # fmt: skip
GPU_LABELS = ("nvidia.com/gpu.product", "cloud.google.com/gke-accelerator", "node.kubernetes.io/instance-type")
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"  # NVIDIA GPU feature discovery: MiB per GPU
_QUANTITY = re.compile(r"^\+?([0-9]*\.?[0-9]+)(?:([eE][+-]?[0-9]+)|([KMGTPE]i|[numkMGTPE])?)$")
_UNITS = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_UNITS.update({f"{u}i": 1024 ** (i + 1) for i, u in enumerate("KMGTPE")})


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    adapter: int
    activations: int
    logits: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.adapter + self.activations + self.logits + self.overhead

    def breakdown(self) -> str:
        parts = ("weights", "adapter", "activations", "logits", "overhead")
        return ", ".join(f"{p} {getattr(self, p) / GIB:.1f}" for p in parts)


def _dtype_bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2  # auto is bfloat16 on a GPU


def _weight_bytes(inventory: ModelInventory, config: Mapping[str, Any], dtype: str, quantization: str) -> float:
    dims = inventory.dims
    linear = sum(w.in_features * w.out_features * max(w.experts, 1) for w in inventory.weights)
    text = config.get("text_config") if isinstance(config.get("text_config"), Mapping) else config
    tied = bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False)))
    embeddings = dims.vocab * dims.hidden * (1 if tied else 2)
    if quantization == "nf4":
        return linear * NF4_BYTES + embeddings * 4
    return (linear + embeddings) * _dtype_bytes(dtype)


def _intermediate(inventory: ModelInventory, config: Mapping[str, Any]) -> int:
    """MLP width a token goes through: a mixture of experts runs top-k experts (and the shared one, if any)."""
    dims = inventory.dims
    if dims.experts:
        top_k = int(config.get("num_experts_per_tok") or config.get("moe_topk") or 2)
        return dims.moe_intermediate * top_k + dims.shared_intermediate
    return dims.intermediate


def training_activation_bytes(inventory: ModelInventory, config: Mapping[str, Any], trial: TrialSpec,
                              resolution: Resolution) -> int:  # fmt: skip
    """What autograd keeps for the backward pass of one micro-batch (the module docstring has the model)."""
    dims, compute = inventory.dims, _dtype_bytes(trial.base_model.dtype)
    adapted = sum(w.in_features for w in resolution.weights if w.kind == "module") / max(dims.layers, 1)
    per_layer = compute * (9 * dims.hidden + 2 * _intermediate(inventory, config) + 2 * adapted)
    tokens = trial.training.batch_size * trial.training.max_seq_length
    if trial.training.gradient_checkpointing:  # each layer's input, and one layer recomputed at a time
        return int(tokens * (compute * dims.hidden * dims.layers + per_layer))
    return int(tokens * per_layer * dims.layers)


def estimate_trial_memory(
    inventory: ModelInventory, config: Mapping[str, Any], trial: TrialSpec, resolution: Resolution | None
) -> MemoryEstimate | None:
    """Peak bytes per GPU for one trial (`resolution`: its module set on this model; None for the baseline), or
    None when the model's dimensions are unknown."""
    dims = inventory.dims
    if dims is None or not dims.vocab or (resolution is None and not trial.is_baseline):
        return None
    compute = _dtype_bytes(trial.base_model.dtype)
    weights = _weight_bytes(inventory, config, trial.base_model.dtype, trial.base_model.quantization)
    latency = trial.latency
    kv_cache = 2 * dims.layers * dims.kv_heads * dims.head_dim * compute * latency.batch_size * (
        latency.prompt_tokens + latency.output_tokens
    )  # fmt: skip
    # Eval and timing under inference mode: one layer's transient tensors at a time, logits only where scored.
    inference = EVAL_TOKENS * compute * (4 * dims.hidden + 3 * _intermediate(inventory, config)) + kv_cache
    if trial.is_baseline:  # scored and timed, never trained
        adapter, activations, logits = 0, inference, 0
    else:
        adapter = 16 * resolution.lora_params(trial.rank, trial.variant)
        activations = max(training_activation_bytes(inventory, config, trial, resolution), inference)
        logits = trial.training.batch_size * trial.training.max_seq_length * dims.vocab * (12 if compute == 4 else 14)
    body = weights + adapter + activations + logits
    return MemoryEstimate(int(weights), int(adapter), int(activations), int(logits), int(GIB + 0.10 * body))


def parse_quantity(value: str) -> int:
    """A Kubernetes quantity ('24Gi', '80G', '81920Mi', '8e10') in bytes."""
    match = _QUANTITY.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a Kubernetes quantity such as 24Gi or 80G")
    number, exponent, suffix = match.groups()
    return int(float(number + (exponent or "")) * (_UNITS[suffix] if suffix else 1))


def gpu_memory(gpu_memory_field: str | None, node_selector: Mapping[str, str] | None) -> tuple[int | None, str]:
    """Bytes of memory per GPU and where that figure came from, or (None, why it is unknown)."""
    if gpu_memory_field:
        try:
            found = parse_quantity(gpu_memory_field)
        except ValueError:
            found = 0
        if found < 2**20:  # the CRD admits any quantity; a GPU has at least a MiB
            return None, f"execution.resources.gpuMemory {gpu_memory_field} is not a GPU memory size such as 24Gi"
        return found, f"execution.resources.gpuMemory {gpu_memory_field}"
    selector = dict(node_selector or {})
    if selector.get(GPU_MEMORY_LABEL, "").isdigit():
        mib = int(selector[GPU_MEMORY_LABEL])
        return mib * 1024**2, f"nodeSelector {GPU_MEMORY_LABEL}={mib}"
    for label in GPU_LABELS:
        product = selector.get(label)
        for pattern, gib in GPU_MEMORY_GIB if product else ():
            if re.search(pattern, product, re.IGNORECASE):
                return int(gib * GIB), f"nodeSelector {label}={product} ({gib:g} GiB)"
    return None, "GPU memory unknown: set execution.resources.gpuMemory (e.g. 24Gi) to check that trials fit"


def _advice(trial: TrialSpec) -> str:
    steps = []
    if not trial.is_baseline:
        if not trial.training.gradient_checkpointing:
            steps.append("set training.gradientCheckpointing: true")
        if trial.training.batch_size > 1:
            steps.append("lower training.batchSize (raise gradientAccumulation to keep the recipe)")
        steps.append(f"lower training.maxSeqLength (now {trial.training.max_seq_length})")
    if trial.base_model.quantization == "none":
        steps.append("set baseModel.quantization: nf4")
    steps.append("or use a GPU with more memory")
    return ", ".join(steps)


def fit_warning(label: str, estimate: MemoryEstimate, gpu_bytes: int, source: str, trial: TrialSpec) -> str | None:
    """A warning naming the configuration, the estimate's parts and what to change, or None when it fits."""
    if estimate.total <= FIT_FRACTION * gpu_bytes:
        return None
    largest = max(("weights", "adapter", "activations", "logits"), key=lambda part: getattr(estimate, part))
    return (
        f"{label}: needs about {estimate.total / GIB:.1f} GiB per GPU ({estimate.breakdown()} GiB; {largest} the "
        f"largest) but the GPU has {gpu_bytes / GIB:.0f} GiB ({source}); it would run out of memory: {_advice(trial)}"
    )


@dataclass
class MemoryReport:
    estimates: dict[str, MemoryEstimate]  # trial name -> its estimate
    gpu_bytes: int | None
    source: str  # where gpu_bytes came from, or why it is unknown
    warnings: list[str]
    on_cpu: bool = False  # execution.resources.gpus is 0: there is no GPU memory to check against

    def lines(self) -> list[str]:
        """What `lora-ablation plan` prints under its table."""
        if not self.estimates:
            return []
        if self.on_cpu:
            return [f"Memory: estimated peak in host memory; {self.source}.", *(f"WARNING: {w}" for w in self.warnings)]
        gpu = f"{self.gpu_bytes / GIB:.0f} GiB per GPU ({self.source})" if self.gpu_bytes else self.source
        return [f"Memory: estimated peak per GPU; {gpu}.", *(f"WARNING: {w}" for w in self.warnings)]


def plan_memory(plan: Plan, inventory: ModelInventory, config: Mapping[str, Any], execution: Any) -> MemoryReport:
    """Estimates for every trial of a plan, and one warning per configuration that would not fit."""
    on_cpu = execution.resources.gpus == 0
    if on_cpu:
        gpu_bytes, source = None, "trials run on CPU (execution.resources.gpus is 0), so no GPU memory is checked"
    else:
        gpu_bytes, source = gpu_memory(execution.resources.gpu_memory, execution.node_selector)
    estimates: dict[str, MemoryEstimate] = {}
    warnings: dict[str, str] = {}
    resolutions: dict[tuple[str, ...], Resolution | None] = {}
    for trial in plan.trials:
        key = tuple(trial.spec.modules)
        if key and key not in resolutions:
            try:
                resolutions[key] = resolve_module_set(inventory, list(key))
            except ModuleResolutionError:
                resolutions[key] = None
        estimate = estimate_trial_memory(inventory, config, trial.spec, resolutions.get(key))
        if estimate is None:
            continue
        estimates[trial.name] = estimate
        if gpu_bytes and trial.label not in warnings and trial.spec.sharding != "fsdp":  # fsdp: planning.sharding
            warning = fit_warning(trial.label, estimate, gpu_bytes, source, trial.spec)
            if warning:
                warnings[trial.label] = warning
    return MemoryReport(estimates, gpu_bytes, source, list(warnings.values()), on_cpu)


def offline_memory_warnings(spec: Any, plan: Plan) -> list[str]:
    """The operator's check, with no I/O: models in the built-in config table are estimated, others are not
    (their config.json is read by the preflight Job, inside the cluster)."""
    config = known_model_config(spec.base_model.uri, spec.base_model.revision)
    if config is None:
        return []
    try:
        inventory = catalog_inventory(config)
    except (UnsupportedModel, ValueError):
        return []
    return plan_memory(plan, inventory, config, spec.execution).warnings
