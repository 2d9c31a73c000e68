"""GPU-hour accounting and the budget (execution.maxGpuHours), shared by the operator and the local runner.

A trial's cost is its compute_seconds: wall-clock seconds x GPUs, or x 1 for a CPU-only run (so the budget
means something on a laptop too). What a trial still to run will cost is estimated from the trials that
finished: the mean cost of a finished run of the same kind (baseline, stage one, whole trial). Before any has
finished there is no estimate, and the first units start; from then on a unit starts only while what was spent,
what the running units are expected to spend and what it is expected to spend stay within the budget."""

from __future__ import annotations

import statistics
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from lora_ablation.api.stages import StageOneResult
from lora_ablation.api.trial import TrialResult
from lora_ablation.schedule import ROUND_TWO, Unit


def result_cost(result: TrialResult) -> float:
    """Device-seconds of a finished trial (stage one included); older results carry only gpu_seconds."""
    if result.compute_seconds is not None:
        return result.compute_seconds
    return result.gpu_seconds or 0.0


@dataclass(frozen=True)
class Costs:
    spent: float  # device-seconds used by finished trials and stage-one runs
    baseline: float | None  # mean cost of a finished baseline
    trial: float | None  # mean cost of a finished trained trial (both stages)
    stage_one: float | None  # mean cost of a stage-one run

    @property
    def hours(self) -> float:
        return self.spent / 3600

    def estimate(self, unit: Unit, done: Collection[str]) -> float:
        """Expected device-seconds of what `unit` still has to run (0 where nothing finished yet to tell)."""
        total = 0.0
        for trial in unit.trials:
            if trial.name in done:
                continue
            if trial.spec.is_baseline:
                total += self.baseline or 0.0
            elif unit.round == ROUND_TWO:
                total += max(0.0, (self.trial or 0.0) - (self.stage_one or 0.0))
            elif unit.stage_one:
                total += self.stage_one if self.stage_one is not None else 0.0
            else:
                total += self.trial or 0.0
        return total


def costs(results: Mapping[str, TrialResult], stage_ones: Mapping[str, StageOneResult]) -> Costs:
    baseline = [result_cost(r) for r in results.values() if r.variant == "none"]
    trained = [result_cost(r) for r in results.values() if r.variant != "none"]
    one = [s.compute_seconds for s in stage_ones.values()]
    spent = sum(baseline) + sum(trained) + sum(s.compute_seconds for n, s in stage_ones.items() if n not in results)
    return Costs(
        spent=spent,
        baseline=statistics.fmean(baseline) if baseline else None,
        trial=statistics.fmean(trained) if trained else None,
        stage_one=statistics.fmean(one) if one else None,
    )


def affordable(limit_hours: float | None, costs_: Costs, committed: float, unit_cost: float) -> bool:
    """Whether a unit expected to cost `unit_cost` device-seconds may start while the running units are expected
    to spend `committed` more."""
    if limit_hours is None:
        return True
    return costs_.spent + committed + unit_cost <= limit_hours * 3600


def describe(limit_hours: float, costs_: Costs, committed: float) -> str:
    return (
        f"execution.maxGpuHours {limit_hours:g}: {costs_.hours:.3g} GPU-hours used"
        + (f" and {committed / 3600:.3g} expected from running trials" if committed else "")
        + "; no further trial fits"
    )
