"""`lora-ablation run`: the whole ablation on one machine, no Kubernetes. Same planner, same schedule (units,
two-stage elimination, budget), same trainer (one subprocess per unit), same storage contract and summary as the
operator; resumable and safe to interrupt, because a trial counts as done only once its result.json exists."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from pydantic import ValidationError

from lora_ablation.api.base import SpecError
from lora_ablation.api.resource import LoraAblation
from lora_ablation.api.stages import StageOneResult
from lora_ablation.api.trial import TrialResult
from lora_ablation.budget import affordable
from lora_ablation.budget import costs as budget_costs
from lora_ablation.budget import describe as describe_budget
from lora_ablation.contract import TRIAL_ENV
from lora_ablation.plan import Plan, PlannedTrial
from lora_ablation.plots import write_plots
from lora_ablation.report import render_markdown, render_text
from lora_ablation.results import SUMMARY_FILE, read_failure, read_result, read_stage_one
from lora_ablation.schedule import Elimination, Schedule, Unit, round_one_units, schedule
from lora_ablation.store import LocalStore, Store, open_store
from lora_ablation.summary import summarize
from lora_ablation.summary_models import Summary
from lora_ablation.summary_stages import with_stages

EXIT_INTERRUPTED = 130


@dataclass
class Outcome:
    trial: PlannedTrial
    state: str  # cached | succeeded | failed | results-missing | eliminated | skipped
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
    """Runs units (one trial, or several in one trainer process) as subprocesses, `parallel` at a time, with the
    operator's schedule: round one, the two-stage elimination, round two, and the GPU-hour budget."""

    def __init__(self, ablation: LoraAblation, plan: Plan, store: Store, parallel: int, logs: Path, out: TextIO):
        self.ablation, self.plan, self.store, self.logs, self.out = ablation, plan, store, logs, out
        self.spec = ablation.spec
        self.gpus = visible_gpus()
        self.parallel = max(1, min(parallel, len(self.gpus)) if self.gpus else parallel)
        self.outcomes: list[Outcome] = []
        self.first = round_one_units(ablation.metadata.name, plan, ablation.spec)
        self.results: dict[str, TrialResult] = {}
        self.stage_ones: dict[str, StageOneResult] = {}
        self.dropped: dict[str, str] = {}  # trial -> why its run ended without what it had to write
        self.schedule: Schedule | None = None
        self.skipped: dict[str, str] = {}

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

    def _start(self, unit: Unit, slot: int) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        env_name, payload = unit.payload(self.spec)
        spec_file = self.logs / f"{unit.name}.{'trial' if env_name == TRIAL_ENV else 'trials'}.json"
        spec_file.write_text(payload)
        log = (self.logs / f"{unit.name}.log").open("w")
        flag = "--trial" if env_name == TRIAL_ENV else "--trials"
        command = [sys.executable, "-m", "lora_ablation_trainer", flag, str(spec_file)]
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

    def _read(self, trials: Iterable[PlannedTrial], stage_one: bool) -> None:
        for trial in trials:
            read = read_result(self.store, trial.name)
            if read.result is not None:
                self.results[trial.name] = read.result
            # A finished trial's stage-one score still counts: the cutoff is over every configuration's.
            if stage_one and not trial.spec.is_baseline and (found := read_stage_one(self.store, trial.name)):
                self.stage_ones[trial.name] = found

    def _finish(self, unit: Unit, code: int, seconds: float) -> None:
        self._read(unit.trials, unit.stage_one)
        tail = (self.logs / f"{unit.name}.log").read_text(errors="replace").strip().splitlines()[-1:] or [""]
        said = {o.trial.name for o in self.outcomes}
        for trial in unit.trials:
            name = trial.name
            if name in said:  # cached before this run: the unit skipped it
                continue
            if name in self.results:
                ev = self.results[name].eval
                self._record(Outcome(trial, "succeeded", seconds, f"{ev.metric} {ev.score:.4f}"))
            elif unit.stage_one and name in self.stage_ones:
                found = self.stage_ones[name]
                self._say(f"    stage one {name}: {found.metric} {found.score:.4f} at step {found.step}/{found.steps}")
            elif (failure := read_failure(self.store, name)) is not None:
                self.dropped[name] = failure.message
                self._record(Outcome(trial, "failed", seconds, failure.message[-200:]))
            elif code == 0:
                wrote = "stage-one.json" if unit.stage_one and not trial.spec.is_baseline else "result.json"
                self.dropped[name] = f"exited 0 without a {wrote}"
                self._record(Outcome(trial, "results-missing", seconds, self.dropped[name]))
            else:
                self.dropped[name] = f"exit {code}: {tail[0][-200:]}"
                self._record(Outcome(trial, "failed", seconds, self.dropped[name]))

    def _record(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        width = len(str(len(self.plan.trials)))
        state = {"succeeded": "done", "cached": "cached", "failed": "FAILED", "results-missing": "NO RESULT",
                 "eliminated": "eliminated", "skipped": "skipped"}[outcome.state]  # fmt: skip
        timing = f"{outcome.seconds:6.1f}s" if outcome.state in {"succeeded", "failed", "results-missing"} else " " * 7
        self._say(f"[{len(self.outcomes):>{width}}/{len(self.plan.trials)}] {state:10s} {outcome.trial.name:56s} "
                  f"{timing}  {outcome.message}")  # fmt: skip

    def _needs(self, unit: Unit, trial: PlannedTrial) -> bool:
        name = trial.name
        assert self.schedule is not None
        if name in self.results or name in self.dropped or name in self.schedule.elimination.eliminated:
            return False
        return not (unit.stage_one and name in self.stage_ones)

    def _next(self, started: set[str], running: list[Unit]) -> Unit | None:
        """The next unit to start, or None; units the budget cannot afford have their trials skipped."""
        self.schedule = schedule(self.ablation.metadata.name, self.plan, self.spec, self.stage_ones,
                                 self.results, self.dropped, self.first)  # fmt: skip
        costs = budget_costs(self.results, self.stage_ones)
        done = {*self.results, *self.dropped}
        committed = sum(costs.estimate(u, done) for u in running)
        for unit in self.schedule.units:
            if unit.name in started or not any(self._needs(unit, t) for t in unit.trials):
                continue
            if affordable(self.spec.execution.max_gpu_hours, costs, committed, costs.estimate(unit, done)):
                return unit
            if running:
                return None  # a running unit may finish cheaper than expected: decide when it has
            why = describe_budget(self.spec.execution.max_gpu_hours or 0, costs, committed)
            for trial in unit.trials:
                if self._needs(unit, trial) and trial.name not in self.skipped:
                    self.skipped[trial.name] = why
                    self._record(Outcome(trial, "skipped", message=why))
            started.add(unit.name)
        return None

    def run(self) -> None:
        self._read(self.plan.trials, stage_one=self.spec.search.early_stopping is not None)
        for trial in self.plan.trials:
            if trial.name in self.results:
                ev = self.results[trial.name].eval
                self._record(Outcome(trial, "cached", message=f"{ev.metric} {ev.score:.4f}"))
        self.schedule = schedule(self.ablation.metadata.name, self.plan, self.spec, self.stage_ones, self.results,
                                 first=self.first)  # fmt: skip
        pending = len(self.plan.trials) - len(self.results) - len(self.schedule.elimination.eliminated)
        device = f"GPUs {','.join(self.gpus)}" if self.gpus else "CPU"
        self._say(f"{self.ablation.metadata.name}: {pending} of {len(self.plan.trials)} trials to run, "
                  f"{self.parallel} at a time on {device}; logs in {self.logs}")  # fmt: skip
        running: dict[int, tuple[Unit, subprocess.Popen, float]] = {}
        started: set[str] = set()
        try:
            while True:
                for slot in range(self.parallel):
                    if slot in running:
                        continue
                    unit = self._next(started, [u for u, _, _ in running.values()])
                    if unit is None:
                        break
                    started.add(unit.name)
                    running[slot] = (unit, self._start(unit, slot), time.perf_counter())
                if not running:
                    break
                for slot, (unit, process, begun) in list(running.items()):
                    code = process.poll()
                    if code is not None:
                        del running[slot]
                        self._finish(unit, code, time.perf_counter() - begun)
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
        assert self.schedule is not None
        for trial in self.plan.trials:
            if trial.name in self.schedule.elimination.eliminated:
                self._record(Outcome(trial, "eliminated", message=self.schedule.elimination.eliminated[trial.name]))


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
    if spec.execution.nodes > 1:  # the same results either way; only where the processes run differs
        print(f"note: execution.nodes {spec.execution.nodes} is for a cluster; here every trial runs on this "
              "machine", file=out)  # fmt: skip
    runner.run()
    results = [runner.results[t.name] for t in plan.trials if t.name in runner.results]
    elimination = runner.schedule.elimination if runner.schedule else Elimination()
    unrun = set(elimination.eliminated) | set(runner.skipped)
    summary = summarize(
        results,
        meta.name,
        meta.namespace,
        spec.selection.tolerance,
        spec.selection.latency_budget_ms,
        planned=[(t.spec.dataset.name, t.label) for t in plan.trials if t.name not in unrun],
    )
    costs = budget_costs(runner.results, runner.stage_ones)
    summary = with_stages(summary, plan, elimination, runner.stage_ones, costs, runner.skipped,
                          spec.execution.max_gpu_hours)  # fmt: skip
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
