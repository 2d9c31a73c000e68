"""The planner: a LoraAblation spec -> the ordered list of trials it asks for. Pure: same input, same
plan, same names, on any machine; the operator, the local runner and `lora-ablation plan` share it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lora_ablation.api.naming import trial_names
from lora_ablation.api.spec import LoraAblationSpec, TrainingSpec
from lora_ablation.api.tracking import trial_tracking
from lora_ablation.api.trial import BASELINE_VARIANT, TrialSpec, TrialStorage
from lora_ablation.modules.groups import canonical_module_set, module_set_label
from lora_ablation.modules.inventory import ModelInventory, Resolution, in_layers, resolve_module_set
from lora_ablation.modules.layers import ALL as ALL_LAYERS
from lora_ablation.modules.layers import indices as layer_indices
from lora_ablation.modules.layers import slug as layers_slug
from lora_ablation.planning import fusion
from lora_ablation.planning.sharding import assign_sharding
from lora_ablation.planning.trials import (
    LayerSelectionError,
    Plan,
    PlannedTrial,
    ablation_uri,
    config_label,
    trial_uri,
)

__all__ = ["LayerSelectionError", "Plan", "PlannedTrial", "config_label", "plan_trials", "trial_uri"]


RUN_ONLY_TRAINING = ("gradientCheckpointing",)


def _training(spec: LoraAblationSpec, seed: int) -> TrainingSpec:
    return spec.training if seed == spec.training.seed else spec.training.model_copy(update={"seed": seed})


def _identity(
    spec: LoraAblationSpec, dataset_index: int, modules: list[str], rank: int, variant: str, seed: int, layers: str
) -> dict:
    """Everything that changes what a trial computes; editing anything else keeps its name and result.

    The seed enters through the training settings, so the default single seed (training.seed) keeps the
    names and cached results trials had before search.seeds existed."""
    training = _training(spec, seed).to_wire() if variant != BASELINE_VARIANT else None
    if training is not None:  # how a trial runs but not what it computes (same gradients): never in its name
        training = {k: v for k, v in training.items() if k not in RUN_ONLY_TRAINING}
    model = spec.base_model.model_dump(mode="json", include={"uri", "revision", "dtype"})
    if spec.base_model.quantization != "none":  # only then: the names of unquantized trials stay as they were
        model["quantization"] = str(spec.base_model.quantization)
    identity = {
        "model": model,
        "dataset": spec.datasets[dataset_index].model_dump(mode="json"),
        "modules": list(canonical_module_set(modules)),
        "rank": rank,
        "alpha": spec.search.alpha_over_rank * rank,
        "variant": variant,
        "training": training,
        "latency": spec.latency.to_wire(),
    }
    if layers != ALL_LAYERS:  # only then: trials adapting every layer keep the names they had before search.layers
        identity["layers"] = layers
    return identity


Combo = tuple[int, "int | None", list[str], int, str, int, str]  # dataset, module set, modules, rank, variant, seed,
# layers (module set None: the baseline)


def _combos(spec: LoraAblationSpec) -> list[Combo]:
    """Every trial's coordinates, in plan order: per dataset its baseline, then the grid."""
    combos: list[Combo] = []
    for d_index in range(len(spec.datasets)):
        if spec.search.include_baseline:
            combos.append((d_index, None, [], 0, BASELINE_VARIANT, spec.training.seed, ALL_LAYERS))
        for s_index, module_set in enumerate(spec.search.module_sets):
            for rank in spec.search.ranks:
                for variant in spec.search.variants:
                    for layers in spec.search.layers:
                        cell = (d_index, s_index, list(module_set), rank, str(variant))
                        combos += [(*cell, seed, layers) for seed in spec.seeds]
    return combos


def _name_parts(spec: LoraAblationSpec, ablation: str, combo: Combo) -> tuple[list[str], dict]:
    """A trial's readable name parts after the dataset, and the identity its hash is taken of."""
    d_index, _, modules, rank, variant, seed, layers = combo
    config = ["base"] if variant == BASELINE_VARIANT else [module_set_label(modules), f"r{rank}", variant]
    if layers != ALL_LAYERS:
        config.append(layers_slug(layers))
    if len(spec.seeds) > 1 and variant != BASELINE_VARIANT:
        config.append(f"s{seed}")  # readable; with one seed the name stays what it always was
    return config, {"ablation": ablation, **_identity(spec, d_index, modules, rank, variant, seed, layers)}


def plan_trials(
    ablation: str,
    namespace: str,
    spec: LoraAblationSpec,
    inventory: ModelInventory | None = None,
    model_config: Mapping[str, Any] | None = None,
) -> Plan:
    """Datasets x module sets x ranks x variants x seeds, each dataset preceded by its no-adapter baseline
    (one per dataset: the base model is not trained, so a seed changes nothing it computes).

    With an inventory, every module set is resolved first, so an unresolvable group fails the whole plan
    (ModuleResolutionError) before any trial exists.
    """
    resolutions: dict[int, Resolution] = {}
    if inventory is not None:
        for index, module_set in enumerate(spec.search.module_sets):
            resolutions[index] = resolve_module_set(inventory, module_set)
        for index, selection in enumerate(spec.search.layers):
            try:
                layer_indices(selection, inventory.layers)
            except ValueError as error:
                raise LayerSelectionError(f"spec.search.layers[{index}]: {error}") from None

    combos = _combos(spec)
    parts = [_name_parts(spec, ablation, combo) for combo in combos]
    names = trial_names(ablation, [(spec.datasets[c[0]].name, config, identity) for c, (config, identity) in
                                   zip(combos, parts, strict=True)])  # fmt: skip
    trials: list[PlannedTrial] = []
    tracking = trial_tracking(spec.tracking, ablation_uri(spec.storage.uri, namespace, ablation))
    for (d_index, s_index, modules, rank, variant, seed, layers), name in zip(combos, names, strict=True):
        dataset = spec.datasets[d_index]
        resolution = resolutions.get(s_index) if s_index is not None else None
        if resolution is not None and inventory is not None:  # the weights of the chosen layers only
            resolution = in_layers(resolution, inventory, layer_indices(layers, inventory.layers))
        label = config_label(modules, rank, variant, layers)
        trial_spec = TrialSpec(
            ablation=ablation,
            namespace=namespace,
            name=name,
            base_model=spec.base_model,
            dataset=dataset,
            modules=modules,
            target_modules=resolution.target_modules if resolution else None,
            target_parameters=(resolution.target_parameters or None) if resolution else None,
            rank=rank,
            alpha=spec.search.alpha_over_rank * rank,
            variant=variant,
            layers=layers,
            training=spec.training if variant == BASELINE_VARIANT else _training(spec, seed),
            latency=spec.latency,
            storage=TrialStorage(
                uri=trial_uri(spec.storage.uri, namespace, ablation, name),
                endpoint=spec.storage.endpoint,
                region=spec.storage.region,
            ),
            tracking=tracking,
        )
        if variant == BASELINE_VARIANT:
            params: int | None = 0
        elif resolution is not None:  # already narrowed to the chosen layers
            params = resolution.lora_params(rank, variant)
        else:
            params = None
        trials.append(PlannedTrial(trial_spec, label, params, None if variant == BASELINE_VARIANT else seed))
    names = [t.name for t in trials]
    assert len(set(names)) == len(names), "trial names collide"  # identities are unique by construction
    notes = (
        list(inventory.notes) if inventory else ["model not inspected: modules unresolved, parameters not estimated"]
    )
    plan = Plan(trials, inventory.source if inventory else None, notes)

    plan.sharding = assign_sharding(spec, plan, inventory, model_config)  # how each trial runs (TrialSpec.sharding)
    plan.fused_group_size, plan.fusion_note = fusion.group_limit(spec, plan, inventory, model_config)
    return plan
