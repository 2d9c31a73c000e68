"""Plan-time guardrails: rules from the seed documents a spec can be checked against before any GPU time is
spent. Never blocking (a study may break a rule on purpose); each warning names the field, says what to
consider, and cites where the rule comes from. Pure: data sizes, when known, are passed in."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from lora_ablation.api.spec import LoraAblationSpec
from lora_ablation.modules.groups import canonical_module_set

SEED_000 = "seed 000 (Nova 2.0 Lite target-module ablation)"
SEED_002 = "seed 002 (Selecting Target Modules and Rank)"
ISSUE_14 = "issue #14 (LoRA Without Regret, Thinking Machines 2025: LoRA's best rate is ~10x full fine-tuning's)"

# Seed 002's rule of thumb, "Rank and Dataset Size Interaction": examples below -> largest rank it suggests.
RANK_BY_EXAMPLES = ((1_000, 8), (10_000, 16), (100_000, 32))
RANK_LIMIT_ABOVE = 64  # "Over 100,000 examples: r=32 to r=64 may be warranted"
# Trainable parameters vs completion tokens: more than TOO_MANY x the tokens cannot be determined by the data
# (seed 002: effective rank ~ min(r, N/k)); fewer than 1/TOO_FEW of them leaves the adapter capacity-bound.
# The factors are this project's heuristic, not a published figure.
TOO_MANY, TOO_FEW = 10, 1000
# LoRA learning rates studies report: ~10x full fine-tuning's (~1e-5 to 5e-5 for 7B-class models); seed 002's
# ablation harness uses 2e-4. Far from it: below LR_LOW or above LR_HIGH.
LR_LOW, LR_HIGH = 1e-5, 2e-3
ATTENTION = {"qkv", "o_proj", "q_proj", "k_proj", "v_proj", "qkv_proj", "query_key_value", "c_attn",
             "attn.c_attn", "attn.c_proj", "out_proj", "Wqkv"}  # fmt: skip
CHARS_PER_TOKEN = 4  # a completion-token estimate without a tokenizer (English text, BPE vocabularies)
MAX_RECORDS = 1_000_000  # reading stops here: the estimate needs an order of magnitude, not a census


@dataclass(frozen=True)
class DataSize:
    examples: int
    completion_tokens: int | None = None  # estimated; None when unknown


@dataclass(frozen=True)
class Guardrail:
    rule: str  # short identifier: rank-vs-data, params-vs-tokens, lr-across-ranks, lr-range, attention-only, dora
    field: str  # the spec field to look at, e.g. spec.search.ranks
    brief: str  # one line, for a condition or an Event (whose messages are capped at 1024 characters)
    message: str
    source: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message} [{self.source}]"

    def short(self) -> str:
        cites = ", ".join(dict.fromkeys(re.findall(r"seed 00\d|issue #\d+", self.source)))
        return f"{self.field}: {self.brief} ({cites})"


def _rank_ceiling(examples: int) -> int:
    return next((rank for below, rank in RANK_BY_EXAMPLES if examples < below), RANK_LIMIT_ABOVE)


def _data_rules(spec: LoraAblationSpec, sizes: dict[str, DataSize], params: dict[str, int]) -> list[Guardrail]:
    out = []
    top_rank = max(spec.search.ranks)
    for index, dataset in enumerate(spec.datasets):
        size = sizes.get(dataset.name)
        if size is None or size.examples < 1:
            continue
        examples = size.examples  # already capped at maxTrainSamples by whoever measured it
        ceiling = _rank_ceiling(examples)
        if top_rank > ceiling:
            out.append(Guardrail(
                "rank-vs-data", "spec.search.ranks",
                f"r={top_rank} above r<={ceiling} for {examples:,} examples of {dataset.name}",
                f"r={top_rank} on {examples:,} training examples of {dataset.name} (spec.datasets[{index}]): the "
                f"rule of thumb is r <= {ceiling} at this size, since effective rank ~ min(r, N/k) with k ~ 100-1000 "
                "('r=64 on 500 examples will overfit severely'); drop the larger ranks or add data",
                SEED_002,
            ))  # fmt: skip
        tokens = size.completion_tokens
        if tokens and params:
            most, least = max(params.items(), key=lambda kv: kv[1]), min(params.items(), key=lambda kv: kv[1])
            if most[1] > TOO_MANY * tokens:
                out.append(Guardrail(
                    "params-vs-tokens", "spec.search",
                    f"{most[0]}: {most[1]:,} parameters > {TOO_MANY}x ~{tokens:,} completion tokens of {dataset.name}",
                    f"{most[0]} trains {most[1]:,} parameters on ~{tokens:,} completion tokens of {dataset.name}: "
                    f"more than {TOO_MANY}x the tokens, so most directions fit noise; prefer fewer modules or a "
                    "lower rank for this dataset",
                    f"{SEED_002}; factor {TOO_MANY} is this project's heuristic",
                ))  # fmt: skip
            if least[1] and tokens > TOO_FEW * least[1]:
                out.append(Guardrail(
                    "params-vs-tokens", "spec.search",
                    f"{least[0]}: ~{tokens:,} completion tokens of {dataset.name} > {TOO_FEW}x its {least[1]:,} "
                    "parameters (capacity-bound)",
                    f"{least[0]} trains {least[1]:,} parameters on ~{tokens:,} completion tokens of {dataset.name}: "
                    f"over {TOO_FEW}x more tokens than parameters, so it is likely capacity-bound and will trail "
                    "larger configurations for lack of room, not placement",
                    f"{ISSUE_14}; factor {TOO_FEW} is this project's heuristic",
                ))  # fmt: skip
    return out


def _rate_rules(spec: LoraAblationSpec) -> list[Guardrail]:
    out = []
    lr, ranks = spec.training.learning_rate, sorted(spec.search.ranks)
    scaled = [str(v) for v in spec.search.variants if v != "rslora"]
    if len(ranks) > 1 and scaled:
        if "rslora" in [str(v) for v in spec.search.variants]:  # already in the grid: say how to read it
            brief_fix = "compare ranks on the rslora trials"
            fix = (
                "rslora is already in spec.search.variants (alpha/sqrt(r): 'optimal learning rate independent of "
                "rank'): compare ranks on its trials, and read the other variants' rank comparison as a "
                "learning-rate one too, or run one study per rank with its own rate"
            )
        else:
            brief_fix = "add rslora"
            fix = (
                "add rslora to spec.search.variants (alpha/sqrt(r): 'optimal learning rate independent of rank') "
                "or run one study per rank with its own rate"
            )
        out.append(Guardrail(
            "lr-across-ranks", "spec.training.learningRate",
            f"one rate ({lr:g}) for ranks {ranks} with alpha = {spec.search.alpha_over_rank:g} x r; {brief_fix}",
            f"one learning rate ({lr:g}) serves ranks {ranks} for {', '.join(scaled)} while alpha = "
            f"{spec.search.alpha_over_rank:g} x r: with alpha/r scaling the stable rate falls as O(1/r) ('at r=64 "
            f"you need 8x lower learning rate than at r=8'), so the rank comparison is also a learning-rate one; "
            f"{fix}",
            SEED_002,
        ))  # fmt: skip
    if not LR_LOW <= lr <= LR_HIGH:
        side = "below" if lr < LR_LOW else "above"
        out.append(Guardrail(
            "lr-range", "spec.training.learningRate",
            f"{lr:g} far {side} the usual LoRA range ({LR_LOW:g}..{LR_HIGH:g})",
            f"{lr:g} is far {side} the LoRA range studies report (about 10x full fine-tuning: ~1e-4 to 5e-4 for "
            f"7B-class models; seed 002's ablation uses 2e-4); outside {LR_LOW:g}..{LR_HIGH:g} an adapter may not "
            "move at all or may diverge (tiny models, as in the quickstart, tolerate larger rates)",
            ISSUE_14,
        ))  # fmt: skip
    return out


def _grid_rules(spec: LoraAblationSpec) -> list[Guardrail]:
    out = []
    sets = [canonical_module_set(s) for s in spec.search.module_sets]
    if all(set(s) <= ATTENTION for s in sets):
        out.append(Guardrail(
            "attention-only", "spec.search.moduleSets",
            "attention only; qkv alone fell below the base model on 2 of 7 datasets; add [o_proj, fc2]",
            "every module set adapts attention only: seed 000 found qkv alone the least robust target (below the "
            "base model on 2 of 7 datasets: FinCOT 67.09 vs 72.12, CoCoHD 19.64 vs 45.14) and o_proj+fc2 the "
            "quality step, and seed 002 reports attention+FFN +2-4 MMLU points over attention-only on "
            "knowledge-intensive tasks; add [o_proj, fc2] (or an FFN group) to the grid",
            f"{SEED_000}; {SEED_002}",
        ))  # fmt: skip
    if "dora" in [str(v) for v in spec.search.variants]:
        out.append(Guardrail(
            "dora", "spec.search.variants",
            "DoRA trains slower and vLLM serves it only merged (vllm-project/vllm#10849)",
            "dora costs extra training compute (the weight-norm computation: 'typically under 5%' with QLoRA) and "
            "vLLM cannot serve DoRA adapters unmerged (feature request vllm-project/vllm#10849 is open): it must "
            "be merged to serve, one model per adapter",
            SEED_002,
        ))  # fmt: skip
    return out


def check(
    spec: LoraAblationSpec, sizes: dict[str, DataSize] | None = None, params: dict[str, int] | None = None
) -> list[Guardrail]:
    """Every rule the spec breaks. `sizes`: dataset name -> its training data size, when readable; `params`:
    configuration label -> trainable parameters, when the model was inspected."""
    return [*_grid_rules(spec), *_rate_rules(spec), *_data_rules(spec, sizes or {}, params or {})]


def _completion_chars(record: dict, fmt: str) -> int:
    if fmt == "prompt-completion":
        return len(str(record.get("completion", "")))
    if fmt == "text":
        return len(str(record.get("text", "")))
    messages = record.get("messages") or []
    return sum(len(str(m.get("content", ""))) for m in messages if isinstance(m, dict) and m.get("role") == "assistant")


def local_data_size(path: Path, fmt: str, limit: int | None = None) -> DataSize | None:
    """Examples and estimated completion tokens of a JSONL file on this machine; None when unreadable
    (guardrails then skip the data rules: they never block)."""
    examples, chars = 0, 0
    try:
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if not line.strip():
                    continue
                record = json.loads(line)
                examples += 1
                chars += _completion_chars(record, fmt) if isinstance(record, dict) else 0
                if examples >= min(limit or MAX_RECORDS, MAX_RECORDS):
                    break
    except (OSError, ValueError):
        return None
    return DataSize(examples, chars // CHARS_PER_TOKEN if chars else None)


def local_sizes(spec: LoraAblationSpec) -> dict[str, DataSize]:
    """Training data sizes of the datasets whose files are on this machine (file:// or a plain path)."""
    sizes = {}
    for dataset in spec.datasets:
        uri = dataset.train
        path = Path(uri.removeprefix("file://")) if uri.startswith(("file://", "/")) else None
        size = local_data_size(path, str(dataset.format), dataset.max_train_samples) if path else None
        if size is not None:
            sizes[dataset.name] = size
    return sizes


def planned_params(trials) -> dict[str, int]:
    """Configuration label -> estimated trainable parameters, from a plan whose model was inspected."""
    return {t.label: t.estimated_params for t in trials if t.estimated_params and not t.spec.is_baseline}


def for_plan(spec: LoraAblationSpec, plan) -> list[Guardrail]:
    """What `lora-ablation plan` checks: the spec, the local data it can read, the planned parameter counts."""
    return check(spec, local_sizes(spec), planned_params(plan.trials))


def render(guardrails: list[Guardrail], where: object = None) -> list[str]:
    """One 'warning: ...' line each; `where` (the manifest's file) starts every line when given."""
    prefix = f"{where}: " if where is not None else ""
    return [f"warning: {prefix}{g}" for g in guardrails]
