"""What `lora-ablation inspect-model` reports: groups, names and adapter sizes for one model."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from lora_ablation.modules.groups import BASE_GROUPS, COMPOSITE_GROUPS
from lora_ablation.modules.inventory import (
    ModelInventory,
    ModuleResolutionError,
    catalog_inventory,
    compress_names,
    resolve_module_set,
)

# The extension point a package fills to read a model's real module tree (the trainer does, with torch): the core
# names what it needs, never the package that provides it (see .importlinter).
INVENTORY_PLUGINS = "lora_ablation.inventories"
MODULE_TREE = "module-tree"


def _module_tree_plugin() -> Any:
    found = [e for e in entry_points(group=INVENTORY_PLUGINS) if e.name == MODULE_TREE]
    return found[0] if found else None


def module_tree_available() -> bool:
    libraries = all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers"))
    return libraries and _module_tree_plugin() is not None


def inventory_for(config: dict[str, Any], prefer: str = "auto") -> ModelInventory:
    """The module tree when a module-tree plugin is installed (the trainer extra) or asked for, the catalog
    otherwise."""
    if prefer == "tree" or (prefer == "auto" and module_tree_available()):
        plugin = _module_tree_plugin()
        if plugin is None:
            raise ModuleNotFoundError(f"no {INVENTORY_PLUGINS} entry point {MODULE_TREE!r}: install the trainer extra")
        return plugin.load()(config)
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
