"""How an ablation's trials are run, shared by the operator and the local runner: units (one Job, or one trainer
process) holding one trial or several (execution.trialsPerPod), and the two rounds of a two-stage ablation
(search.earlyStopping). Pure and deterministic: the same plan and the same stage-one scores always give the same
units under the same names, so a restarted operator finds the Jobs it created and never creates a second one."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from lora_ablation.api.contract import TRIAL_ENV, TRIALS_ENV
from lora_ablation.api.naming import bounded_name
from lora_ablation.api.spec import LoraAblationSpec
from lora_ablation.api.stages import EliminationDecision, EliminationRule, StageOneResult, StageOneSpec
from lora_ablation.api.trial import TrialBatch, TrialSpec
from lora_ablation.planning import fusion
from lora_ablation.planning.plan import Plan, PlannedTrial

ROUND_ONE, ROUND_TWO = 1, 2  # the first run of every trial (stage one when two-stage); the survivors' second stage


@dataclass(frozen=True)
class Unit:
    """One Job (or one local trainer process) and the trials it runs, in order."""

    name: str
    round: int
    dataset: str
    trials: tuple[PlannedTrial, ...]
    stage_one: bool = False  # round one of a two-stage ablation: trained trials stop at the stage-one checkpoint
    fuse: int = 1  # trials trained together at most (Plan.fused_group_size)

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
        batch = TrialBatch(trials=specs, fused_group_size=min(self.fuse, len(specs)))
        return TRIALS_ENV, batch.model_dump_json(by_alias=True, exclude_none=True)


def _chunks(trials: list[PlannedTrial], size: int) -> list[list[PlannedTrial]]:
    return [trials[i : i + size] for i in range(0, len(trials), size)]


def _units(ablation: str, trials: list[PlannedTrial], size: int, round_: int, stage_one: bool, fuse: int = 1
           ) -> list[Unit]:  # fmt: skip
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
            units.append(Unit(name, round_, dataset, tuple(chunk), stage_one, fuse))
    return units


def round_one_units(ablation: str, plan: Plan, spec: LoraAblationSpec) -> list[Unit]:
    early = spec.search.early_stopping is not None
    return _units(ablation, plan.trials, spec.execution.trials_per_pod, ROUND_ONE, early, plan.fused_group_size)


@dataclass
class Elimination:
    """The two-stage decision so far. Datasets still waiting for a stage-one score decide nothing."""

    survivors: set[str] = field(default_factory=set)  # trials that go on to round two
    eliminated: dict[str, str] = field(default_factory=dict)  # trial -> why, with its score and the cutoff
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # dataset -> config label -> stage-one mean
    cutoffs: dict[str, float] = field(default_factory=dict)  # dataset -> the score a configuration needed
    decided: set[str] = field(default_factory=set)  # datasets whose decision is made
    new: dict[str, EliminationDecision] = field(default_factory=dict)  # decided by this call: record them once


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
    recorded: Mapping[str, EliminationDecision] | None = None,
) -> Elimination:
    """Per dataset, once every trained trial has a stage-one score, has finished, or was dropped (its stage one
    failed): configurations ranked by their stage-one score (the mean over seeds) keep or lose all their seeds
    together by search.earlyStopping.rule. The baseline trains nothing and never takes part.

    A dataset's decision in `recorded` stands as it was made (an edit, a deleted Job or a restart never reopens
    it); a trial it did not know (a configuration added later) is held against its cutoff. Decisions made here
    are in `.new`, for the caller to record. Without earlyStopping every trial scored in stage one goes on."""
    out = Elimination()
    trained = [t for t in plan.trials if not t.spec.is_baseline]
    if spec.search.early_stopping is None:  # removed mid-run: eliminated trials resume from their checkpoints
        out.survivors = {t.name for t in trained if t.name in stage_ones}
        return out
    finished, dropped, recorded = set(finished), set(dropped), recorded or {}
    by_dataset: dict[str, list[PlannedTrial]] = {}
    for trial in trained:
        by_dataset.setdefault(trial.spec.dataset.name, []).append(trial)
    for dataset, trials in by_dataset.items():
        if dataset in recorded:
            _apply_recorded(recorded[dataset], trials, stage_ones, finished, spec, out)
            continue
        if any(t.name not in stage_ones and t.name not in finished and t.name not in dropped for t in trials):
            continue
        per_config: dict[str, list[StageOneResult]] = {}
        for trial in trials:
            if trial.name in stage_ones:
                per_config.setdefault(trial.label, []).append(stage_ones[trial.name])
        # Early in training a generation metric is often tied (0 exact matches everywhere): the eval loss, which
        # moves from the first step, breaks such ties.
        keys = {label: _key(runs) for label, runs in per_config.items()}
        kept, cutoff = _kept(keys, spec)
        out.scores[dataset], out.decided = {label: key[0] for label, key in keys.items()}, out.decided | {dataset}
        if cutoff is not None:
            out.cutoffs[dataset] = cutoff[0]
        for trial in trials:
            if trial.name not in stage_ones:
                continue
            if trial.label in kept:  # finished survivors too: round two's grouping must not change as they finish
                out.survivors.add(trial.name)
            elif trial.name not in finished:
                out.eliminated[trial.name] = _why(trial, keys[trial.label], cutoff, dataset, spec)
        out.new[dataset] = EliminationDecision(
            dataset=dataset, survivors=sorted(n for n in out.survivors if n in {t.name for t in trials}),
            eliminated={n: w for n, w in out.eliminated.items() if n in {t.name for t in trials}},
            scores=out.scores[dataset], cutoff=cutoff,
        )  # fmt: skip
    return out


def _why(trial: PlannedTrial, key: Key, cutoff: Key | None, dataset: str, spec: LoraAblationSpec) -> str:
    assert cutoff is not None and spec.search.early_stopping is not None
    loss = f" with eval loss {-key[1]:.4f} against {-cutoff[1]:.4f}" if key[0] == cutoff[0] else ""
    return (
        f"eliminated after stage one: {trial.label} scored {key[0]:.4f} on {dataset}, below the "
        f"{spec.search.early_stopping.rule} cutoff {cutoff[0]:.4f}{loss}"
    )


def _apply_recorded(decision: EliminationDecision, trials: list[PlannedTrial], stage_ones: Mapping[str, StageOneResult],
                    finished: set[str], spec: LoraAblationSpec, out: Elimination) -> None:  # fmt: skip
    out.decided.add(decision.dataset)
    labels = {t.label for t in trials}  # what the record says of configurations the plan does not have is ignored
    out.scores[decision.dataset] = {label: score for label, score in decision.scores.items() if label in labels}
    cutoff = tuple(decision.cutoff) if decision.cutoff is not None else None
    if cutoff is not None:
        out.cutoffs[decision.dataset] = cutoff[0]
    survivors, eliminated = set(decision.survivors), decision.eliminated
    late: dict[str, list[StageOneResult]] = {}
    for trial in trials:
        if trial.name in survivors:
            out.survivors.add(trial.name)
        elif trial.name in eliminated:
            if trial.name not in finished:
                out.eliminated[trial.name] = eliminated[trial.name]
        elif trial.name in stage_ones:  # not known to the decision: judged by its cutoff, seeds together
            late.setdefault(trial.label, []).append(stage_ones[trial.name])
    for trial in trials:
        if trial.name in survivors or trial.name in eliminated or trial.label not in late:
            continue
        key = _key(late[trial.label])
        out.scores[decision.dataset][trial.label] = key[0]
        if cutoff is None or key >= cutoff:
            out.survivors.add(trial.name)
        elif trial.name not in finished:
            out.eliminated[trial.name] = _why(trial, key, cutoff, decision.dataset, spec)


def _key(runs: list[StageOneResult]) -> Key:
    losses = [r.eval_loss for r in runs if r.eval_loss is not None]
    return statistics.fmean(r.score for r in runs), -(statistics.fmean(losses) if len(losses) == len(runs) else 0.0)


def round_two_units(ablation: str, plan: Plan, spec: LoraAblationSpec, elimination: Elimination) -> list[Unit]:
    survivors = [t for t in plan.trials if t.name in elimination.survivors]
    return _units(ablation, survivors, spec.execution.trials_per_pod, ROUND_TWO, False, plan.fused_group_size)


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
    *,
    recorded: Mapping[str, EliminationDecision] | None = None,
    kept: Sequence[Unit] = (),
) -> Schedule:
    """Every unit the ablation has now. `kept`: the units of the workloads that exist (finished ones first), which
    stay as they are; only trials with nothing to show (no result, failure or stage-one score) and no workload are
    grouped anew, so an edit of trialsPerPod regroups only trials that have not started. `first`: round one's
    units when the caller cached them for a plan with nothing kept or settled (they depend on the plan alone)."""
    finished, dropped = set(finished), set(dropped)
    elimination = eliminate(plan, spec, stage_ones, finished, dropped, recorded)
    size = spec.execution.trials_per_pod
    early = spec.search.early_stopping is not None
    # A kept unit read back from its workload runs as the plan fuses now, should its Job be created again.
    kept = [dataclasses.replace(u, fuse=plan.fused_group_size) for u in kept]
    kept_one = [u for u in kept if u.round == ROUND_ONE]
    kept_two = [u for u in kept if u.round == ROUND_TWO]
    settled = finished | dropped
    if first is None or kept or settled or stage_ones:
        covered = {n for u in kept_one for n in u.trial_names} | settled | set(stage_ones)
        first = _units(ablation, [t for t in plan.trials if t.name not in covered], size, ROUND_ONE, early,
                       plan.fused_group_size)  # fmt: skip
    covered = {n for u in kept_two for n in u.trial_names} | settled
    survivors = [t for t in plan.trials if t.name in elimination.survivors and t.name not in covered]
    second = _units(ablation, survivors, size, ROUND_TWO, False, plan.fused_group_size)
    current: dict[str, Unit] = {}
    for unit in [*kept_one, *first, *kept_two, *second]:  # later rounds and running workloads win
        current.update({t.name: unit for t in unit.trials})
    return Schedule([*kept_one, *first, *kept_two, *second], current, elimination)


def describe(ablation: str, plan: Plan, spec: LoraAblationSpec) -> list[str]:
    """What `plan` says about how the trials run: units, the two stages, the budget."""
    lines = []
    first = round_one_units(ablation, plan, spec)
    if spec.execution.trials_per_pod > 1:
        second = " (survivors of stage one are grouped the same way)" if spec.search.early_stopping else ""
        lines.append(f"Runs as {len(first)} Jobs of up to {spec.execution.trials_per_pod} trials (one dataset each; "
                     f"the base model is loaded once per Job){second}.")  # fmt: skip
        lines.append(f"Fused training: {plan.fusion_note}.")
        for unit in first[:3]:  # how the first Jobs group their trials; the rest follow the same rules
            specs = [t.spec for t in unit.trials]
            lines += [f"  {unit.name}: {line}" for line in fusion.describe(specs, unit.fuse)]
        if len(first) > 3:
            lines.append(f"  ... and {len(first) - 3} more Jobs grouped the same way.")
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
