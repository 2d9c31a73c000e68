"""Fewer GPU-hours per answer (#15): one grid on tiny models on CPU, run three ways in one run.

- exhaustive: every configuration trains to the end, one trainer process per trial (the baseline);
- several trials per pod: the same exhaustive grid, but each trainer process runs every trial of a dataset
  (execution.trialsPerPod), loading the base model once; compared with exhaustive;
- two-stage: the same trials per process, but every configuration first trains a fraction of its steps and
  the losing ones stop there (search.earlyStopping), the others resume from their checkpoint; compared with
  the trials-per-pod run, so the ratio is the elimination's alone (on tiny models a process start and model
  load cost as much as a short trial, which would otherwise hide it).

Each mode runs `lora-ablation run` (the local runner: the operator's own schedule, the real trainer) in a
fresh store, one trial at a time. Trial compute is the CPU-seconds of every process the run started (the
stand-in for GPU-hours: user + system time of the children, as the kernel accounts it); wall is the whole
run. Ratios are taken within a repeat (the modes run back to back), and median and spread (min-max) over the
repeats are printed, with whether two-stage reached the exhaustive run's recommendation.

    python tests/benchmarks/fewer_gpu_hours.py [--repeats 3] [--steps 400] [--fraction 0.2] [--keep 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def manifest(steps: int, name: str, **extra: dict) -> dict:
    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    doc["metadata"]["name"] = name
    spec = doc["spec"]
    spec["training"]["maxSteps"] = steps
    spec["training"]["checkpointEverySteps"] = max(1, steps // 4)
    spec["latency"]["repeats"] = 10
    spec["execution"]["parallelism"] = 1
    for section, values in extra.items():
        spec.setdefault(section, {}).update(copy.deepcopy(values))
    return doc


def run(doc: dict, work: Path) -> dict:
    """One `lora-ablation run` in a fresh store: wall seconds, children's CPU-seconds, the summary."""
    path = work / f"{doc['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(doc))
    store = work / f"store-{doc['metadata']['name']}"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "lora_ablation.cli", "run", str(path), "--store", str(store), "--logs",
         str(work / f"logs-{doc['metadata']['name']}")],
        cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    summary = json.loads((store / "default" / doc["metadata"]["name"] / "summary.json").read_text())
    return {"wall": wall, "cpu": cpu, "summary": summary}


def answer(summary: dict) -> tuple[str | None, str | None]:
    rec = summary.get("recommendation") or {}
    return rec.get("accuracyFirst"), rec.get("balanced")


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--fraction", type=float, default=0.2, help="search.earlyStopping.stageOneFraction")
    parser.add_argument("--keep", type=int, default=2, help="topK survivors per dataset")
    parser.add_argument("--eval-samples", type=int, default=50, help="stage-one eval records")
    parser.add_argument("--modes", default="exhaustive,trials-per-pod,two-stage",
                        help="which of the three to run (two-stage is compared with trials-per-pod)")  # fmt: skip
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "lora_ablation_demo.quickstart", "examples"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    early = {"earlyStopping": {"stageOneFraction": args.fraction, "rule": "topK", "keep": args.keep,
                               "evalSamples": args.eval_samples}}  # fmt: skip
    per_pod = {"trialsPerPod": 6}
    modes = {
        "exhaustive": manifest(args.steps, "exhaustive"),
        "trials-per-pod": manifest(args.steps, "perpod", execution=per_pod),
        "two-stage": manifest(args.steps, "twostage", search=early, execution=per_pod),
    }
    modes = {m: doc for m, doc in modes.items() if m in args.modes.split(",")}
    trials = 12
    rows: dict[str, list[dict]] = {m: [] for m in modes}
    same: list[bool] = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            for mode, doc in modes.items():
                rows[mode].append(run(doc, Path(tmp)))
                print(f"repeat {repeat + 1} {mode:15s} wall {rows[mode][-1]['wall']:7.1f} s  "
                      f"cpu {rows[mode][-1]['cpu']:7.1f} s  answer {answer(rows[mode][-1]['summary'])}", flush=True)
        if "two-stage" in rows:  # against the grid trained to the end (trials per pod change nothing it computes)
            full = rows["exhaustive"] if "exhaustive" in rows else rows["trials-per-pod"]
            same.append(answer(rows["two-stage"][-1]["summary"]) == answer(full[-1]["summary"]))
    print(f"\n{args.repeats} repeats, {trials} trials per mode, {args.steps} steps per trial, CPU only; "
          "median [min-max]")  # fmt: skip
    for mode in modes:
        cpu = [r["cpu"] for r in rows[mode]]
        wall = [r["wall"] / trials for r in rows[mode]]
        print(f"{mode:15s} trial compute {spread(cpu)} CPU-s   wall per trial {spread(wall)} s")
    pairs = (("trials-per-pod", "exhaustive"), ("two-stage", "trials-per-pod"), ("two-stage", "exhaustive"))
    for mode, against in pairs:
        if mode not in rows or against not in rows:
            continue
        cpu = [r["cpu"] / e["cpu"] for r, e in zip(rows[mode], rows[against], strict=True)]
        wall = [r["wall"] / e["wall"] for r, e in zip(rows[mode], rows[against], strict=True)]
        print(f"{mode} / {against}: compute {spread(cpu)}, wall {spread(wall)}")
    if "two-stage" in rows:
        eliminated = [len(r["summary"].get("eliminated") or []) for r in rows["two-stage"]]
        print(f"two-stage eliminated {eliminated} configurations; same recommendation as the full grid: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
