"""`lora-ablation run`: the whole ablation on one machine, no Kubernetes. Same planner, same trainer
(one subprocess per trial), same storage contract and summary as the operator; resumable and safe to
interrupt, because a trial counts as done only once its result.json exists."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from pydantic import ValidationError

from lora_ablation.api.base import SpecError
from lora_ablation.api.resource import LoraAblation
from lora_ablation.plan import Plan, PlannedTrial
from lora_ablation.plots import write_plots
from lora_ablation.report import render_markdown, render_text
from lora_ablation.results import SUMMARY_FILE, read_result
from lora_ablation.store import LocalStore, Store, open_store
from lora_ablation.summary import summarize
from lora_ablation.summary_models import Summary

EXIT_INTERRUPTED = 130


@dataclass
class Outcome:
    trial: PlannedTrial
    state: str  # cached | succeeded | failed | results-missing
    seconds: float = 0.0
    message: str = ""


@dataclass
class RunReport:
    summary: Summary
    outcomes: list[Outcome] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.state in {"failed", "results-missing"}]


def visible_gpus() -> list[str]:
    """GPU ids for CUDA_VISIBLE_DEVICES, found without importing torch."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [g for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi"):
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
        return [str(i) for i, line in enumerate(listed.splitlines()) if line.startswith("GPU ")]
    return []


class LocalRunner:
    def __init__(self, ablation: LoraAblation, plan: Plan, store: Store, parallel: int, logs: Path, out: TextIO):
        self.ablation, self.plan, self.store, self.logs, self.out = ablation, plan, store, logs, out
        self.gpus = visible_gpus()
        self.parallel = max(1, min(parallel, len(self.gpus)) if self.gpus else parallel)
        self.outcomes: list[Outcome] = []

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _env(self, slot: int) -> dict[str, str]:
        env = {**os.environ, "LORA_ABLATION_PROCESSES": "1"}  # one device per trial: no torchrun relaunch
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot]
        else:  # share the cores instead of oversubscribing them
            env["CUDA_VISIBLE_DEVICES"] = ""
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.parallel)))
        return env

    def _start(self, trial: PlannedTrial, slot: int) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        trial_file = self.logs / f"{trial.name}.trial.json"
        trial_file.write_text(trial.spec.model_dump_json(by_alias=True, exclude_none=True, indent=2))
        log = (self.logs / f"{trial.name}.log").open("w")
        command = [sys.executable, "-m", "lora_ablation_trainer", "--trial", str(trial_file)]
        cores = self._cores(slot)
        bind = (lambda: os.sched_setaffinity(0, cores)) if cores else None
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self._env(slot), preexec_fn=bind)

    def _cores(self, slot: int) -> set[int] | None:
        """CPU trials in parallel get disjoint cores, so the latency protocol's pinning never makes two trials
        share one (the trainer pins its threads inside the set it is given)."""
        if self.gpus or self.parallel < 2 or not hasattr(os, "sched_getaffinity"):
            return None
        cores = sorted(os.sched_getaffinity(0))
        share = len(cores) // self.parallel
        return set(cores[slot * share : (slot + 1) * share]) if share else None

    def _finish(self, trial: PlannedTrial, code: int, seconds: float) -> Outcome:
        read = read_result(self.store, trial.name)
        if code == 0 and read.result is not None:
            ev = read.result.eval
            return Outcome(trial, "succeeded", seconds, f"{ev.metric} {ev.score:.4f}")
        if code == 0:
            return Outcome(trial, "results-missing", seconds, read.problem or "exited 0 without a result.json")
        tail = (self.logs / f"{trial.name}.log").read_text(errors="replace").strip().splitlines()[-1:] or [""]
        return Outcome(trial, "failed", seconds, f"exit {code}: {tail[0][-200:]}")

    def _record(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        width = len(str(len(self.plan.trials)))
        state = {"succeeded": "done", "cached": "cached", "failed": "FAILED", "results-missing": "NO RESULT"}[
            outcome.state
        ]
        timing = f"{outcome.seconds:6.1f}s" if outcome.state != "cached" else "       "
        self._say(f"[{len(self.outcomes):>{width}}/{len(self.plan.trials)}] {state:9s} {outcome.trial.name:56s} "
                  f"{timing}  {outcome.message}")  # fmt: skip

    def run(self) -> None:
        pending: list[PlannedTrial] = []
        for trial in self.plan.trials:
            read = read_result(self.store, trial.name)
            if read.result is not None:
                self._record(
                    Outcome(trial, "cached", message=f"{read.result.eval.metric} {read.result.eval.score:.4f}")
                )
            else:
                pending.append(trial)
        device = f"GPUs {','.join(self.gpus)}" if self.gpus else "CPU"
        self._say(f"{self.ablation.metadata.name}: {len(pending)} of {len(self.plan.trials)} trials to run, "
                  f"{self.parallel} at a time on {device}; logs in {self.logs}")  # fmt: skip
        running: dict[int, tuple[PlannedTrial, subprocess.Popen, float]] = {}
        try:
            while pending or running:
                for slot in range(self.parallel):
                    if slot not in running and pending:
                        trial = pending.pop(0)
                        running[slot] = (trial, self._start(trial, slot), time.perf_counter())
                for slot, (trial, process, started) in list(running.items()):
                    code = process.poll()
                    if code is not None:
                        del running[slot]
                        self._record(self._finish(trial, code, time.perf_counter() - started))
                time.sleep(0.1)
        except KeyboardInterrupt:
            for _, process, _ in running.values():
                process.terminate()
            for _, process, _ in running.values():
                process.wait()
            done = sum(1 for o in self.outcomes if o.state in {"cached", "succeeded"})
            self._say(f"\ninterrupted: {done} of {len(self.plan.trials)} trials have results; "
                      "run the same command again to finish the rest")  # fmt: skip
            raise


def with_storage(ablation: LoraAblation, uri: str | None = None, endpoint: str | None = None) -> LoraAblation:
    """The ablation with `run --store URI [--endpoint URL]` in place of spec.storage.

    Applied once, before planning, so the trials' storage (where each trainer writes), the summary and the
    plots all derive from one place. Storage is not part of a trial's identity: names and cached results stay.
    A plain path (no scheme) means a local directory.
    """
    if uri is None and endpoint is None:
        return ablation
    if uri is not None and "://" not in uri:
        uri = "file://" + os.path.abspath(uri)
    flags = {"uri": ("--store", uri), "endpoint": ("--endpoint", endpoint)}
    wire = {**ablation.spec.storage.model_dump(), **{k: v for k, (_, v) in flags.items() if v is not None}}
    try:
        storage = type(ablation.spec.storage).model_validate(wire)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            flag, value = flags.get(str(item["loc"][0]), (str(item["loc"][0]), None))
            problems.append(f"{flag} {value}: {item['msg'].removeprefix('Value error, ')}")
        raise SpecError(problems) from None
    return ablation.model_copy(update={"spec": ablation.spec.model_copy(update={"storage": storage})})


def run_ablation(
    ablation: LoraAblation, plan: Plan, parallel: int, logs: Path, plots_dir: Path | None, out: TextIO
) -> RunReport:
    """Run the planned trials that have no result yet, then publish summary.json, summary.md and the plots.

    Everything goes to the ablation's folder of spec.storage (see with_storage for `--store`).
    """
    spec, meta = ablation.spec, ablation.metadata
    store = open_store(spec.storage.uri, spec.storage.endpoint, spec.storage.region).child(meta.namespace, meta.name)
    runner = LocalRunner(ablation, plan, store, parallel, logs, out)
    runner.run()
    results = [r for r in (read_result(store, t.name).result for t in plan.trials) if r is not None]
    summary = summarize(
        results,
        meta.name,
        meta.namespace,
        spec.selection.tolerance,
        spec.selection.latency_budget_ms,
        planned=[(t.spec.dataset.name, t.label) for t in plan.trials],
    )
    store.write_json(SUMMARY_FILE, summary.to_wire())
    store.write_text("summary.md", render_markdown(summary))
    plots = publish_plots(summary, store, plots_dir)
    print("\n" + render_text(summary), file=out)
    print(
        f"\nsummary: {store.uri}/{SUMMARY_FILE}, {store.uri}/summary.md; plots: {', '.join(map(str, plots))}", file=out
    )
    return RunReport(summary, runner.outcomes, plots)


def publish_plots(summary: Summary, store: Store, plots_dir: Path | None) -> list[Path]:
    """PNGs next to summary.json: written in place for a local store, uploaded for S3."""
    if plots_dir is None:
        plots_dir = (
            store.root
            if isinstance(store, LocalStore)
            else Path("ablation-report", summary.namespace, summary.ablation)
        )
    plots = write_plots(summary, plots_dir)
    for plot in plots:
        if not (isinstance(store, LocalStore) and plot.parent.resolve() == store.root):
            store.write_bytes(plot.name, plot.read_bytes())
    return plots
