"""`lora-ablation suggest`: a commented LoraAblation to start a study from, built from a model and a task.

Follows seed 002's quick-reference config builder (module sets by task, rank by task and dataset size,
alpha = r, RSLoRA from r = 16, learning rate 2e-4, micro-batch 2 x 4 accumulation) and seed 000's findings
(o_proj first: the most robust single target; o_proj + fc2 as the quality step). Pure apart from reading
the model's config.json, which `lora-ablation plan` does the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_ablation.api.base import SpecError
from lora_ablation.modules.catalog import UnsupportedModel
from lora_ablation.modules.inventory import ModelInventory, ModuleResolutionError, catalog_inventory, resolve_module_set
from lora_ablation.modules.model_config import ModelConfigUnavailable, load_model_config

TASKS = ("classification", "extraction", "generation", "reasoning")
METRIC = {"classification": "accuracy", "extraction": "json_kv_match", "generation": "rougeLsum",
          "reasoning": "exact_match"}  # fmt: skip
# Seed 002's builder: format/instruction tasks start at r=8 with attention; domain adaptation and code at r=16
# with attention + FFN. Seed 000: o_proj alone is the robust default, o_proj+fc2 the quality step, and
# 'all' the best on the hardest datasets (CoCoHD 82.75, MedReason 26.72).
BASE_RANK = {"classification": 8, "extraction": 8, "generation": 16, "reasoning": 16}
MODULE_SETS = {
    "classification": [["o_proj"], ["o_proj", "fc2"], ["attn"]],
    "extraction": [["o_proj"], ["o_proj", "fc2"], ["attn"]],
    "generation": [["o_proj"], ["o_proj", "fc2"], ["all"]],
    "reasoning": [["o_proj"], ["o_proj", "fc2"], ["o_proj", "fc1"], ["all"]],
}
WHY_SET = {
    "o_proj": "seed 000: the most robust single target, within ~2% of o_proj+fc2 at 22.6% lower TPOT p95",
    "o_proj+fc2": "seed 000: the quality step, best or near best on most datasets",
    "o_proj+fc1": "seed 000: a second FFN placement; fc1 alone was the only config to beat the base on FinCOT",
    "attn": "seed 002: attention-only is often enough for classification and format tasks",
    "all": "seed 000: every projection; best on the hardest datasets, at the highest serving cost",
}
BYTES_PER_PARAM = 2  # bf16 weights
RSLORA_WHY = "        # seed 002: RSLoRA 'almost always worth enabling when r >= 16'"


@dataclass
class Suggestion:
    model_uri: str
    task: str
    train_examples: int
    rank: int
    variant: str
    epochs: int
    batch_size: int
    gradient_accumulation: int
    module_sets: list[list[str]]
    params: dict[str, int] = field(default_factory=dict)  # module-set label -> trainable parameters
    notes: list[str] = field(default_factory=list)


def suggested_rank(task: str, examples: int) -> int:
    """Seed 002's builder: below 1,000 examples at most r=8; up to 10,000 the task's base rank; beyond, double it
    (at most 64)."""
    base = BASE_RANK[task]
    if examples < 1_000:
        return min(base, 8)
    if examples < 10_000:
        return base
    return min(base * 2, 64)


def model_uri(model: str) -> str:
    """A config.json (or its folder) -> file://folder; 'org/name' -> hf://org/name; URIs unchanged."""
    if "://" in model:
        return model
    path = Path(model)
    if path.name == "config.json" or path.is_dir():
        return "file://" + str((path.parent if path.name == "config.json" else path).resolve())
    return f"hf://{model}"


def _weights_bytes(inventory: ModelInventory) -> int:
    return sum(w.in_features * w.out_features * max(w.experts, 1) for w in inventory.weights) * BYTES_PER_PARAM


def build(model: str, task: str, examples: int, gpu_memory_gib: float | None = None,
          config: dict[str, Any] | None = None) -> Suggestion:  # fmt: skip
    if task not in TASKS:
        raise ValueError(f"--task {task}: expected one of {', '.join(TASKS)}")
    if examples < 1:
        raise ValueError(f"--train-examples {examples}: expected a positive number of training records")
    if gpu_memory_gib is not None and gpu_memory_gib <= 0:
        raise ValueError(f"--gpu-memory {gpu_memory_gib}: expected the accelerator's memory in GiB, e.g. 80")
    rank = suggested_rank(task, examples)
    variant = "rslora" if rank >= 16 else "lora"  # seed 002: 'almost always worth enabling when r >= 16'
    epochs = 3 if examples < 1_000 else 2 if examples < 10_000 else 1
    batch, accumulation = 2, 4  # seed 002's ablation harness: effective batch 8
    sets = [list(s) for s in MODULE_SETS[task]]
    suggestion = Suggestion(model_uri(model), task, examples, rank, variant, epochs, batch, accumulation, sets)
    inventory = None
    if config is not None:
        try:
            inventory = catalog_inventory(config)
        except UnsupportedModel as error:
            suggestion.notes.append(f"model not in the catalog ({error}); run `lora-ablation plan` to resolve it")
    if inventory is not None:
        for module_set in sets:
            try:
                label = "+".join(module_set)
                suggestion.params[label] = resolve_module_set(inventory, module_set).lora_params(rank, variant)
            except ModuleResolutionError as error:
                suggestion.notes.append(f"{'+'.join(module_set)}: {error}")
        if gpu_memory_gib is not None:
            weights_gib = _weights_bytes(inventory) / 2**30
            if weights_gib > 0.8 * gpu_memory_gib:
                suggestion.notes.append(
                    f"the bf16 weights alone need ~{weights_gib:.1f} GiB of the {gpu_memory_gib:g} GiB GPU: pick a "
                    "larger GPU (spec.execution.resources) or a smaller model"
                )
            elif weights_gib < 0.25 * gpu_memory_gib:
                suggestion.batch_size, suggestion.gradient_accumulation = 4, 2  # same effective batch, fewer passes
    return suggestion


def _sets_yaml(suggestion: Suggestion) -> str:
    lines = []
    for module_set in suggestion.module_sets:
        label = "+".join(module_set)
        params = suggestion.params.get(label)
        count = f"{params:,} trainable parameters; " if params else ""
        lines.append(f"      - [{', '.join(module_set)}]  # {count}{WHY_SET[label]}")
    return "\n".join(lines)


def render(suggestion: Suggestion, name: str = "my-study") -> str:
    """The LoraAblation YAML, every choice commented with its reason; placeholders marked CHANGE-ME or change-me."""
    s = suggestion
    notes = "".join(f"# NOTE: {n}\n" for n in s.notes)
    return f"""# Suggested by `lora-ablation suggest` for a {s.task} task with {s.train_examples:,} training examples.
# Replace the CHANGE-ME / change-me values, then: lora-ablation plan THIS.yaml (prints any guardrail warnings)
{notes}apiVersion: lora.ablation.dev/v1alpha1
kind: LoraAblation
metadata:
  name: {name}
spec:
  baseModel:
    uri: {s.model_uri}
  datasets:
    - name: task                                         # CHANGE-ME: a short name for your dataset
      train: s3://change-me-bucket/data/train.jsonl      # JSONL: {{"messages": [...]}} per line
      eval: s3://change-me-bucket/data/eval.jsonl
      format: chat
      metric: {METRIC[s.task]}                               # how a {s.task} answer is scored
  search:
    moduleSets:
{_sets_yaml(s)}
    # seed 002: under 1,000 examples r <= 8; 1,000-10,000: r 8-16; 10,000-100,000: r 16-32
    ranks: [{s.rank}]
    alphaOverRank: 1          # seed 002's builder: lora_alpha = r
    variants: [{s.variant}]{RSLORA_WHY if s.variant == "rslora" else ""}
    seeds: [1, 2, 3]          # three runs per configuration: intervals, and ties where the noise cannot separate
    includeBaseline: true
  training:
    learningRate: 0.0002      # seed 002's ablation harness; LoRA rates run ~10x full fine-tuning's
    epochs: {s.epochs}
    batchSize: {s.batch_size}
    gradientAccumulation: {s.gradient_accumulation}
    maxSeqLength: 2048
  latency:
    enabled: true             # TTFT/TPOT of base, unmerged and merged adapter, with their noise
  selection:
    tolerance: 0.02           # balanced pick: the cheapest configuration within 2 points of the best
  execution:
    parallelism: 4
    resources:
      gpus: 1
  storage:
    uri: s3://change-me-bucket/ablations
"""


def cmd_suggest(args: Any) -> int:
    """`lora-ablation suggest`: print the YAML (bad flags are a SpecError naming the flag: exit 2)."""
    try:  # the flags first: a bad one is reported before any model config is fetched
        build(args.model, args.task, args.train_examples, args.gpu_memory)
    except ValueError as error:
        raise SpecError([str(error)]) from None
    uri = model_uri(args.model)
    config = None
    try:
        loaded, _ = load_model_config(uri)
        config = loaded if isinstance(loaded, dict) and isinstance(loaded.get("model_type"), str) else None
    except (ModelConfigUnavailable, ValueError) as error:  # offline, gated, not JSON: suggest without counts
        note = f"model config not read ({str(error)[:200]}): parameter counts left out"
    else:
        note = None if config else "the model's config.json has no model_type: parameter counts left out"
    suggestion = build(args.model, args.task, args.train_examples, args.gpu_memory, config)
    if note:
        suggestion.notes.insert(0, note)
    print(render(suggestion, args.name), end="")
    return 0


def add_parser(command) -> None:
    """The `suggest` subcommand's flags, registered by the CLI."""
    suggest = command("suggest", "print a commented LoraAblation to start a study from, for a model and a task")
    suggest.add_argument("--model", required=True, help="hf://org/name, org/name, a config.json or its folder")
    suggest.add_argument("--task", required=True, choices=TASKS, help="what the adapter must learn")
    suggest.add_argument("--train-examples", type=int, required=True, help="training records you have")
    suggest.add_argument("--gpu-memory", type=float, help="accelerator memory in GiB (checks the weights fit)")
    suggest.add_argument("--name", default="my-study", help="metadata.name of the LoraAblation")
    suggest.set_defaults(func=cmd_suggest)
