"""How an ablation's trials are run, shared by the operator and the local runner: units (one Job, or one trainer
process) holding one trial or several (execution.trialsPerPod), and the two rounds of a two-stage ablation
(search.earlyStopping). Pure and deterministic: the same plan and the same stage-one scores always give the same
units under the same names, so a restarted operator finds the Jobs it created and never creates a second one."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from lora_ablation.api.spec import LoraAblationSpec
from lora_ablation.api.stages import EliminationRule, StageOneResult, StageOneSpec
from lora_ablation.api.trial import TrialBatch, TrialSpec
from lora_ablation.contract import TRIAL_ENV, TRIALS_ENV
from lora_ablation.naming import bounded_name
from lora_ablation.plan import Plan, PlannedTrial

ROUND_ONE, ROUND_TWO = 1, 2  # the first run of every trial (stage one when two-stage); the survivors' second stage


@dataclass(frozen=True)
class Unit:
    """One Job (or one local trainer process) and the trials it runs, in order."""

    name: str
    round: int
    dataset: str
    trials: tuple[PlannedTrial, ...]
    stage_one: bool = False  # round one of a two-stage ablation: trained trials stop at the stage-one checkpoint

    @property
    def trial_names(self) -> list[str]:
        return [t.name for t in self.trials]

    def specs(self, spec: LoraAblationSpec) -> list[TrialSpec]:
        """What the trainer receives: in round one of a two-stage ablation, each trained trial stops at stage one."""
        early = spec.search.early_stopping
        out = []
        for trial in self.trials:
            if early is not None and self.stage_one and not trial.spec.is_baseline:
                stage = StageOneSpec(fraction=early.stage_one_fraction, eval_samples=early.eval_samples)
                out.append(trial.spec.model_copy(update={"stage_one": stage}))
            else:
                out.append(trial.spec)
        return out

    def payload(self, spec: LoraAblationSpec, strip_targets: bool = False) -> tuple[str, str]:
        """(environment variable, JSON): one TrialSpec, or a TrialBatch for several."""
        specs = self.specs(spec)
        if strip_targets:  # the trainer re-resolves modules on the real model: keep long name lists out of the env
            specs = [s.model_copy(update={"target_modules": None, "target_parameters": None}) for s in specs]
        if len(specs) == 1:
            return TRIAL_ENV, specs[0].model_dump_json(by_alias=True, exclude_none=True)
        return TRIALS_ENV, TrialBatch(trials=specs).model_dump_json(by_alias=True, exclude_none=True)


def _chunks(trials: list[PlannedTrial], size: int) -> list[list[PlannedTrial]]:
    return [trials[i : i + size] for i in range(0, len(trials), size)]


def _units(ablation: str, trials: list[PlannedTrial], size: int, round_: int, stage_one: bool) -> list[Unit]:
    """Per dataset, in plan order, `size` trials at a time. A lone trial's first round keeps the trial's own name
    (the Job name it always had); anything else is named after what it holds, so a different grouping is a
    different Job."""
    by_dataset: dict[str, list[PlannedTrial]] = {}
    for trial in trials:
        by_dataset.setdefault(trial.spec.dataset.name, []).append(trial)
    units = []
    for dataset, members in by_dataset.items():
        for index, chunk in enumerate(_chunks(members, size)):
            names = [t.name for t in chunk]
            if len(chunk) == 1 and round_ == ROUND_ONE:
                name = chunk[0].name
            elif len(chunk) == 1:
                name = bounded_name([chunk[0].name, "stage2"], {"trial": names[0], "round": round_})
            else:
                identity = {"trials": names, "round": round_}
                name = bounded_name([ablation, dataset, f"r{round_}", f"batch{index}"], identity)
            units.append(Unit(name, round_, dataset, tuple(chunk), stage_one))
    return units


def round_one_units(ablation: str, plan: Plan, spec: LoraAblationSpec) -> list[Unit]:
    early = spec.search.early_stopping is not None
    return _units(ablation, plan.trials, spec.execution.trials_per_pod, ROUND_ONE, early)


@dataclass
class Elimination:
    """The two-stage decision so far. Datasets still waiting for a stage-one score decide nothing."""

    survivors: set[str] = field(default_factory=set)  # trials that go on to round two
    eliminated: dict[str, str] = field(default_factory=dict)  # trial -> why, with its score and the cutoff
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # dataset -> config label -> stage-one mean
    cutoffs: dict[str, float] = field(default_factory=dict)  # dataset -> the score a configuration needed
    decided: set[str] = field(default_factory=set)  # datasets whose decision is made


Key = tuple[float, float]  # (stage-one score, -eval loss): higher is better


def _kept(keys: dict[str, Key], spec: LoraAblationSpec) -> tuple[set[str], Key | None]:
    """The configurations that go on, and the key a configuration needed. aboveMedian keeps the upper half
    (ceil(n/2): the median configuration itself with an odd n), topK the best k; ties at the cutoff survive."""
    early = spec.search.early_stopping
    assert early is not None
    if len(keys) < early.min_configurations:
        return set(keys), None
    ordered = sorted(keys.values(), reverse=True)
    keep = early.keep or 1 if early.rule == EliminationRule.top_k else math.ceil(len(ordered) / 2)
    cutoff = ordered[min(keep, len(ordered)) - 1]
    return {label for label, key in keys.items() if key >= cutoff}, cutoff


def eliminate(
    plan: Plan,
    spec: LoraAblationSpec,
    stage_ones: Mapping[str, StageOneResult],
    finished: Iterable[str] = (),
    dropped: Iterable[str] = (),
) -> Elimination:
    """Per dataset, once every trained trial has a stage-one score, has finished, or was dropped (its stage one
    failed): configurations ranked by their stage-one score (the mean over seeds) keep or lose all their seeds
    together by search.earlyStopping.rule. The baseline trains nothing and never takes part."""
    out = Elimination()
    if spec.search.early_stopping is None:
        return out
    finished, dropped = set(finished), set(dropped)
    by_dataset: dict[str, list[PlannedTrial]] = {}
    for trial in plan.trials:
        if not trial.spec.is_baseline:
            by_dataset.setdefault(trial.spec.dataset.name, []).append(trial)
    for dataset, trials in by_dataset.items():
        if any(t.name not in stage_ones and t.name not in finished and t.name not in dropped for t in trials):
            continue
        per_config: dict[str, list[StageOneResult]] = {}
        for trial in trials:
            if trial.name in stage_ones:
                per_config.setdefault(trial.label, []).append(stage_ones[trial.name])
        # Early in training a generation metric is often tied (0 exact matches everywhere): the eval loss, which
        # moves from the first step, breaks such ties.
        keys = {label: _key(runs) for label, runs in per_config.items()}
        scores = {label: key[0] for label, key in keys.items()}
        kept, cutoff = _kept(keys, spec)
        out.scores[dataset], out.decided = scores, out.decided | {dataset}
        if cutoff is not None:
            out.cutoffs[dataset] = cutoff[0]
        for trial in trials:
            if trial.name not in stage_ones:
                continue
            if trial.label in kept:  # finished survivors too: round two's grouping must not change as they finish
                out.survivors.add(trial.name)
            elif trial.name not in finished:
                rule = spec.search.early_stopping.rule
                assert cutoff is not None
                tie = keys[trial.label][0] == cutoff[0]
                loss = f" with eval loss {-keys[trial.label][1]:.4f} against {-cutoff[1]:.4f}" if tie else ""
                out.eliminated[trial.name] = (
                    f"eliminated after stage one: {trial.label} scored {scores[trial.label]:.4f} on {dataset}, "
                    f"below the {rule} cutoff {cutoff[0]:.4f}{loss}"
                )
    return out


def _key(runs: list[StageOneResult]) -> Key:
    losses = [r.eval_loss for r in runs if r.eval_loss is not None]
    return statistics.fmean(r.score for r in runs), -(statistics.fmean(losses) if len(losses) == len(runs) else 0.0)


def round_two_units(ablation: str, plan: Plan, spec: LoraAblationSpec, elimination: Elimination) -> list[Unit]:
    survivors = [t for t in plan.trials if t.name in elimination.survivors]
    return _units(ablation, survivors, spec.execution.trials_per_pod, ROUND_TWO, False)


@dataclass(frozen=True)
class Schedule:
    """Every unit the ablation has now, and for each trial the unit it is in now (round two once it survived)."""

    units: list[Unit]
    current: dict[str, Unit]
    elimination: Elimination


def schedule(
    ablation: str,
    plan: Plan,
    spec: LoraAblationSpec,
    stage_ones: Mapping[str, StageOneResult],
    finished: Iterable[str] = (),
    dropped: Iterable[str] = (),
    first: list[Unit] | None = None,
) -> Schedule:
    """`first`: round one's units when the caller cached them (they depend on the plan alone)."""
    first = first if first is not None else round_one_units(ablation, plan, spec)
    elimination = eliminate(plan, spec, stage_ones, finished, dropped)
    second = round_two_units(ablation, plan, spec, elimination)
    current = {t.name: unit for unit in first for t in unit.trials}
    current.update({t.name: unit for unit in second for t in unit.trials})
    return Schedule(first + second, current, elimination)


def describe(ablation: str, plan: Plan, spec: LoraAblationSpec) -> list[str]:
    """What `plan` says about how the trials run: units, the two stages, the budget."""
    lines = []
    first = round_one_units(ablation, plan, spec)
    if spec.execution.trials_per_pod > 1:
        second = " (survivors of stage one are grouped the same way)" if spec.search.early_stopping else ""
        lines.append(f"Runs as {len(first)} Jobs of up to {spec.execution.trials_per_pod} trials (one dataset each; "
                     f"the base model is loaded once per Job){second}.")  # fmt: skip
    early = spec.search.early_stopping
    if early is not None:
        rule = f"the best {early.keep}" if early.rule == EliminationRule.top_k else "those at or above the median"
        trained = sum(1 for t in plan.trials if not t.spec.is_baseline)
        lines.append(
            f"Two stages: each of the {trained} trained trials first trains {early.stage_one_fraction:.0%} of its "
            f"steps; per dataset {rule} (by stage-one score, mean over seeds) resume from their checkpoint, the "
            f"others stop as Eliminated (not with fewer than {early.min_configurations} configurations)."
        )
    if spec.execution.max_gpu_hours is not None:
        lines.append(f"Budget: no trial starts once {spec.execution.max_gpu_hours:g} GPU-hours would be exceeded "
                     "(estimated from the finished trials).")  # fmt: skip
    return lines
