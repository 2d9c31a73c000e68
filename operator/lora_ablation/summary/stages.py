"""What two-stage elimination and the budget add to a summary: the eliminated configurations with their stage-one
scores (apart from the completed ones the leaderboard ranks), and what the ablation cost."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from lora_ablation.api.curves import EvalPoint
from lora_ablation.api.render_safe import label_text
from lora_ablation.api.stages import StageOneResult
from lora_ablation.planning.plan import Plan
from lora_ablation.run.budget import Costs
from lora_ablation.run.schedule import Elimination
from lora_ablation.summary.models import (
    Compute,
    EliminatedConfig,
    SkippedConfig,
    StageOneEntry,
    Summary,
    TrialCurve,
)


# Labels as summarize makes them (label_text), so an eliminated configuration is named as the leaderboard names it.
def with_stages(summary: Summary, plan: Plan, elimination: Elimination, stage_ones: Mapping[str, StageOneResult],
                costs: Costs, skipped: Iterable[str] = (), max_gpu_hours: float | None = None) -> Summary:  # fmt: skip
    by_config: dict[tuple[str, str], list[str]] = {}
    for trial in plan.trials:
        if trial.name in elimination.eliminated:
            by_config.setdefault((trial.spec.dataset.name, trial.label), []).append(trial.name)
    eliminated = []
    for (dataset, label), trials in by_config.items():
        # A recorded decision is read back from storage: a figure it lacks is left out, never a KeyError.
        first = next((stage_ones[t] for t in trials if t in stage_ones), None)
        score, cutoff = elimination.scores.get(dataset, {}).get(label), elimination.cutoffs.get(dataset)
        if first is None or score is None or cutoff is None:
            continue
        eliminated.append(EliminatedConfig(
            dataset=dataset, config=label_text(label), stage_one_score=round(score, 6), cutoff=round(cutoff, 6),
            step=first.step, steps=first.steps, trials=trials,
        ))  # fmt: skip
    eliminated.sort(key=lambda e: (e.dataset, -e.stage_one_score))
    survived = {(t.spec.dataset.name, t.label) for t in plan.trials if t.name in elimination.survivors}
    entries = [
        StageOneEntry(
            dataset=dataset, config=label_text(label), score=round(score, 6), survived=(dataset, label) in survived
        )
        for dataset, scores in elimination.scores.items()
        for label, score in sorted(scores.items(), key=lambda kv: -kv[1])
    ]
    one = sum(s.compute_seconds for s in stage_ones.values())
    gone = sum(stage_ones[n].compute_seconds for n in elimination.eliminated if n in stage_ones)
    compute = Compute(
        gpu_hours=round(costs.hours, 6), stage_one_gpu_hours=round(one / 3600, 6),
        eliminated_gpu_hours=round(gone / 3600, 6), max_gpu_hours=max_gpu_hours, skipped_trials=sorted(skipped),
    )  # fmt: skip
    notes = [*summary.notes, *_stage_notes(eliminated, compute)]
    curves = list(summary.curves)
    for trial in plan.trials:  # an eliminated trial's curve is its stage one's, its eval point the stage-one score
        one = stage_ones.get(trial.name)
        if trial.name in elimination.eliminated and one is not None and one.curve.steps:
            point = EvalPoint(stage="stage-one", step=one.step, score=one.score, eval_loss=one.eval_loss)
            curves.append(TrialCurve(dataset=trial.spec.dataset.name, config=label_text(trial.label),
                                     trial=trial.name, seed=trial.seed, eliminated=True, curve=one.curve,
                                     eval_points=[point]))  # fmt: skip
    return summary.model_copy(update={"eliminated": eliminated, "stage_one": entries, "compute": compute,
                                      "notes": notes, "curves": curves,
                                      "skipped": _skipped(summary, plan, set(compute.skipped_trials))})  # fmt: skip


def _stage_notes(eliminated: list[EliminatedConfig], compute: Compute) -> list[str]:
    notes = []
    if eliminated:
        notes.append(f"{len(eliminated)} configuration(s) eliminated after stage one (see eliminated); the "
                     "leaderboard ranks the completed ones")  # fmt: skip
    if compute.skipped_trials:
        notes.append(f"{len(compute.skipped_trials)} trial(s) never started: execution.maxGpuHours was reached")
    return notes


def with_recorded_stages(summary: Summary, recorded: Summary) -> Summary:
    """`summary` (rebuilt from the result files alone, as `report` does) with what only the ablation knew and wrote
    into its summary.json: the stage-one eliminations and scores, the budget's skipped trials, the compute and the
    eliminated trials' curves. Taken as recorded, never re-derived: the results cannot tell them."""
    kept = {(c.dataset, c.trial) for c in summary.curves}
    curves = [*summary.curves, *(c for c in recorded.curves if c.eliminated and (c.dataset, c.trial) not in kept)]
    return summary.model_copy(update={
        "eliminated": recorded.eliminated, "stage_one": recorded.stage_one, "compute": recorded.compute,
        "skipped": recorded.skipped, "curves": curves,
        "notes": [*summary.notes, *_stage_notes(recorded.eliminated, recorded.compute)],
    })  # fmt: skip


def _skipped(summary: Summary, plan: Plan, skipped: set[str]) -> list[SkippedConfig]:
    """The configurations without a score on a dataset because none of their trials started (the budget)."""
    scored = {(t.name, c.config) for t in summary.datasets for c in t.cells}
    by_config: dict[tuple[str, str], list[str]] = {}
    for trial in plan.trials:
        if trial.name in skipped and trial.label != "base":
            by_config.setdefault((trial.spec.dataset.name, label_text(trial.label)), []).append(trial.name)
    return [SkippedConfig(dataset=d, config=c, trials=sorted(ts)) for (d, c), ts in sorted(by_config.items())
            if (d, c) not in scored]  # fmt: skip
