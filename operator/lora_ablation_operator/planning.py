"""From a raw spec to a plan, once per generation: parse, check what only the operator can check (name length,
file:// paths, the admin policy, its own trial limit), expand the grid. Pure, plus a small cache keyed by uid and
generation: the spec cannot change without the generation changing, and a large grid costs real CPU to plan."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from lora_ablation.api.base import SpecError
from lora_ablation.api.resource import MAX_ABLATION_NAME
from lora_ablation.api.resource import parse_spec as parse_raw_spec
from lora_ablation.api.spec import LoraAblationSpec
from lora_ablation.planning import guardrails
from lora_ablation.planning.memory import offline_memory_warnings
from lora_ablation.planning.plan import Plan, plan_trials
from lora_ablation_operator import conditions as c
from lora_ablation_operator.multinode import multi_node_problem
from lora_ablation_operator.policy import violations
from lora_ablation_operator.settings import Settings

MAX_WARNINGS = 20  # status.warnings holds at most this many


@dataclass(frozen=True)
class Planned:
    """A usable spec and its plan, or the reason there is none (an InvalidSpec or Forbidden message)."""

    spec: LoraAblationSpec | None = None
    plan: Plan | None = None
    problem: str | None = None
    reason: str = c.INVALID_SPEC  # Forbidden when the admin policy refuses the spec
    warnings: tuple[str, ...] = ()  # e.g. trials estimated not to fit the GPU's memory (status.warnings)
    guardrails: tuple[str, ...] = ()  # guardrails the spec breaks: advice, never a reason to stop (Warnings)


def _file_uris(spec: LoraAblationSpec) -> list[str]:
    uris = [spec.base_model.uri, spec.storage.uri, *(u for d in spec.datasets for u in (d.train, d.eval))]
    return [u for u in uris if u.startswith("file://")]


def plan_for(name: str, namespace: str, raw_spec: Any, settings: Settings) -> Planned:
    """Everything that makes a spec unusable in this cluster, as one message naming the fields; else the plan."""
    if len(name) > MAX_ABLATION_NAME:
        return Planned(problem=f"metadata.name: at most {MAX_ABLATION_NAME} characters (got {len(name)}); it becomes "
                       "a label value on every trial Job: recreate the ablation under a shorter name")  # fmt: skip
    try:
        spec = parse_raw_spec(raw_spec)
    except SpecError as error:
        return Planned(problem="; ".join(error.problems))
    if _file_uris(spec):
        return Planned(problem=f"file:// paths exist only on one machine ({', '.join(_file_uris(spec))}); "
                       "use s3:// or pvc:// in a cluster")  # fmt: skip
    forbidden = violations(spec, settings.policy, trainer_image=settings.trainer_image,
                           default_secret=settings.default_credentials_secret,
                           default_endpoint=settings.default_storage_endpoint)  # fmt: skip
    if forbidden:
        return Planned(problem="; ".join(forbidden), reason=c.FORBIDDEN)
    if multi_node := multi_node_problem(spec, settings):
        return Planned(problem=multi_node)
    if spec.trial_count > settings.max_trials:
        return Planned(problem=f"spec.search: the grid asks for {spec.trial_count} trials; this operator runs at "
                       f"most {settings.max_trials} per ablation (its maxTrials setting): narrow the grid or split "
                       "the study")  # fmt: skip
    if settings.default_storage_endpoint and not spec.storage.endpoint:
        spec.storage.endpoint = settings.default_storage_endpoint
    try:
        plan = plan_trials(name, namespace, spec)
    except ValueError as error:  # a combination no single field check refuses: report it, never raise
        return Planned(problem=f"spec: the grid cannot be planned: {str(error)[:500]}")
    # The operator reads no data and inspects no model here, so only the rules on the spec itself apply.
    return Planned(spec, plan, warnings=tuple(offline_memory_warnings(spec, plan)[:MAX_WARNINGS]),
                   guardrails=tuple(g.short() for g in guardrails.check(spec)))


class PlanCache:
    """Plans by (uid, generation), least recently used dropped first; the handlers own one."""

    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._plans: OrderedDict[tuple[str, int | None], Planned] = OrderedDict()

    def get(self, uid: str, generation: int | None, name: str, namespace: str, raw_spec: Any,
            settings: Settings) -> Planned:  # fmt: skip
        key = (uid, generation)
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        planned = self._plans[key] = plan_for(name, namespace, raw_spec, settings)
        for old in [k for k in self._plans if k[0] == uid and k != key]:
            del self._plans[old]  # an older generation of the same object is never asked for again
        while len(self._plans) > self._size:
            self._plans.popitem(last=False)
        return planned

    def forget(self, uid: str) -> None:
        for key in [k for k in self._plans if k[0] == uid]:
            del self._plans[key]

    def __len__(self) -> int:
        return len(self._plans)
