"""The summary of an ablation, assembled and published the same way by the operator and the local runner: the
leaderboard over the results, the two stages and the cost beside it, summary.json and summary.md in storage."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from lora_ablation.api.spec import LoraAblationSpec
from lora_ablation.api.stages import StageOneResult
from lora_ablation.api.trial import TrialResult
from lora_ablation.planning.plan import Plan
from lora_ablation.run.budget import Costs
from lora_ablation.run.schedule import Elimination
from lora_ablation.storage.results import SUMMARY_FILE
from lora_ablation.storage.store import Store
from lora_ablation.summary.build import summarize
from lora_ablation.summary.models import Summary
from lora_ablation.summary.report import render_markdown
from lora_ablation.summary.stages import with_stages


def summary_of(*, plan: Plan, spec: LoraAblationSpec, name: str, namespace: str, results: Mapping[str, TrialResult],
               elimination: Elimination, stage_ones: Mapping[str, StageOneResult], costs: Costs,
               skipped: Collection[str]) -> Summary:  # fmt: skip
    """`results`: the valid results by trial (those of trials no longer planned are left out)."""
    unrun = set(elimination.eliminated) | set(skipped)
    summary = summarize(
        [results[t.name] for t in plan.trials if t.name in results], name, namespace, spec.selection.tolerance,
        spec.selection.latency_budget_ms, planned=[(t.spec.dataset.name, t.label) for t in plan.trials
                                                   if t.name not in unrun],
    )  # fmt: skip
    return with_stages(summary, plan, elimination, stage_ones, costs, skipped=sorted(skipped),
                       max_gpu_hours=spec.execution.max_gpu_hours)  # fmt: skip


def write_summary(store: Store, summary: Summary) -> None:
    store.write_json(SUMMARY_FILE, summary.to_wire())
    store.write_text("summary.md", render_markdown(summary))
