"""The sections of the GPU check (tests/benchmarks/gpu_check.py has what each measures and how it is run): each
takes the Check (device, dtype, sizes, data) and returns its figures as JSON-ready data."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
from fused_training import fused_round
from fused_training import specs as fused_specs
from trainer_throughput import PEAK_BF16_TFLOPS, lora_model, ours, reference
from transformers import AutoModelForCausalLM, AutoTokenizer

from lora_ablation.api.spec import LatencySpec
from lora_ablation.api.stages import TrialFailure
from lora_ablation.api.trial import TrialBatch, TrialResult
from lora_ablation.modules.inventory import catalog_inventory, resolve_module_set
from lora_ablation.planning.memory import estimate_trial_memory
from lora_ablation_demo.tiny import tiny_config, train_tokenizer
from lora_ablation_trainer.base import Base
from lora_ablation_trainer.data import encode, load_examples
from lora_ablation_trainer.train import Distributed
from support.trainer_data import corpus, long_records, trial_spec, write_jsonl

# name: hidden, layers, attention heads (half as many KV heads); FFN 11/4 of hidden.
FULL = {"0.5b": (1536, 16, 12), "1.5b": (2048, 28, 16)}
DRY = {"tiny": (64, 2, 4)}


class Check:
    def __init__(self, dry: bool, root: Path):
        self.dry, self.root = dry, root
        self.device = torch.device("cpu" if dry or not torch.cuda.is_available() else "cuda")
        self.dtype = torch.float32 if self.device.type == "cpu" else torch.bfloat16
        self.dtype_name = "float32" if self.dtype == torch.float32 else "bfloat16"
        self.sizes = DRY if dry else FULL
        self.seq = 128 if dry else 1024
        self.words = 8 if dry else 120  # filler per long record: ~30 or ~400 tokens
        self.steps = 2 if dry else 12
        self.repeats = 1 if dry else 3
        self.ks = (1, 2) if dry else (1, 2, 4, 8)
        name = torch.cuda.get_device_name() if self.device.type == "cuda" else "cpu"
        self.device_name = name
        self.peak = (
            next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None) if self.device.type == "cuda" else None
        )
        self.train = write_jsonl(root / "train.jsonl", long_records(256 if dry else 2048, 1, self.words))
        self.eval = write_jsonl(root / "eval.jsonl", long_records(16, 2, self.words))
        self._models: dict[str, Path] = {}

    def model(self, size: str) -> Path:
        """A Llama-shaped model of `size` with random weights, saved in the check's dtype (built once)."""
        if size not in self._models:
            hidden, layers, heads = self.sizes[size]
            tokenizer = train_tokenizer(corpus(), 512)
            config = tiny_config("llama", len(tokenizer), hidden=hidden, layers=layers, positions=4 * self.seq,
                                 heads=heads)  # fmt: skip
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config, dtype=self.dtype)
            out = self.root / f"model-{size}"
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
            del model
            self._models[size] = out
        return self._models[size]

    def features(self, model_dir: Path) -> list[dict]:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        examples = load_examples(self.train, "prompt-completion", tokenizer, limit=10**6)
        return [encode(e, tokenizer, self.seq) for e in examples]

    def flops_per_token(self, model_dir: Path, seq: float) -> float:
        """NeMo Automodel's llama3_flops divided by the tokens of the batch (gbs x seq_len)."""
        c = json.loads((model_dir / "config.json").read_text())
        h, layers, ffn, vocab = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"], c["vocab_size"]
        groups = c["num_key_value_heads"] / c["num_attention_heads"]
        return layers * h * h * (12 + 12 * groups + 18 * ffn / h + 12 * seq / h * 0.5 + 6 * vocab / (layers * h))

    def mfu(self, tokens_per_second: float, flops_per_token: float) -> float | None:
        return None if self.peak is None else tokens_per_second * flops_per_token / (self.peak * 1e12) * 100


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def throughput(check: Check) -> list[dict]:
    rows = []
    for size in check.sizes:
        model_dir = check.model(size)
        features = check.features(model_dir)
        pad = AutoTokenizer.from_pretrained(model_dir).pad_token_id
        mean_length = statistics.mean(len(f["input_ids"]) for f in features)
        per_token = check.flops_per_token(model_dir, mean_length)
        runs: dict[str, list[float]] = {"reference": [], "ours": [], "packed": []}
        for _ in range(check.repeats if size == next(iter(check.sizes)) else 1):  # the larger model: one repeat
            runs["reference"].append(reference(model_dir, features, check.steps, check.device, check.dtype, pad))
            runs["ours"].append(ours(model_dir, features, check.steps, check.device, check.dtype, pad, False))
            runs["packed"].append(ours(model_dir, features, check.steps, check.device, check.dtype, pad, True,
                                       pack_length=check.seq))  # fmt: skip
        params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())
        for run, values in runs.items():
            ratios = [v / r for v, r in zip(values, runs["reference"], strict=True)]
            rows.append({"model": size, "params": params, "run": run, "tokens_per_second": _spread(values),
                         "vs_reference": _spread(ratios), "mfu_pct": check.mfu(statistics.median(values), per_token),
                         "mean_example_tokens": mean_length})  # fmt: skip
    return rows


def fused(check: Check) -> list[dict]:
    size = next(iter(check.sizes))
    model_dir = check.model(size)
    features = check.features(model_dir)
    pad = AutoTokenizer.from_pretrained(model_dir).pad_token_id
    per_token = check.flops_per_token(model_dir, statistics.mean(len(f["input_ids"]) for f in features))
    seed = fused_specs(model_dir, check.train, check.eval, check.root / "fused", 1, check.steps, batch=2,
                       accumulation=4, seq=check.seq, dtype=check.dtype_name)[0]  # fmt: skip
    base = Base(seed, check.root / "cache", Distributed(), shared=True)
    rows = []
    for k in check.ks:
        trials = fused_specs(model_dir, check.train, check.eval, check.root / f"fused{k}", k, check.steps, batch=2,
                             accumulation=4, seq=check.seq, dtype=check.dtype_name)  # fmt: skip
        fused_round(model_dir, base, trials, features, pad, check.device)  # warm-up, not counted
        rounds = [fused_round(model_dir, base, trials, features, pad, check.device) for _ in range(check.repeats)]
        fused_tps = statistics.median(r["tokens"] / r["fused_seconds"] for r in rounds)
        sequential_tps = statistics.median(r["sequential_tps"] for r in rounds)
        rows.append({"k": k, "model": size, "fused_over_sequential": _spread([r["ratio"] for r in rounds]),
                     "tokens_per_second_per_adapter": {"fused": fused_tps / k, "sequential": sequential_tps / k},
                     "mfu_pct": check.mfu(fused_tps, per_token), "peak_bytes": max(r["peak"] for r in rounds),
                     "max_abs_difference": max(r["difference"] for r in rounds)})  # fmt: skip
    return rows


def tpot(check: Check) -> dict:
    from lora_ablation_trainer.latency import measure

    model_dir = check.model(next(iter(check.sizes)))
    model = lora_model(model_dir, check.device, check.dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    spec = (LatencySpec(prompt_tokens=16, output_tokens=8, warmup=1, repeats=3) if check.dry
            else LatencySpec(prompt_tokens=512, output_tokens=128, warmup=3, repeats=20))  # fmt: skip
    runs = 3 if check.dry else 5
    p95 = [measure(model, tokenizer, spec, check.device, has_adapter=True).adapter.tpot_p95_ms for _ in range(runs)]
    return {"runs": runs, "tpot_p95_ms": p95, "cv_pct": statistics.stdev(p95) / statistics.mean(p95) * 100}


def divergence(check: Check) -> dict:
    """A fused batch in the check's dtype where one adapter's scale overflows at once: it alone fails."""
    from lora_ablation_trainer.run import run_batch

    model_dir = check.model(next(iter(check.sizes)))
    training = {"maxSteps": check.steps, "batchSize": 2, "gradientAccumulation": 4, "maxSeqLength": check.seq}
    common = {"training": training, "latency": {"enabled": False}}
    trials = [trial_spec(model_dir, check.train, check.eval, f"file://{check.root}/div/{name}", name=name,
                         modules=["o_proj"], rank=4, alpha=alpha, **common)
              for name, alpha in (("sane", 8), ("wild", 1e30))]  # fmt: skip
    trials = [t.model_copy(update={"base_model": t.base_model.model_copy(update={"dtype": check.dtype_name})})
              for t in trials]  # fmt: skip
    (work := check.root / "div-work").mkdir()
    outcomes = run_batch(TrialBatch(trials=trials, fused_group_size=2), work)
    sane, wild = outcomes
    return {"dtype": check.dtype_name, "sane": type(sane).__name__, "wild": type(wild).__name__,
            "wild_message": wild.message[:300] if isinstance(wild, TrialFailure) else None,
            "ok": isinstance(sane, TrialResult) and isinstance(wild, TrialFailure)}  # fmt: skip


def memory(check: Check) -> dict:
    """A real trial at the seed recipe on the smaller model: its peak against the plan's estimate for it."""
    from lora_ablation_trainer.run import run_trial

    model_dir = check.model(next(iter(check.sizes)))
    spec = trial_spec(model_dir, check.train, check.eval, f"file://{check.root}/memory", name="memory",
                      modules=["o_proj", "fc2"], rank=16, alpha=32,
                      training={"maxSteps": check.steps, "batchSize": 2, "gradientAccumulation": 4,
                                "maxSeqLength": check.seq},
                      latency={"promptTokens": 64, "outputTokens": 16, "warmup": 1, "repeats": 2})  # fmt: skip
    spec = spec.model_copy(update={"base_model": spec.base_model.model_copy(update={"dtype": check.dtype_name})})
    (work := check.root / "memory-work").mkdir()
    result = run_trial(spec, work)
    config = json.loads((model_dir / "config.json").read_text())
    inventory = catalog_inventory(config)
    estimate = estimate_trial_memory(inventory, config, spec, resolve_module_set(inventory, spec.modules))
    measured = result.train.peak_memory_bytes if result.train else None
    return {
        "measured_bytes": measured,
        "estimate_bytes": estimate.total,
        "breakdown_gib": estimate.breakdown(),
        "measured_over_estimate": measured / estimate.total if measured else None,
        "what": "peak allocated on the GPU" if check.device.type == "cuda" else "peak RSS of the process (dry)",
    }
