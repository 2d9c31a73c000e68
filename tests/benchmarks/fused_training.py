"""Fused training (execution.fusedTraining) against the same trials trained one after another, in one process on
one loaded base: K = 1, 2, 4, 8 adapters of one dataset with different module sets and ranks, float32, dropout 0.

For each K, after one unmeasured warm-up round, `repeats` times back to back (the ratio is taken within a
repeat, so machine noise hits both alike), it prints median [min-max] of the training time each way, tokens/s
per adapter, their ratio fused/sequential, the peak memory of the fused run (process RSS on CPU), and the max
abs difference between each fused adapter and its lone twin.

Tokens/s per adapter is an adapter's tokens over the time all K took, each way.

    K=4: fused/sequential 1.42x [1.38-1.51]  tokens/s per adapter 9,100 vs 6,400  peak 412 MiB  max |diff| 0.0e+00

    python tests/benchmarks/fused_training.py [--ks 1,2,4,8] [--steps 8] [--repeats 3] [--hidden 64] [--layers 2]

--hidden 64 --layers 2 is the quickstart's tiny llama; --hidden 256 --layers 4 a larger one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch
from peft import get_peft_model_state_dict
from transformers import AutoTokenizer

from lora_ablation.storage.open import open_store
from lora_ablation_demo.tiny import build_tiny_model
from lora_ablation_trainer.adapters import attach_adapter, make_optimizer, resolve_targets
from lora_ablation_trainer.base import Base
from lora_ablation_trainer.data import encode, load_examples
from lora_ablation_trainer.fused.group import Member, adapter_weights, attach_group
from lora_ablation_trainer.fused.loop import train_fused
from lora_ablation_trainer.train import Distributed, train_adapter
from support.trainer_data import choice_records, corpus, trial_spec, write_jsonl

CONFIGS = [(["o_proj"], 8), (["qkv"], 8), (["fc2"], 16), (["o_proj", "fc2"], 8), (["qkv", "o_proj"], 4),
           (["fc1", "fc2"], 8), (["all"], 4), (["fc1"], 16)]  # fmt: skip


def specs(model: Path, train: Path, eval_: Path, out: Path, k: int, steps: int, batch: int = 4,
          accumulation: int = 2, seq: int = 128, dtype: str = "float32") -> list:  # fmt: skip
    """K trials of one dataset and recipe with different module sets and ranks (dropout 0: fused equals alone)."""
    training = {"maxSteps": steps, "batchSize": batch, "gradientAccumulation": accumulation, "maxSeqLength": seq,
                "loraDropout": 0.0, "checkpointEverySteps": 100000}  # fmt: skip
    made = [trial_spec(model, train, eval_, f"file://{out}/t{i}", name=f"t{i}", modules=CONFIGS[i][0],
                       rank=CONFIGS[i][1], alpha=2 * CONFIGS[i][1], training=training) for i in range(k)]  # fmt: skip
    return [s.model_copy(update={"base_model": s.base_model.model_copy(update={"dtype": dtype})}) for s in made]


def fused_round(model_dir: Path, base: Base, trials: list, features: list, pad_id: int,
                device: torch.device | None = None) -> dict:  # fmt: skip
    """The trials one after another on `base`, then fused: times, tokens/s, peak memory, max abs difference."""
    device = device or torch.device("cpu")
    started = time.perf_counter()
    alone, tokens = {}, 0
    for spec in trials:
        model = attach_adapter(spec, resolve_targets(spec, model_dir), base.model())
        metrics = train_adapter(model, features, spec.training, make_optimizer(model, spec), pad_id, device, None)
        alone[spec.name] = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
        tokens += metrics.tokens
        base.release(model)
    _sync(device)
    sequential = time.perf_counter() - started
    members = [Member(spec=s, store=open_store(s.storage.uri), targets=resolve_targets(s, model_dir),
                      features=features) for s in trials]  # fmt: skip
    started = time.perf_counter()
    model = attach_group(members, base.model())
    metrics = train_fused(model, members, pad_id, device)
    _sync(device)
    fused = time.perf_counter() - started
    difference = max(float((adapter_weights(model, m)[key] - alone[m.spec.name][key]).abs().max())
                     for m in members for key in alone[m.spec.name])  # fmt: skip
    base.release(model)
    peak = next(iter(metrics.values())).peak_memory_bytes or 0
    per_adapter = tokens / len(trials)
    return {
        "ratio": sequential / fused,
        "fused_tps": per_adapter / fused * len(trials),
        "sequential_tps": per_adapter / sequential * len(trials),
        "peak": peak,
        "difference": difference,
        "fused_seconds": fused,
        "tokens": tokens,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _spread(values: list[float], fmt: str) -> str:
    return f"{format(statistics.median(values), fmt)} [{format(min(values), fmt)}-{format(max(values), fmt)}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", default="1,2,4,8")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = build_tiny_model("llama", root / "model", corpus(), hidden=args.hidden, layers=args.layers)
        train = write_jsonl(root / "train.jsonl", choice_records(256, 1))
        eval_ = write_jsonl(root / "eval.jsonl", choice_records(24, 2))
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        examples = load_examples(train, "prompt-completion", tokenizer, limit=256)
        features = [encode(e, tokenizer, 128) for e in examples]
        seed = specs(model_dir, train, eval_, root / "out", 1, args.steps)[0]
        base = Base(seed, root / "cache", Distributed(), shared=True)
        print(f"tiny llama hidden {args.hidden}, {args.layers} layers; {args.steps} steps of 2 x 4 records each; "
              f"{torch.get_num_threads()} threads")  # fmt: skip
        for k in (int(x) for x in args.ks.split(",")):
            trials = specs(model_dir, train, eval_, root / f"out{k}", k, args.steps)
            fused_round(model_dir, base, trials, features, tokenizer.pad_token_id)  # warm-up, not counted
            rounds = [
                fused_round(model_dir, base, trials, features, tokenizer.pad_token_id) for _ in range(args.repeats)
            ]
            print(f"K={k}: fused/sequential {_spread([r['ratio'] for r in rounds], '.2f')}x  "
                  f"tokens/s per adapter {statistics.median(r['fused_tps'] for r in rounds) / k:,.0f} vs "
                  f"{statistics.median(r['sequential_tps'] for r in rounds) / k:,.0f}  "
                  f"peak {max(r['peak'] for r in rounds) / 2**20:,.0f} MiB  "
                  f"max |diff| {max(r['difference'] for r in rounds):.1e}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
