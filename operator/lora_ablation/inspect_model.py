"""What `lora-ablation inspect-model` reports: groups, names and adapter sizes for one model."""

from __future__ import annotations

import importlib
import importlib.util
import re
from dataclasses import dataclass
from typing import Any

from lora_ablation.modules.groups import BASE_GROUPS, COMPOSITE_GROUPS
from lora_ablation.modules.inventory import (
    ModelInventory,
    ModuleResolutionError,
    catalog_inventory,
    compress_names,
    resolve_module_set,
)


def module_tree_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers"))


def inventory_for(config: dict[str, Any], prefer: str = "auto") -> ModelInventory:
    """The module tree when the trainer extra is installed (or asked for), the catalog otherwise.

    The trainer is imported by name at run time: the core must not depend on torch (see .importlinter).
    """
    if prefer == "tree" or (prefer == "auto" and module_tree_available()):
        module_tree = importlib.import_module("lora_ablation_trainer.module_tree")
        return module_tree.tree_inventory(config)
    return catalog_inventory(config)


@dataclass
class GroupReport:
    group: str
    names: list[str]
    modules: int
    params: int | None
    error: str | None = None


def inspect_inventory(inventory: ModelInventory, rank: int) -> dict[str, Any]:
    groups: list[GroupReport] = []
    for group in BASE_GROUPS + tuple(COMPOSITE_GROUPS):
        try:
            resolution = resolve_module_set(inventory, [group])
        except ModuleResolutionError as error:
            groups.append(GroupReport(group, [], 0, None, str(error).split(". The model")[0]))
            continue
        names = [w.name for w in resolution.weights]
        groups.append(GroupReport(group, names, len(names), resolution.lora_params(rank)))
    weights = inventory.language_weights()
    return {
        "modelType": inventory.model_type,
        "family": inventory.family.name if inventory.family else None,
        "source": inventory.source,
        "layers": inventory.layers,
        "layersPath": inventory.layers_path,
        "rank": rank,
        "linearModules": [
            {"name": name, "count": sum(1 for w in weights if _matches(w.name, name))}
            for name in compress_names(w.name for w in weights)
        ],
        "groups": [
            {
                "group": g.group,
                "modules": g.modules,
                "names": g.names,
                "loraParams": g.params,
                **({"error": g.error} if g.error else {}),
            }
            for g in groups
        ],
        "notes": inventory.notes,
    }


def _matches(name: str, pattern: str) -> bool:
    regex = re.escape(pattern)
    regex = re.sub(r"\\\{[^}]*\\\}", r"\\d+", regex)
    return re.fullmatch(regex, name) is not None
