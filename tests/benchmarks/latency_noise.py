"""Latency protocol noise: ours (warmup, one pinned thread on CPU, alternating base/adapter with the order
flipped every repeat) vs the same protocol on every thread, and vs a naive one (no warmup, no pinning, all
base runs then all adapter runs, every thread).

All time the same model and adapter in the same process, protocol after protocol, for several rounds.
Printed per protocol: base TPOT p50 (ms), base TPOT coefficient of variation (%), and the half-width of the
95% interval of the per-repeat adapter overhead (points of %); each as the median over rounds and its spread
(min..max), and the ratio ours / naive of the medians (below 1: ours is faster or steadier).

    python tests/benchmarks/latency_noise.py [--rounds 3] [--repeats 30] [--hidden 256] [--layers 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lora_ablation.api.spec import LatencySpec
from lora_ablation_demo.tiny import build_tiny_model
from lora_ablation_trainer.latency import _one_run, cv_pct, fixed_prompt, measure, paired_overhead


def naive(model, tokenizer, spec: LatencySpec, device) -> tuple[float, float, float]:
    prompt = fixed_prompt(tokenizer, spec.prompt_tokens, spec.batch_size).to(device)
    with model.disable_adapter():
        base = [_one_run(model, prompt, spec.output_tokens, tokenizer.pad_token_id) for _ in range(spec.repeats)]
    adapter = [_one_run(model, prompt, spec.output_tokens, tokenizer.pad_token_id) for _ in range(spec.repeats)]
    interval = paired_overhead(base, adapter)
    return statistics.median(t for _, t in base), cv_pct([t for _, t in base]), interval.half_width


def ours(model, tokenizer, spec: LatencySpec, device, threads: int = 1) -> tuple[float, float, float]:
    metrics = measure(model, tokenizer, spec, device, has_adapter=True, merged=False, cpu_threads=threads)
    return metrics.base.tpot_p50_ms, metrics.base.tpot_cv_pct, metrics.tpot_overhead_ci_pct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        texts = [f"copy {'abcdefgh'[i % 8] * (i % 5 + 1)} = done" for i in range(200)]
        model_dir = build_tiny_model("llama", Path(tmp) / "m", texts, hidden=args.hidden, layers=args.layers)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir).to(device)
        model = get_peft_model(model, LoraConfig(r=16, target_modules=["o_proj", "down_proj"])).eval()
        spec = LatencySpec(prompt_tokens=64, output_tokens=16, warmup=3, repeats=args.repeats)
        threads = torch.get_num_threads()
        figures: dict[str, list[tuple[float, float, float]]] = {"naive": [], "all-threads": [], "ours": []}
        for _ in range(args.rounds):
            figures["naive"].append(naive(model, tokenizer, spec, device))
            figures["all-threads"].append(ours(model, tokenizer, spec, device, threads))
            figures["ours"].append(ours(model, tokenizer, spec, device))
    print(f"device: {device} ({threads} threads), {args.rounds} rounds x {args.repeats} repeats")
    names = ("base TPOT p50 ms", "base TPOT CV %", "overhead 95% half-width")
    medians = {p: [statistics.median(r[i] for r in rows) for i in range(3)] for p, rows in figures.items()}
    for index, name in enumerate(names):
        cells = []
        for protocol, rows in figures.items():
            values = [r[index] for r in rows]
            cells.append(f"{protocol} {statistics.median(values):7.2f} ({min(values):.2f}..{max(values):.2f})")
        ratio = medians["ours"][index] / medians["naive"][index] if medians["naive"][index] else float("nan")
        print(f"{name:26s} " + "   ".join(cells) + f"   ours/naive {ratio:.2f}")


if __name__ == "__main__":
    main()
