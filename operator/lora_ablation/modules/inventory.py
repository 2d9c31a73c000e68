"""A model's adaptable weights as plain data, and how a module set maps onto them.

Two producers share one resolver: `catalog_inventory` synthesises the inventory from config.json
(no torch, used by the planner and the operator) and the trainer's module tree reads it off the real
model on the meta device. Because the matching code is shared, the two can only disagree when the
catalog's data is wrong, and the agreement tests check exactly that data.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from lora_ablation.modules.catalog import FAMILIES, Family, family_for, text_model_config
from lora_ablation.modules.dims import Dims, read_dims
from lora_ablation.modules.groups import BASE_GROUPS, expand_groups


@dataclass(frozen=True)
class Weight:
    name: str
    in_features: int
    out_features: int
    kind: Literal["module", "parameter"] = "module"
    experts: int = 0

    def lora_params(self, rank: int, dora: bool = False) -> int:
        per = rank * (self.in_features + self.out_features) + (self.out_features if dora else 0)
        return per * max(self.experts, 1)


@dataclass
class ModelInventory:
    model_type: str
    family: Family | None
    layers: int
    layers_path: str  # container of the decoder layers being adapted, e.g. model.language_model.layers
    weights: list[Weight]
    source: Literal["catalog", "module tree"]
    dims: Dims | None = None
    notes: list[str] = field(default_factory=list)

    def language_weights(self) -> list[Weight]:
        prefix = self.layers_path + "."
        return [w for w in self.weights if w.name.startswith(prefix)]


@dataclass
class Resolution:
    module_set: list[str]
    by_entry: dict[str, list[Weight]]  # each group or raw name of the set -> the weights it selects

    @property
    def weights(self) -> list[Weight]:
        seen: dict[str, Weight] = {}
        for items in self.by_entry.values():
            for weight in items:
                seen.setdefault(weight.name, weight)
        return sorted(seen.values(), key=lambda w: _natural_key(w.name))

    @property
    def target_modules(self) -> list[str]:
        return [w.name for w in self.weights if w.kind == "module"]

    @property
    def target_parameters(self) -> list[str]:
        return [w.name for w in self.weights if w.kind == "parameter"]

    def lora_params(self, rank: int, variant: str = "lora") -> int:
        return sum(w.lora_params(rank, dora=variant == "dora") for w in self.weights)


def in_layers(resolution: Resolution, inventory: ModelInventory, picked: list[int] | None) -> Resolution:
    """The resolution narrowed to the decoder layers `picked` (search.layers; None: every layer, unchanged).
    The planner and the trainer share it, so `plan` lists exactly the weights a trial adapts."""
    if picked is None:
        return resolution
    prefix = inventory.layers_path + "."
    keep = {f"{prefix}{index}" for index in picked}

    def chosen(name: str) -> bool:  # "model.layers.3.self_attn.o_proj" -> "model.layers.3"
        return name.startswith(prefix) and prefix + name[len(prefix) :].split(".", 1)[0] in keep

    by_entry = {entry: [w for w in weights if chosen(w.name)] for entry, weights in resolution.by_entry.items()}
    return Resolution(resolution.module_set, by_entry)


class ModuleResolutionError(ValueError):
    """A group or raw module name that selects nothing in this model."""


def catalog_inventory(config: Mapping[str, Any]) -> ModelInventory:
    """The inventory the catalog predicts for a config.json (raises UnsupportedModel if unknown)."""
    text_config, layers_path = text_model_config(config)
    family = family_for(str(text_config.get("model_type", "")))
    dims = read_dims(text_config)
    weights = [
        Weight(
            f"{layers_path}.{layer}.{target.path}",
            target.in_features(dims),
            target.out_features(dims),
            target.kind,
            target.experts(dims) if target.experts else 0,
        )
        for layer in range(dims.layers)
        for target in family.targets()
    ]
    notes = [family.note] if family.note else []
    return ModelInventory(
        str(config.get("model_type", "")), family, dims.layers, layers_path, weights, "catalog", dims, notes
    )


def guess_family(weights: Iterable[Weight], layers_path: str) -> Family | None:
    """For a model_type the catalog does not list: the family whose layout covers the most weights."""
    suffixes = {
        re.sub(r"^\d+\.", "", w.name[len(layers_path) + 1 :]) for w in weights if w.name.startswith(layers_path + ".")
    }
    best, best_hits = None, 0
    for family in FAMILIES:
        paths = {t.path for group in family.groups.values() for t in group}
        hits = len(paths & suffixes)
        if hits == len(paths) and hits > best_hits:
            best, best_hits = family, hits
    return best


def resolve_module_set(inventory: ModelInventory, module_set: list[str]) -> Resolution:
    """Map each group / raw name of a module set to exact weight names; raise naming what the model has."""
    groups, raw_names = expand_groups(module_set)
    candidates = inventory.language_weights()
    by_entry: dict[str, list[Weight]] = {}
    problems: list[str] = []
    for group in groups:
        if inventory.family is None:
            # Outside the catalog a group name can still be a real leaf name (o_proj on most decoders).
            same_name = [w for w in candidates if w.name.endswith("." + group)]
            if same_name:
                by_entry[group] = same_name
            else:
                problems.append(
                    f"group {group!r}: model_type {inventory.model_type!r} is not in the catalog; list raw module names"
                )
            continue
        paths = {t.path for t in inventory.family.groups.get(group, ())}
        selected = [w for w in candidates if _layer_suffix(w.name, inventory.layers_path) in paths]
        if selected:
            by_entry[group] = selected
        else:
            problems.append(f"group {group!r} matches no weight in this {inventory.model_type} model")
    for raw in raw_names:
        selected = [w for w in candidates if w.name == raw or w.name.endswith("." + raw)]
        if selected:
            by_entry[raw] = selected
        else:
            leaves = sorted({_layer_suffix(w.name, inventory.layers_path) for w in candidates})
            vocabulary = sorted(set(leaves) | {leaf.rsplit(".", 1)[-1] for leaf in leaves} | set(BASE_GROUPS))
            close = difflib.get_close_matches(raw, vocabulary, n=3)
            hint = f" (did you mean: {', '.join(close)})" if close else ""
            problems.append(f"module {raw!r} matches no weight in the language model{hint}")
    if problems:
        raise ModuleResolutionError(
            "; ".join(problems)
            + f". The model's adaptable weights are: {', '.join(compress_names(w.name for w in candidates))}"
        )
    return Resolution(list(module_set), by_entry)


def _layer_suffix(name: str, layers_path: str) -> str:
    """'model.layers.3.self_attn.q_proj' -> 'self_attn.q_proj'."""
    rest = name[len(layers_path) + 1 :] if name.startswith(layers_path + ".") else name
    return re.sub(r"^\d+\.", "", rest)


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def compress_names(names: Iterable[str]) -> list[str]:
    """['m.layers.0.q', 'm.layers.1.q'] -> ['m.layers.{0..1}.q'], for messages and tables."""
    buckets: dict[str, list[int]] = {}
    order: list[str] = []
    for name in names:
        match = re.search(r"\.(\d+)\.", name)
        key, index = (
            (name[: match.start()] + ".{}." + name[match.end() :], int(match.group(1))) if match else (name, -1)
        )
        if key not in buckets:
            buckets[key] = []
            order.append(key)
        buckets[key].append(index)
    out = []
    for key in order:
        indices = sorted(set(buckets[key]))
        if indices == [-1]:
            out.append(key)
        elif indices == list(range(indices[0], indices[-1] + 1)) and len(indices) > 1:
            out.append(key.replace("{}", f"{{{indices[0]}..{indices[-1]}}}"))
        else:
            out.append(key.replace("{}", "{" + ",".join(map(str, indices)) + "}"))
    return out
