"""A small learnable task, trial specs and tiny models for trainer tests (imported by tests and benchmarks)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from lora_ablation.api.trial import TrialSpec

LETTERS = "abcdefgh"


def choice_records(n: int, seed: int) -> list[dict]:
    """Multiple choice: which option repeats the cue letter? The answer is a letter A-D."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        cue = rng.choice(LETTERS)
        others = rng.sample([c for c in LETTERS if c != cue], 3)
        options = others[:]
        position = rng.randrange(4)
        options.insert(position, cue)
        prompt = f"cue {cue} options " + " ".join(f"{'ABCD'[i]}={o}" for i, o in enumerate(options)) + " answer"
        records.append({"prompt": prompt, "completion": "ABCD"[position]})
    return records


def chat_records(n: int, seed: int) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]}
        for r in choice_records(n, seed)
    ]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def corpus() -> list[str]:
    return [f"{r['prompt']} {r['completion']}" for r in choice_records(400, 99)] + [
        "user: assistant: cue options answer"
    ]


def trial_spec(model_dir: Path, train: Path, eval_: Path, storage: str, **overrides) -> TrialSpec:
    raw = {
        "ablation": "test",
        "name": overrides.pop("name", "test-trial"),
        "baseModel": {"uri": f"file://{model_dir}", "dtype": "float32"},
        "dataset": {
            "name": "choice",
            "train": f"file://{train}",
            "eval": f"file://{eval_}",
            "format": overrides.pop("format", "prompt-completion"),
            "metric": overrides.pop("metric", "accuracy"),
            "maxEvalSamples": 24,
        },
        "modules": overrides.pop("modules", ["o_proj", "fc2"]),
        "rank": overrides.pop("rank", 8),
        "alpha": overrides.pop("alpha", 16),
        "variant": overrides.pop("variant", "lora"),
        "training": {
            "learningRate": 3e-3,
            "maxSteps": 30,
            "batchSize": 8,
            "gradientAccumulation": 1,
            "maxSeqLength": 64,
            "checkpointEverySteps": 10,
            "warmupRatio": 0.0,
            **overrides.pop("training", {}),
        },
        "latency": {"promptTokens": 16, "outputTokens": 8, "warmup": 1, "repeats": 3, **overrides.pop("latency", {})},
        "storage": {"uri": storage, **overrides.pop("storage_options", {})},
        "layers": overrides.pop("layers", "all"),
    }
    if "stage_one" in overrides:
        raw["stageOne"] = overrides.pop("stage_one")
    if raw["variant"] == "none":
        raw["modules"], raw["rank"], raw["alpha"] = [], 0, 0
    assert not overrides, overrides
    return TrialSpec.model_validate(raw)


def long_records(n: int, seed: int, words: int) -> list[dict]:
    """Long documents: the cue sits at the very start, `words` filler options later comes the question, so
    the answer needs attention across the whole document (the seed study's GovReport-length inputs)."""
    rng = random.Random(seed)
    records = []
    for record in choice_records(n, seed):
        head, options = record["prompt"].split(" options ")
        filler = " ".join(f"{rng.choice('ABCD')}={rng.choice(LETTERS)}" for _ in range(words))
        records.append({"prompt": f"{head} {filler} options {options}", "completion": record["completion"]})
    return records


COLOURS = {"A": (220, 30, 30), "B": (30, 200, 40), "C": (30, 40, 220), "D": (230, 220, 20)}


def image_records(n: int, seed: int, folder: Path, relative_to: Path) -> list[dict]:
    """Image+text chat records: which colour is the picture? Answer A-D; the PNGs are written into `folder` and
    referenced relative to the dataset file's folder `relative_to` (as a dataset shipped with its images)."""
    from PIL import Image

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(n):
        answer = rng.choice("ABCD")
        shade = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in COLOURS[answer])
        path = folder / f"{seed}-{index}.png"
        Image.new("RGB", (40 + index % 7, 36), shade).save(path)
        question = "which colour? options A=red B=green C=blue D=yellow answer"
        content = [{"type": "image", "image": str(path.relative_to(relative_to))}, {"type": "text", "text": question}]
        records.append({"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]})
    return records


def run_ablation_cli(name: str, spec: dict, tmp_path: Path) -> list[dict]:
    """`lora-ablation run` on a LoraAblation of this spec (storage and logs under tmp_path), as a user runs it;
    the result.json of every trial. A failing run fails the test with the end of its output."""
    import subprocess
    import sys

    import yaml

    manifest = {"apiVersion": "lora.ablation.dev/v1alpha1", "kind": "LoraAblation", "metadata": {"name": name},
                "spec": {**spec, "storage": {"uri": f"file://{tmp_path / 'results'}"}}}  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    command = [sys.executable, "-m", "lora_ablation.cli", "run", str(path), "--logs", str(tmp_path / "logs")]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "results" / "default" / name).glob("*/result.json"))]
