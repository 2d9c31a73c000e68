"""The quickstart's model and data, built in code: no download, a few seconds on a laptop CPU.

The base model is a 2-layer Llama whose only skill is copying letter strings ("copy abc = abc"), learnt
by full training here. The two fine-tuning tasks ask for something new: `reverse` ("flip abc = cba")
changes which positions attention reads from, `shift` ("next abc = bcd") changes what is written at
each position. Which modules need adapters for each is exactly the question the ablation answers.

    python -m lora_ablation_demo.quickstart [ROOT]   # writes ROOT/models/tiny-llama and ROOT/data/*
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from lora_ablation_demo.tiny import tiny_config, train_tokenizer
from lora_ablation_trainer.data import Example, collate, encode, iterate_micro_batches

ALPHABET = "abcdefghij"
TASKS = {"copy": "copy", "reverse": "flip", "shift": "next"}


def example(task: str, rng: random.Random) -> Example:
    word = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(3, 4)))
    if task == "copy":
        answer = word
    elif task == "reverse":
        answer = word[::-1]
    elif task == "shift":
        answer = "".join(ALPHABET[(ALPHABET.index(c) + 1) % len(ALPHABET)] for c in word)
    else:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return Example(f"{TASKS[task]} {word} =", f" {answer}")


def write_datasets(data_dir: Path, train_size: int = 2000, eval_size: int = 100) -> None:
    for task, seed in (("reverse", 11), ("shift", 12)):
        rng = random.Random(seed)
        for split, size in (("train", train_size), ("eval", eval_size)):
            path = data_dir / task / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            rows = [example(task, rng) for _ in range(size)]
            path.write_text("".join(json.dumps({"prompt": r.prompt, "completion": r.completion}) + "\n" for r in rows))


def build_base_model(out_dir: Path, steps: int = 800, seed: int = 0) -> Path:
    """Tokenizer (near character level) plus a tiny Llama fully trained on the copy task."""
    if (out_dir / "model.safetensors").is_file() and (out_dir / "tokenizer.json").is_file():
        return out_dir
    rng = random.Random(seed)
    texts = [f"{e.prompt}{e.completion}" for e in (example(t, rng) for t in ["copy"] * 500 + ["reverse", "shift"] * 50)]
    tokenizer = train_tokenizer(texts, vocab_size=270)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", len(tokenizer), hidden=64, layers=2))
    features = [encode(example("copy", rng), tokenizer, 32) for _ in range(4000)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batches = iterate_micro_batches(features, 32, seed)
    model.train()
    for _ in range(steps):
        _, indices = next(batches)
        loss = model(**collate([features[i] for i in indices], tokenizer.pad_token_id)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0] if args else "examples")
    write_datasets(root / "data")
    model = build_base_model(root / "models" / "tiny-llama")
    print(f"quickstart model in {model}, datasets in {root / 'data'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
