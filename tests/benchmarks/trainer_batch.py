"""Several trials per pod (execution.trialsPerPod), trainer side: N tiny trials run as N trainer processes
(one pod each: interpreter start, imports, model load, then the trial) vs one process running them as a
batch (one start, one load, then the trials one after another on the same base).

In one run, `repeats` times back to back (the ratio is taken within a repeat, so machine noise hits both
alike), it prints median [min-max] of:

- wall time per trial, each way, and batch / separate;
- the share of a one-trial process that is not the trial itself (start, imports, fetch and model load):
  1 - (a batch trial's own compute_seconds, trials 2..N, where the base is already loaded) / (the one-trial
  process's wall time). The batch's saving per trial should come close to it.

    python tests/benchmarks/trainer_batch.py [--trials 4] [--steps 10] [--repeats 3]

`measure()` is importable (the #15 benchmark runs it beside the two-stage comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lora_ablation.api.trial import TrialBatch, TrialResult
from lora_ablation_demo.tiny import build_tiny_model
from support.trainer_data import choice_records, corpus, trial_spec, write_jsonl

MODULES = (["o_proj"], ["qkv"], ["fc2"], ["o_proj", "fc2"], ["qkv", "o_proj"], ["fc1", "fc2"])


def _specs(model: Path, train: Path, eval_: Path, out: Path, trials: int, steps: int) -> list:
    training = {"maxSteps": steps, "checkpointEverySteps": 1000}
    return [
        trial_spec(
            model,
            train,
            eval_,
            f"file://{out}/t{i}",
            name=f"t{i}",
            modules=MODULES[i % len(MODULES)],
            latency={"enabled": False},
            training=training,
        )
        for i in range(trials)
    ]


def _process(args: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lora_ablation_trainer", *args], capture_output=True, text=True,
                          env={**os.environ, "LORA_ABLATION_PROCESSES": "1"})  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"trainer failed ({done.returncode}): {done.stderr[-2000:]}")
    return time.perf_counter() - started


def _results(out: Path, trials: int) -> list[TrialResult]:
    return [TrialResult.model_validate_json((out / f"t{i}" / "result.json").read_text()) for i in range(trials)]


def measure(trials: int = 4, steps: int = 10, repeats: int = 3, hidden: int = 256, layers: int = 4) -> dict:
    """Per repeat: seconds per trial run separately and batched, and the non-trial share of a one-trial process."""
    runs: dict[str, list[float]] = {"separate": [], "batch": [], "ratio": [], "overhead_share": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_model("llama", root / "model", corpus(), hidden=hidden, layers=layers)
        train = write_jsonl(root / "train.jsonl", choice_records(256, 1))
        eval_ = write_jsonl(root / "eval.jsonl", choice_records(24, 2))
        for repeat in range(repeats):
            out = root / f"separate-{repeat}"
            walls = []
            for i, spec in enumerate(_specs(model, train, eval_, out, trials, steps)):
                path = root / f"trial-{repeat}-{i}.json"
                path.write_text(spec.model_dump_json(by_alias=True))
                walls.append(_process(["--trial", str(path)]))
            out = root / f"batch-{repeat}"
            path = root / f"batch-{repeat}.json"
            path.write_text(TrialBatch(trials=_specs(model, train, eval_, out, trials, steps)).model_dump_json(
                by_alias=True))  # fmt: skip
            batch_wall = _process(["--trials", str(path)])
            own = statistics.mean(r.compute_seconds for r in _results(out, trials)[1:])  # base already loaded
            separate, batch = sum(walls) / trials, batch_wall / trials
            runs["separate"].append(separate)
            runs["batch"].append(batch)
            runs["ratio"].append(batch / separate)
            runs["overhead_share"].append(1 - own / statistics.mean(walls))
    return runs


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON too")
    args = parser.parse_args()
    runs = measure(args.trials, args.steps, args.repeats)
    print(f"{args.trials} tiny trials (llama 256x4, {args.steps} steps, eval 24, no latency) on CPU, "
          f"{args.repeats} repeats; median [min-max]")  # fmt: skip
    print(f"  wall per trial, one process each : {spread(runs['separate'])} s")
    print(f"  wall per trial, one batch process: {spread(runs['batch'])} s")
    print(f"  batch / separate                 : {spread(runs['ratio'])}")
    print(f"  one-trial process not spent on the trial (start, imports, load): {spread(runs['overhead_share'])}")
    if args.json:
        print(json.dumps(runs))


if __name__ == "__main__":
    main()
