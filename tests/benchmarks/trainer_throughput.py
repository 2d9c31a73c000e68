"""Trainer throughput and memory: our training loop vs the seed study's reference recipe on Hugging Face Trainer.

All runs train the same model (built in code) on the same data with the same LoRA config; tokens are the
non-padding tokens consumed. In one run it prints:

- tokens/s of the reference (HF Trainer, batch 2 x accumulation 4), ours at that recipe, and ours with
  padding-free packing (position ids restart per example, so packed examples never attend to each other);
  each repeat runs all three back to back, and the ratios are taken within a repeat (machine noise hits
  the three alike); median and spread (min-max) over the repeats;
- peak memory of one training step on an 8K-token document, with and without gradient checkpointing
  (each in a fresh process: peak RSS above the loaded model on CPU, peak allocated on a GPU);
- on a GPU only: a ~0.5B model in bf16 (tokens/s and MFU, using LoRA's FLOPs ~= 4 x params x tokens:
  forward 2ND + activation gradients 2ND, frozen weights get no weight-gradient pass, against the
  device's dense bf16 peak), and the coefficient of variation of TPOT p95 over 5 latency measurements.
  Without a GPU that section prints that it was skipped.

    python tests/benchmarks/trainer_throughput.py [--steps 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lora_ablation.api.spec import LatencySpec, TrainingSpec
from lora_ablation_demo.tiny import build_tiny_model
from lora_ablation_trainer.data import Example, collate, encode, to_example
from lora_ablation_trainer.packing import pack
from lora_ablation_trainer.train import train_adapter
from support.trainer_data import choice_records, corpus, long_records

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}
SIZES = {"tiny": dict(hidden=256, layers=4), "0.5b": dict(hidden=1536, layers=16)}
LONG = 8192


def lora_model(model_dir: Path, device: torch.device, dtype: torch.dtype, checkpointing: bool = False):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    config = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["o_proj", "down_proj"], task_type="CAUSAL_LM"
    )
    torch.manual_seed(0)
    return get_peft_model(model, config)


def ours(model_dir, features, steps, device, dtype, pad_id, packing: bool, pack_length: int = 256) -> float:
    model = lora_model(model_dir, device, dtype)
    batch, accumulation = (8, 1) if packing else (2, 4)
    data = pack(features, pack_length) if packing else features
    spec = TrainingSpec(learning_rate=1e-4, max_steps=steps, batch_size=batch, gradient_accumulation=accumulation,
                        warmup_ratio=0.0, packing=packing)  # fmt: skip
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    metrics = train_adapter(model, data, spec, optimizer, pad_id, device, checkpoints=None, log_every=10**9)
    return metrics.tokens_per_second


def reference(model_dir, features, steps, device, dtype, pad_id) -> float:
    """The seed study's recipe: HF Trainer, per-device batch 2, gradient accumulation 4, no packing."""
    model = lora_model(model_dir, device, dtype)
    consumed = {"tokens": 0}

    def collator(batch):
        out = collate(batch, pad_id)
        consumed["tokens"] += int(out["attention_mask"].sum())
        return out

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=2, gradient_accumulation_steps=4, max_steps=steps,
            learning_rate=1e-4, lr_scheduler_type="linear", report_to=[], save_strategy="no", logging_strategy="no",
            use_cpu=device.type == "cpu", bf16=dtype == torch.bfloat16, dataloader_num_workers=0,
            remove_unused_columns=False, disable_tqdm=True,
        )  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=features, data_collator=collator)
        started = time.perf_counter()
        trainer.train()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    return consumed["tokens"] / seconds


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def throughput(model_dir: Path, steps: int, repeats: int, device, dtype, size: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = [to_example(r, "prompt-completion", "bench", tokenizer) for r in choice_records(2000, 5)]
    features = [encode(e, tokenizer, 256) for e in examples]
    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())
    pad = tokenizer.pad_token_id
    runs: dict[str, list[float]] = {"reference": [], "ours": [], "packed": []}
    for _ in range(repeats):  # back to back within a repeat: the ratios below are taken per repeat
        runs["reference"].append(reference(model_dir, features, steps, device, dtype, pad))
        runs["ours"].append(ours(model_dir, features, steps, device, dtype, pad, False))
        runs["packed"].append(ours(model_dir, features, steps, device, dtype, pad, True))
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; model: llama {size} ({params / 1e6:.1f}M params), LoRA r16 on o_proj+down_proj; "
          f"{steps} optimizer steps x {repeats} repeats; median [min-max]")  # fmt: skip
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None) if device.type == "cuda" else None
    labels = {"reference": "reference (HF Trainer, bs2 x ga4)", "ours": "ours (bs2 x ga4)",
              "packed": "ours (padding-free packed, bs8)"}  # fmt: skip
    for key, values in runs.items():
        ratios = [v / r for v, r in zip(values, runs["reference"], strict=True)]
        line = f"  {labels[key]:34s} {spread(values):>22s} tokens/s   vs reference {spread(ratios, '{:.2f}')}"
        if peak:
            line += f"   MFU {4 * params * statistics.median(values) / (peak * 1e12) * 100:5.1f}%"
        print(line)
    gain = [p / o for p, o in zip(runs["packed"], runs["ours"], strict=True)]
    print(f"  gain of correct packing (packed / ours at the reference recipe): {spread(gain, '{:.2f}')}")


def probe_memory(model_dir: Path, checkpointing: bool) -> int:
    """Bytes one training step on an 8K-token document adds to the loaded model (run in a fresh process)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = lora_model(model_dir, device, dtype, checkpointing)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    record = long_records(1, 9, 2800)[0]
    batch = collate([encode(Example(record["prompt"], record["completion"]), tokenizer, LONG)], tokenizer.pad_token_id)
    batch = {k: v.to(device) for k, v in batch.items()}
    model.train()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS (VmHWM) to the current RSS
        before = _status_kib("VmRSS") * 1024
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        # the model's own loss, every token's logits: the same for both settings, so the difference is activations
        model(**batch, use_cache=False).loss.backward()
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated() - before)
    return _status_kib("VmHWM") * 1024 - before


def _status_kib(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


def memory(model_dir: Path, repeats: int) -> None:
    figures: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):
        for checkpointing in (False, True):
            command = [sys.executable, __file__, "--probe-memory", str(model_dir)]
            command += ["--checkpointing"] if checkpointing else []
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            figures[checkpointing].append(json.loads(done.stdout.strip().splitlines()[-1]) / 2**20)
    print(f"peak memory of one step on a {LONG}-token document above the loaded model, MiB, median [min-max]:")
    print(f"  without gradient checkpointing {spread(figures[False])}")
    saving = [a / b for a, b in zip(figures[False], figures[True], strict=True)]
    print(f"  with gradient checkpointing    {spread(figures[True])}   (saves {spread(saving, '{:.1f}')}x)")


def latency_noise(model_dir: Path, runs: int = 5) -> float:
    """Coefficient of variation of TPOT p95 over `runs` measurements of the latency protocol."""
    from lora_ablation_trainer.latency import measure

    device = torch.device("cuda")
    model = lora_model(model_dir, device, torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    spec = LatencySpec(prompt_tokens=512, output_tokens=128, warmup=3, repeats=20)
    p95 = [measure(model, tokenizer, spec, device, has_adapter=True).adapter.tpot_p95_ms for _ in range(runs)]
    return statistics.stdev(p95) / statistics.mean(p95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--probe-memory", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe_memory:
        print(probe_memory(Path(args.probe_memory), args.checkpointing))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tiny = build_tiny_model("llama", Path(tmp) / "tiny", corpus(), **SIZES["tiny"], positions=16384)
        throughput(tiny, args.steps, args.repeats, torch.device("cpu"), torch.float32, "tiny")
        memory(tiny, args.repeats)
        if not torch.cuda.is_available():
            print("GPU section skipped: no CUDA device (tokens/s, MFU and peak memory of a ~0.5B model in bf16, "
                  "TPOT p95 noise)")  # fmt: skip
            return
        big = build_tiny_model("llama", Path(tmp) / "0.5b", corpus(), **SIZES["0.5b"], positions=16384)
        throughput(big, args.steps, args.repeats, torch.device("cuda"), torch.bfloat16, "0.5b")
        memory(big, args.repeats)
        print(f"TPOT p95 coefficient of variation over 5 latency runs: {latency_noise(big) * 100:.2f}% (goal <= 3%)")


if __name__ == "__main__":
    main()
