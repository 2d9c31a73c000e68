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
from lora_ablation.api.contract import FAILURE, TRIAL_ENV
from lora_ablation.api.resource import LoraAblation
from lora_ablation.api.stages import StageOneResult
from lora_ablation.api.tracking import trial_tracking
from lora_ablation.api.trial import TrialResult
from lora_ablation.api.trial_state import FAILED, TrialState
from lora_ablation.local.progress import ProgressLines
from lora_ablation.planning.plan import Plan, PlannedTrial
from lora_ablation.planning.trials import ablation_uri
from lora_ablation.run.budget import admit
from lora_ablation.run.budget import costs as budget_costs
from lora_ablation.run.lifecycle import Evidence, Run, judge
from lora_ablation.run.schedule import Elimination, Schedule, Unit, schedule
from lora_ablation.storage.open import open_store, plain_path_uri
from lora_ablation.storage.publish import summary_of, write_summary
from lora_ablation.storage.results import SUMMARY_FILE, read_failure, read_result, read_stage_one
from lora_ablation.storage.store import LocalStore, Store
from lora_ablation.summary.models import Summary
from lora_ablation.summary.plots import INSTALL_REPORT, PlotsUnavailable, write_plots
from lora_ablation.summary.report import render_text
from lora_ablation.tracking import ablation_run, log_summary

EXIT_INTERRUPTED = 130


@dataclass
class Outcome:
    trial: PlannedTrial
    state: TrialState  # the operator's vocabulary (lifecycle.judge decides it)
    seconds: float = 0.0
    message: str = ""
    cached: bool = False  # its result was there before this run


def run_of_exit(code: int | None) -> Run:
    """The local runner's workload adapter: a trainer subprocess and its exit code (None while it runs)."""
    return Run.running if code is None else Run.complete if code == 0 else Run.failed


SHOWN = {TrialState.succeeded: "done", TrialState.failed: "FAILED", TrialState.results_missing: "NO RESULT",
         TrialState.eliminated: "eliminated", TrialState.skipped: "skipped"}  # fmt: skip


@dataclass
class RunReport:
    summary: Summary
    outcomes: list[Outcome] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.state in FAILED]


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
        self.results: dict[str, TrialResult] = {}
        self.stage_ones: dict[str, StageOneResult] = {}
        self.dropped: dict[str, str] = {}  # trial -> why its run ended without what it had to write
        self.schedule: Schedule | None = None
        self.skipped: dict[str, str] = {}
        self.by_name = {t.name: t for t in plan.trials}
        self.units: dict[str, Unit] = {}  # every unit this run started, by name: kept as they are, like workloads
        self.running: set[str] = set()
        self.lines = ProgressLines(store, self.by_name, self._say)

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
        for trial in unit.trials:  # a new run is a new attempt: the trainer skips a trial with a recorded failure
            if self._needs(unit, trial):
                self.store.delete(f"{trial.name}/{FAILURE}")
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
        """A unit's files, each credited to the configuration the plan runs under its trial's name."""
        planned = self.by_name
        for trial in trials:
            read = read_result(self.store, trial.name, planned=planned)
            if read.result is not None:
                self.results[trial.name] = read.result
            # A finished trial's stage-one score still counts: the cutoff is over every configuration's.
            if stage_one and not trial.spec.is_baseline and (found := read_stage_one(self.store, trial.name,
                                                                                      planned=planned)):  # fmt: skip
                self.stage_ones[trial.name] = found

    def _finish(self, unit: Unit, code: int, seconds: float) -> None:
        """Judge the unit's trials as the operator judges a finished workload's (lifecycle.judge)."""
        self._read(unit.trials, unit.stage_one)
        tail = (self.logs / f"{unit.name}.log").read_text(errors="replace").strip().splitlines()[-1:] or [""]
        said = {o.trial.name for o in self.outcomes}
        survivors = self.schedule.elimination.survivors if self.schedule else set()
        for trial in unit.trials:
            name = trial.name
            if name in said:  # cached before this run: the unit skipped it
                continue
            evidence = Evidence(
                dataset=trial.spec.dataset.name, baseline=trial.spec.is_baseline, result=self.results.get(name),
                stage_one=self.stage_ones.get(name), failure=read_failure(self.store, name, planned=self.by_name),
                survivor=name in survivors or self.spec.search.early_stopping is None, in_stage_one=unit.stage_one,
                run=run_of_exit(code), run_message=f"exit {code}: {tail[0][-200:]}",
            )  # fmt: skip
            judged = judge(name, evidence, recorder="runner")
            if judged.state == TrialState.succeeded:
                ev = self.results[name].eval
                self._record(Outcome(trial, TrialState.succeeded, seconds, f"{ev.metric} {ev.score:.4f}"))
            elif judged.state in FAILED:
                self.dropped[name] = judged.why or "failed"
                self._record(Outcome(trial, judged.state, seconds, self.dropped[name][-200:]))
            elif name in self.stage_ones:
                found = self.stage_ones[name]
                self._say(f"    stage one {name}: {found.metric} {found.score:.4f} at step {found.step}/{found.steps}")

    def _record(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        width = len(str(len(self.plan.trials)))
        state = "cached" if outcome.cached else SHOWN.get(outcome.state, outcome.state.value)
        timed = outcome.state in {TrialState.succeeded, *FAILED} and not outcome.cached
        timing = f"{outcome.seconds:6.1f}s" if timed else " " * 7
        self._say(f"[{len(self.outcomes):>{width}}/{len(self.plan.trials)}] {state:10s} {outcome.trial.name:56s} "
                  f"{timing}  {outcome.message}")  # fmt: skip

    def _progress(self) -> None:
        """The running trials' progress lines, with every trial's state as the operator would name it."""
        running = [t.name for n in self.running for t in self.units[n].trials]
        eliminated = self.schedule.elimination.eliminated if self.schedule else {}
        states = {n: TrialState.succeeded.value if n in self.results else TrialState.skipped.value
                  if n in self.skipped else TrialState.failed.value if n in self.dropped
                  else TrialState.eliminated.value if n in eliminated else TrialState.pending.value
                  for n in self.by_name}  # fmt: skip
        states.update({n: TrialState.running.value for n in running if states[n] == TrialState.pending.value})
        self.lines.poll(running, states, self.parallel)

    def _schedule(self) -> Schedule:
        """The operator's schedule, with the units this run started kept as they are (their workloads)."""
        kept = [u for n, u in self.units.items() if n not in self.running] + [self.units[n] for n in self.running]
        return schedule(self.ablation.metadata.name, self.plan, self.spec, self.stage_ones, self.results,
                        self.dropped, kept=kept)  # fmt: skip

    def _admit(self, running: list[Unit], free: int) -> list[Unit]:
        """The units to start now (admit: parallelism and the budget, as in the operator); units the budget can
        never afford have their trials skipped."""
        self.schedule = self._schedule()
        done = {*self.results, *self.dropped, *self.schedule.elimination.eliminated}
        candidates = [u for u in self.schedule.units if u.name not in self.units
                      and any(self._needs(u, t) for t in u.trials)]  # fmt: skip
        early = self.spec.search.early_stopping
        admission = admit(candidates=candidates, running=running, capacity=free,
                          limit_hours=self.spec.execution.max_gpu_hours,
                          costs=budget_costs(self.results, self.stage_ones), done=done,
                          stage_one_fraction=early.stage_one_fraction if early else None)  # fmt: skip
        for name, why in admission.skipped.items():
            if name not in self.skipped:
                self.skipped[name] = why
                if name not in self.stage_ones:  # its dataset's stage one decides without it
                    self.dropped.setdefault(name, why)
                self._record(Outcome(self.by_name[name], TrialState.skipped, message=why))
        return admission.start

    def _needs(self, unit: Unit, trial: PlannedTrial) -> bool:
        name = trial.name
        assert self.schedule is not None
        if name in self.results or name in self.dropped or name in self.schedule.elimination.eliminated:
            return False
        return not (unit.stage_one and name in self.stage_ones)

    def run(self) -> None:
        self._read(self.plan.trials, stage_one=self.spec.search.early_stopping is not None)
        for trial in self.plan.trials:
            if trial.name in self.results:
                ev = self.results[trial.name].eval
                self._record(Outcome(trial, TrialState.succeeded, message=f"{ev.metric} {ev.score:.4f}", cached=True))
        self.schedule = self._schedule()
        pending = len(self.plan.trials) - len(self.results) - len(self.schedule.elimination.eliminated)
        device = f"GPUs {','.join(self.gpus)}" if self.gpus else "CPU"
        self._say(f"{self.ablation.metadata.name}: {pending} of {len(self.plan.trials)} trials to run, "
                  f"{self.parallel} at a time on {device}; logs in {self.logs}")  # fmt: skip
        running: dict[int, tuple[Unit, subprocess.Popen, float]] = {}
        try:
            while True:
                free = [slot for slot in range(self.parallel) if slot not in running]
                if free:
                    for slot, unit in zip(
                        free, self._admit([u for u, _, _ in running.values()], len(free)), strict=False
                    ):
                        self.units[unit.name] = unit
                        self.running.add(unit.name)
                        running[slot] = (unit, self._start(unit, slot), time.perf_counter())
                if not running:
                    break
                for slot, (unit, process, begun) in list(running.items()):
                    code = process.poll()
                    if code is not None:
                        del running[slot]
                        self.running.discard(unit.name)
                        self._finish(unit, code, time.perf_counter() - begun)
                self._progress()
                time.sleep(0.1)
        except KeyboardInterrupt:
            for _, process, _ in running.values():
                process.terminate()
            for _, process, _ in running.values():
                process.wait()
            done = sum(1 for o in self.outcomes if o.state == TrialState.succeeded)
            self._say(f"\ninterrupted: {done} of {len(self.plan.trials)} trials have results; "
                      "run the same command again to finish the rest")  # fmt: skip
            raise
        assert self.schedule is not None
        for trial in self.plan.trials:
            if trial.name in self.schedule.elimination.eliminated:
                why = self.schedule.elimination.eliminated[trial.name]
                self._record(Outcome(trial, TrialState.eliminated, message=why))


def with_storage(ablation: LoraAblation, uri: str | None = None, endpoint: str | None = None) -> LoraAblation:
    """The ablation with `run --store URI [--endpoint URL]` in place of spec.storage.

    Applied once, before planning, so the trials' storage (where each trainer writes), the summary and the
    plots all derive from one place. Storage is not part of a trial's identity: names and cached results stay.
    A plain path (no scheme) means a local directory.
    """
    if uri is None and endpoint is None:
        return ablation
    if uri is not None:
        uri = plain_path_uri(uri)
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
    store = open_store(spec.storage.uri, spec.storage.endpoint, spec.storage.region, local=True)
    store = store.child(meta.namespace, meta.name)
    runner = LocalRunner(ablation, plan, store, parallel, logs, out)
    tracking = trial_tracking(spec.tracking, ablation_uri(spec.storage.uri, meta.namespace, meta.name))
    if tracking is not None:  # the ablation's run first, so the trainers find it rather than race to create it
        parent = ablation_run(tracking, ablation=meta.name, namespace=meta.namespace, storage_uri=store.uri)
        said = f"MLflow run {parent} in experiment {tracking.experiment_name!r} at {tracking.tracking_uri}"
        print(said if parent else f"warning: MLflow at {tracking.tracking_uri} is unavailable; the trials run, "
              "tracked only where it answers (see the log)", file=out)  # fmt: skip
    if spec.execution.nodes > 1:  # the same results either way; only where the processes run differs
        print(f"note: execution.nodes {spec.execution.nodes} is for a cluster; here every trial runs on this "
              "machine", file=out)  # fmt: skip
    runner.run()
    elimination = runner.schedule.elimination if runner.schedule else Elimination()
    summary = summary_of(plan=plan, spec=spec, name=meta.name, namespace=meta.namespace, results=runner.results,
                         elimination=elimination, stage_ones=runner.stage_ones,
                         costs=budget_costs(runner.results, runner.stage_ones), skipped=runner.skipped)  # fmt: skip
    write_summary(store, summary)
    try:
        plots = publish_plots(summary, store, plots_dir)
        drawn = f"plots: {', '.join(map(str, plots))}"
    except PlotsUnavailable:  # the report extra is not installed: the results and the summary stand
        plots = []
        drawn = (f"plots not drawn: matplotlib is not installed; {INSTALL_REPORT}, then "
                 f"lora-ablation report {store.uri} --plots DIR")  # fmt: skip
    if tracking is not None:
        log_summary(tracking, summary, storage_uri=store.uri, plots=plots)
    print("\n" + render_text(summary), file=out)
    print(f"\nsummary: {store.uri}/{SUMMARY_FILE}, {store.uri}/summary.md; {drawn}", file=out)
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
