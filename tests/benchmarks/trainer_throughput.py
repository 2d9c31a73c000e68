"""Trainer throughput: our training loop vs the seed study's reference recipe on Hugging Face Trainer.

Both train the same model (built in code) on the same data with the same LoRA config; tokens are the
non-padding tokens actually consumed. Prints tokens/s for each and the ratio (ours / reference), the
median over alternating repeats, so machine noise hits both alike. On a GPU it also prints MFU using
LoRA's FLOPs ~= 4 x params x tokens (forward 2ND + activation gradients 2ND; frozen weights get no
weight-gradient pass), against the device's dense bf16 peak.

    python tests/benchmarks/trainer_throughput.py [--steps 30] [--repeats 3] [--size tiny|0.5b]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lora_ablation.api.spec import TrainingSpec
from lora_ablation_trainer.data import collate, encode, to_example
from lora_ablation_trainer.tiny import build_tiny_model
from lora_ablation_trainer.train import train_adapter
from support.trainer_data import choice_records, corpus

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
SIZES = {"tiny": dict(hidden=256, layers=4), "0.5b": dict(hidden=1536, layers=16)}


def lora_model(model_dir: Path, device: torch.device, dtype: torch.dtype):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    config = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["o_proj", "down_proj"], task_type="CAUSAL_LM"
    )
    torch.manual_seed(0)
    return get_peft_model(model, config)


def ours(model_dir, features, steps, device, dtype, pad_id, packing: bool) -> float:
    from lora_ablation_trainer.packing import pack

    model = lora_model(model_dir, device, dtype)
    batch, accumulation = (8, 1) if packing else (2, 4)
    data = pack(features, 256) if packing else features
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", choices=sorted(SIZES), default=None, help="default: tiny on CPU, 0.5b on GPU")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = args.size or ("0.5b" if device.type == "cuda" else "tiny")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model("llama", Path(tmp) / "model", corpus(), **SIZES[size])
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        examples = [to_example(r, "prompt-completion", "bench", tokenizer) for r in choice_records(2000, 5)]
        features = [encode(e, tokenizer, 256) for e in examples]
        base = AutoModelForCausalLM.from_pretrained(model_dir)
        params = sum(p.numel() for p in base.parameters())
        del base
        runs: dict[str, list[float]] = {
            "reference (HF Trainer, bs2 x ga4)": [],
            "ours (bs2 x ga4)": [],
            "ours (packed, bs8)": [],
        }
        for _ in range(args.repeats):
            runs["reference (HF Trainer, bs2 x ga4)"].append(
                reference(model_dir, features, args.steps, device, dtype, tokenizer.pad_token_id)
            )
            runs["ours (bs2 x ga4)"].append(
                ours(model_dir, features, args.steps, device, dtype, tokenizer.pad_token_id, False)
            )
            runs["ours (packed, bs8)"].append(
                ours(model_dir, features, args.steps, device, dtype, tokenizer.pad_token_id, True)
            )
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; model: llama {size} ({params / 1e6:.1f}M params), LoRA r16 on o_proj+down_proj; "
          f"{args.steps} optimizer steps x {args.repeats} repeats (median)")  # fmt: skip
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None) if device.type == "cuda" else None
    baseline = statistics.median(runs["reference (HF Trainer, bs2 x ga4)"])
    for label, values in runs.items():
        tps = statistics.median(values)
        line = f"  {label:36s} {tps:12.0f} tokens/s   ratio vs reference {tps / baseline:5.2f}"
        if peak:
            line += f"   MFU {4 * params * tps / (peak * 1e12) * 100:5.1f}%"
        print(line)


if __name__ == "__main__":
    main()
