"""GPU-hour accounting and the budget (execution.maxGpuHours), shared by the operator and the local runner.

A trial's cost is its compute_seconds: wall-clock seconds x GPUs, or x 1 for a CPU-only run (so the budget
means something on a laptop too). Runs are of three kinds: a baseline, a stage one, a whole trained trial (both
stages when two-stage; a survivor's round two is a whole trial less its own stage one).

What a run still to start will cost is estimated conservatively from the finished ones of its kind, so that
what the budget admits stays within it (see `admit`):
- one more run of a kind: max(largest seen, SPREAD x smallest seen). This bounds the cost if every run of a
  kind costs between some c and SPREAD x c (trials differ by modules, rank, variant, dataset), and never falls
  below the most expensive run seen when they spread further;
- a whole trial before any finished (two-stage): the stage-one bound / min(fraction, 1/2). Stage one trains
  `fraction` of the steps and pays the fixed costs (loading, evaluating) the resumed run pays again, so it costs
  at least min(fraction, 1/2) of the whole trial;
- round two (resuming from stage one): the whole-trial bound less the trial's own stage-one cost; without one
  (never, in practice: a survivor has a stage one), the whole-trial bound x (1 - min(fraction, 1/2));
- a trial of a round-one stage-one unit that already wrote its stage one, or one in `done`: nothing.
Before any run of a kind finished there is no estimate: one unit runs alone as the probe (see `admit`)."""

from __future__ import annotations

import statistics
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from lora_ablation.api.stages import StageOneResult
from lora_ablation.api.trial import TrialResult
from lora_ablation.planning.plan import PlannedTrial
from lora_ablation.run.schedule import ROUND_TWO, Unit

BASELINE, STAGE_ONE, TRIAL = "baseline", "stage one", "trial"  # the kinds of run
SPREAD = 1.25  # runs of one kind are assumed to cost within this factor of each other (see the module docstring)


def result_cost(result: TrialResult) -> float:
    """Device-seconds of a finished trial (stage one included); older results carry only gpu_seconds."""
    if result.compute_seconds is not None:
        return result.compute_seconds
    return result.gpu_seconds or 0.0


def _share(fraction: float) -> float:
    """The least share of a whole two-stage trial its stage one costs (module docstring)."""
    return min(fraction, 0.5)


@dataclass(frozen=True)
class Costs:
    spent: float  # device-seconds used by finished trials and stage-one runs
    baseline: float | None  # mean cost of a finished baseline (for display; estimates use `seen`)
    trial: float | None  # mean cost of a finished trained trial (both stages)
    stage_one: float | None  # mean cost of a stage-one run
    seen: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # kind -> (smallest, largest) cost
    stage_ones: Mapping[str, float] = field(default_factory=dict)  # trial -> the cost of its own stage one

    @property
    def hours(self) -> float:
        return self.spent / 3600

    def bound(self, kind: str) -> float | None:
        """What one more run of `kind` costs at most, or None before one finished."""
        seen = self.seen.get(kind)
        if seen is None:  # a Costs built by hand with means only
            mean = {BASELINE: self.baseline, STAGE_ONE: self.stage_one, TRIAL: self.trial}[kind]
            seen = (mean, mean) if mean is not None else None
        return None if seen is None else max(seen[1], SPREAD * seen[0])

    def whole(self, stage_one_fraction: float | None) -> float | None:
        """What a whole trained trial costs at most: from finished ones, else from stage one."""
        whole = self.bound(TRIAL)
        one = self.bound(STAGE_ONE)
        if whole is None and one is not None and stage_one_fraction is not None:
            whole = one / _share(stage_one_fraction)
        return whole

    def trial_estimate(self, unit: Unit, trial: PlannedTrial, stage_one_fraction: float | None) -> float | None:
        """What `trial` (not done) still costs in `unit` at most, or None while its kind has no cost yet."""
        if trial.spec.is_baseline:
            return self.bound(BASELINE)
        if unit.stage_one:
            return 0.0 if trial.name in self.stage_ones else self.bound(STAGE_ONE)
        whole = self.whole(stage_one_fraction)
        if unit.round != ROUND_TWO or whole is None:
            return whole
        own = self.stage_ones.get(trial.name)
        if own is not None:
            return max(0.0, whole - own)
        return whole * (1 - _share(stage_one_fraction)) if stage_one_fraction is not None else whole

    def remaining(self, unit: Unit, done: Collection[str], stage_one_fraction: float | None = None) -> float | None:
        """What `unit` still costs at most (its trials in `done` cost nothing), or None while a kind it runs has
        no cost yet (then it is a probe)."""
        total = 0.0
        for trial in unit.trials:
            if trial.name in done:
                continue
            cost = self.trial_estimate(unit, trial, stage_one_fraction=stage_one_fraction)
            if cost is None:
                return None
            total += cost
        return total

    def estimate(self, unit: Unit, done: Collection[str], stage_one_fraction: float | None = None) -> float:
        """`remaining`, with 0 where nothing finished yet to tell."""
        return self.remaining(unit, done, stage_one_fraction=stage_one_fraction) or 0.0


def _range(values: list[float]) -> tuple[float, float] | None:
    return (min(values), max(values)) if values else None


def costs(results: Mapping[str, TrialResult], stage_ones: Mapping[str, StageOneResult]) -> Costs:
    baseline = [result_cost(r) for r in results.values() if r.variant == "none"]
    trained = [result_cost(r) for r in results.values() if r.variant != "none"]
    one = [s.compute_seconds for s in stage_ones.values()]
    spent = sum(baseline) + sum(trained) + sum(s.compute_seconds for n, s in stage_ones.items() if n not in results)
    seen = {kind: r for kind, values in ((BASELINE, baseline), (TRIAL, trained), (STAGE_ONE, one))
            if (r := _range(values)) is not None}  # fmt: skip
    return Costs(
        spent=spent,
        baseline=statistics.fmean(baseline) if baseline else None,
        trial=statistics.fmean(trained) if trained else None,
        stage_one=statistics.fmean(one) if one else None,
        seen=seen,
        stage_ones={n: s.compute_seconds for n, s in stage_ones.items()},
    )


def describe(limit_hours: float, costs_: Costs, committed: float, needed: float | None = None) -> str:
    """Why a unit does not start; `needed`: what it is expected to cost."""
    return (
        f"execution.maxGpuHours {limit_hours:g}: {costs_.hours:.3g} GPU-hours used"
        + (f" and {committed / 3600:.3g} expected from running trials" if committed else "")
        + ("; no further trial fits" if needed is None else f"; the unit is expected to need {needed / 3600:.3g} more")
    )


@dataclass(frozen=True)
class Admission:
    start: list[Unit]  # start these now, in order
    skipped: dict[str, str]  # trial -> why it will not start under this budget (state Skipped)
    waiting: list[Unit]  # not now: parallelism is full, a probe runs, or the running units may leave room
    reasons: dict[str, str]  # waiting unit's name -> why it waits
    committed: float  # device-seconds the running and the started units are expected to spend still


def _needs(costs_: Costs, unit: Unit, trial: PlannedTrial, done: Collection[str]) -> bool:
    scored = unit.stage_one and not trial.spec.is_baseline and trial.name in costs_.stage_ones
    return trial.name not in done and not scored


def admit(
    *,
    candidates: Sequence[Unit],
    running: Sequence[Unit],
    capacity: int,
    limit_hours: float | None,
    costs: Costs,
    done: Collection[str],
    stage_one_fraction: float | None,
) -> Admission:
    """Which of `candidates` (units not started, in schedule order) start now, which never will under the budget,
    and which wait. `running`: the units that run now (Jobs or processes, finished trials in `done`); `capacity`:
    how many more may start (parallelism less the running); `done`: trials that need nothing more (a result,
    failed, eliminated; not the skipped ones); `costs`: rebuilt from the finished evidence, nothing else is
    remembered between calls.

    With a limit, and every estimate an upper bound (module docstring), the total spend stays within the limit
    plus the cost of one unit: a unit with an estimate starts only if spent + committed + its estimate fit; a
    unit with no estimate (a kind nothing finished of: the probe) starts only while spent + committed is below the
    limit and no other probe runs; two probes at once (say a baseline and a trained trial) could each overspend.
    A unit is skipped only when it would not fit even were the running units free (spent + estimate); when it
    would fit once they finish (they may cost less than expected, or fail) it waits, and is decided once they have.
    """
    running_names = {u.name for u in running}
    candidates = [u for u in candidates if u.name not in running_names]
    if limit_hours is None:
        room = max(capacity, 0)
        waiting = candidates[room:]
        return Admission(candidates[:room], {}, waiting, {u.name: "execution.parallelism is full" for u in waiting}, 0)
    limit = limit_hours * 3600
    committed, probe = 0.0, None
    for unit in running:
        cost = costs.remaining(unit, done, stage_one_fraction=stage_one_fraction)
        if cost is None:
            probe = unit.name
        else:
            committed += cost
    start: list[Unit] = []
    skipped: dict[str, str] = {}
    waiting: list[Unit] = []
    reasons: dict[str, str] = {}
    for unit in candidates:
        cost = costs.remaining(unit, done, stage_one_fraction=stage_one_fraction)
        why = None
        if (cost is None and costs.spent >= limit) or (cost is not None and costs.spent + cost > limit):
            message = describe(limit_hours, costs, 0.0, cost)
            skipped.update({t.name: message for t in unit.trials if _needs(costs, unit, t, done)})
            continue
        if capacity <= 0:
            why = "execution.parallelism is full"
        elif cost is None and probe is not None:
            why = f"{probe} runs first: the first unit of a kind with no cost yet runs alone"
        elif costs.spent + committed + (cost or 0.0) > limit or (cost is None and costs.spent + committed >= limit):
            why = describe(limit_hours, costs, committed, cost) + "; waits for the running trials"
        if why is not None:
            waiting.append(unit)
            reasons[unit.name] = why
            continue
        start.append(unit)
        capacity -= 1
        if cost is None:
            probe = unit.name
        else:
            committed += cost
    return Admission(start, skipped, waiting, reasons, committed)
