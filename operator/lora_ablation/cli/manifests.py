"""`validate` and `plan`: manifests checked as the API server would, then expanded into trials."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lora_ablation.api.base import SpecError
from lora_ablation.api.manifest import load_ablation, read_manifest
from lora_ablation.modules.catalog import UnsupportedModel
from lora_ablation.modules.groups import module_set_label
from lora_ablation.modules.inspect import inventory_for, module_tree_available
from lora_ablation.modules.inventory import ModelInventory, ModuleResolutionError, catalog_inventory
from lora_ablation.modules.model_config import ModelConfigUnavailable, load_model_config
from lora_ablation.planning import guardrails
from lora_ablation.planning.memory import GIB, MemoryReport, plan_memory
from lora_ablation.planning.placement import multi_node_line, multi_node_placement
from lora_ablation.planning.plan import LayerSelectionError, PlannedTrial, plan_trials
from lora_ablation.planning.sharding import plan_lines as sharding_lines
from lora_ablation.run.schedule import describe as describe_schedule
from lora_ablation.summary.report import human_count, text_table

EXIT_INVALID = 2  # bad input: the message names the file and the field


def cmd_validate(args: argparse.Namespace) -> int:
    """Every file is checked and reported, good or bad; exit 2 when any one is bad.

    The checks are the API server's (types, the CRD's schema and rules: parse_ablation) and, when the model's
    config.json is readable from here, the planner's (module names, layer ranges), as `plan` would fail on them."""
    bad = 0
    for path in args.files:
        try:
            manifest = read_manifest(path)
            checked = [(ablation, _modules_note(ablation, path)) for ablation in manifest.ablations]
        except SpecError as error:
            bad += 1
            for problem in error.problems:
                print(f"error: {problem}", file=sys.stderr)
            continue
        for ablation, modules_note in checked:
            print(f"{path}: {ablation.metadata.name} is valid")
            if modules_note:
                print(f"note: {path}: {modules_note}")
            advice = guardrails.check(ablation.spec, guardrails.local_sizes(ablation.spec))
            for line in guardrails.render(advice, path):
                print(line)  # advice, never a failure: the exit code stays 0
        for note in manifest.skipped:
            print(f"note: {note}")
    if bad:
        print(f"{bad} of {len(args.files)} file(s) invalid", file=sys.stderr)
        return EXIT_INVALID
    return 0


def _modules_note(ablation, path: str) -> str | None:
    """Plan the ablation to check its module sets and layer ranges against the model: a SpecError naming the
    file and field when they do not fit it, a note when the model's config could not be read (None: checked)."""
    try:
        plan, source_note, _ = planned(ablation)
    except SpecError as error:
        raise SpecError([f"{path}: {p}" for p in error.problems]) from None
    if plan.inventory_source is None:
        return (
            f"{ablation.metadata.name}: module names and layer ranges not checked, {source_note}; "
            f"`lora-ablation plan {path} --model-config config.json` checks them against a config.json you have"
        )
    return None


def _plan_inventory(config: dict[str, Any]) -> ModelInventory:
    """The catalog (instant, same answer as the operator); the real module tree for architectures the
    catalog does not list, when the trainer extra is installed."""
    try:
        return catalog_inventory(config)
    except UnsupportedModel:
        if not module_tree_available():
            raise
        try:
            return inventory_for(config, "tree")
        except (ValueError, KeyError) as error:  # transformers does not know this model_type either
            first = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            raise UnsupportedModel(f"model_type {config.get('model_type')!r}: {first}") from None


def checked_config(config: Any, where: str) -> dict[str, Any]:
    """A model config the resolvers can use: a JSON object with a model_type, or a SpecError saying so."""
    if not isinstance(config, dict):
        raise SpecError([f"{where}: expected a JSON object (a model's config.json), got {type(config).__name__}"])
    if not isinstance(config.get("model_type"), str):
        raise SpecError([f'{where}: no "model_type" field; expected a Hugging Face model\'s config.json'])
    return config


def _read_config_file(path: str, option: str) -> dict[str, Any]:
    """config.json named on the command line: unreadable or not JSON is bad input naming the file."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise SpecError([f"{option} {path}: cannot read ({reason}); pass a model's config.json"]) from None
    try:
        config = json.loads(text)
    except ValueError as error:
        raise SpecError([f"{option} {path}: not valid JSON ({error}); pass a model's config.json"]) from None
    return checked_config(config, f"{option} {path}")


def _target_count(trial: PlannedTrial) -> str:
    if trial.spec.is_baseline:
        return "-"
    if trial.spec.target_modules is None:
        return "?"
    return str(len(trial.spec.target_modules) + len(trial.spec.target_parameters or []))


def _runs(plan, name: str) -> str | None:
    decision = plan.sharding.get(name)
    return f"{decision.describe()}: {decision.reason}" if decision else None


def cmd_plan(args: argparse.Namespace) -> int:
    ablation = load_ablation(args.file)
    meta = ablation.metadata
    given = (_read_config_file(args.model_config, "--model-config"), args.model_config) if args.model_config else None
    try:
        plan, source_note, memory = planned(ablation, given)
    except SpecError as error:
        raise SpecError([f"{args.file}: {p}" for p in error.problems]) from None
    if args.output == "json":
        out = {
            "ablation": meta.name,
            "namespace": meta.namespace,
            "resolution": source_note,
            "trials": [
                {
                    "name": t.name,
                    "dataset": t.spec.dataset.name,
                    "config": t.label,
                    "modules": t.spec.modules,
                    "rank": t.spec.rank,
                    "alpha": t.spec.alpha,
                    "variant": t.spec.variant,
                    "seed": t.seed,
                    "layers": t.spec.layers,
                    "targetModules": t.spec.target_modules,
                    "targetParameters": t.spec.target_parameters,
                    "estimatedParams": t.estimated_params,
                    "estimatedMemoryBytes": memory.estimates[t.name].total if t.name in memory.estimates else None,
                    "sharding": t.spec.sharding or "none",
                    "runs": _runs(plan, t.name),
                    "resultsUri": t.spec.storage.uri,
                }
                for t in plan.trials
            ],
            "multiNode": multi_node_placement(ablation.spec.execution),
            "schedule": describe_schedule(meta.name, plan, ablation.spec),
            "gpuMemoryBytes": memory.gpu_bytes,
            "memoryWarnings": memory.warnings,
            "warnings": [vars(g) for g in guardrails.for_plan(ablation.spec, plan)],
        }
        print(json.dumps(out, indent=2))
        return 0
    seeds = ablation.spec.seeds
    rows = [
        [
            t.name,
            t.spec.dataset.name,
            "(none)" if t.spec.is_baseline else module_set_label(t.spec.modules),  # [mlp] reads fc1+fc2, as in names
            str(t.spec.rank),
            t.spec.variant,
            *([] if len(seeds) == 1 else ["-" if t.seed is None else str(t.seed)]),
            human_count(t.estimated_params, missing="?"),
            _target_count(t),
            f"{memory.estimates[t.name].total / GIB:.1f}Gi" if t.name in memory.estimates else "?",
        ]
        for t in plan.trials
    ]
    headers = ["TRIAL", "DATASET", "MODULES", "RANK", "VARIANT", *([] if len(seeds) == 1 else ["SEED"]), "PARAMS"]
    print(text_table([*headers, "TARGETS", "MEMORY"], rows))
    print(f"\n{len(plan.trials)} trials for {meta.namespace}/{meta.name}; {source_note}.")
    if plan.inventory_source is None:
        print("To resolve modules and estimate parameters and memory, pass the model's config.json: "
              f"lora-ablation plan {args.file} --model-config config.json")  # fmt: skip
    if line := multi_node_line(ablation.spec.execution):
        print(line)
    for line in describe_schedule(meta.name, plan, ablation.spec):
        print(line)
    for line in memory.lines():
        print(line)
    for line in sharding_lines(plan.trials, plan.sharding):
        print(line)
    warnings = guardrails.for_plan(ablation.spec, plan)
    if warnings:
        print(f"\n{len(warnings)} guardrail warning(s) (advice from the seed studies; the plan stands):")
        print("\n".join(guardrails.render(warnings)))
    return 0


def planned(ablation, given: tuple[dict[str, Any], str] | None = None):
    """Plan an ablation, resolving modules when the model's config.json is readable from here."""
    spec, meta = ablation.spec, ablation.metadata
    inventory, source_note, config = None, "", {}
    try:
        if given:  # plan --model-config FILE
            config, where = given
        else:
            try:
                config, where = load_model_config(spec.base_model.uri, spec.base_model.revision, spec.storage.endpoint)
            except ValueError as error:  # a config.json that is not JSON
                raise SpecError(
                    [f"spec.baseModel.uri {spec.base_model.uri}: config.json is not valid JSON ({error})"]
                ) from None
            config = checked_config(config, f"spec.baseModel.uri {spec.base_model.uri}: config.json")
        inventory = _plan_inventory(config)
        source_note = f"modules resolved by the {inventory.source} from {where}"
    except (ModelConfigUnavailable, UnsupportedModel) as error:
        source_note = f"modules not resolved ({error})"
    try:
        plan = plan_trials(meta.name, meta.namespace, spec, inventory, config if inventory else None)
    except ModuleResolutionError as error:
        raise SpecError([f"spec.search.moduleSets: {error}"]) from None
    except LayerSelectionError as error:  # already names spec.search.layers[i]
        raise SpecError([str(error)]) from None
    memory = plan_memory(plan, inventory, config, spec.execution) if inventory else MemoryReport({}, None, "", [])
    return plan, source_note, memory


