"""Logical module groups and how a user's module set is normalised. Pure data, no model needed."""

from __future__ import annotations

import re

# The four groups of the seed study, plus three conveniences built from them.
BASE_GROUPS: tuple[str, ...] = ("qkv", "o_proj", "fc1", "fc2")
COMPOSITE_GROUPS: dict[str, tuple[str, ...]] = {
    "attn": ("qkv", "o_proj"),
    "mlp": ("fc1", "fc2"),
    "all": BASE_GROUPS,
}
LOGICAL_GROUPS: tuple[str, ...] = BASE_GROUPS + tuple(COMPOSITE_GROUPS)

GROUP_HELP: dict[str, str] = {
    "qkv": "query/key/value projections (fused qkv_proj, query_key_value, c_attn or Wqkv where the model fuses them)",
    "o_proj": "attention output projection (o_proj, dense, attn.c_proj, out_proj)",
    "fc1": "feed-forward input projection(s) (gate_proj+up_proj, gate_up_proj, fc1, dense_h_to_4h, mlp.c_fc)",
    "fc2": "feed-forward output projection (down_proj, fc2, dense_4h_to_h, mlp.c_proj)",
    "attn": "qkv + o_proj",
    "mlp": "fc1 + fc2",
    "all": "qkv + o_proj + fc1 + fc2",
}

# A raw module name is a dotted Python identifier path matched as a suffix of the module's full name
# ("q_proj", "attn.c_proj"). Anything else (dashes, spaces, globs) is almost certainly a typo.
RAW_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


def is_group(name: str) -> bool:
    return name in LOGICAL_GROUPS


def expand_groups(names: list[str] | tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Split a module set into (base groups, raw names), composites expanded, order canonical."""
    groups: set[str] = set()
    raw: list[str] = []
    for name in names:
        if name in COMPOSITE_GROUPS:
            groups.update(COMPOSITE_GROUPS[name])
        elif name in BASE_GROUPS:
            groups.add(name)
        elif name not in raw:
            raw.append(name)
    return [g for g in BASE_GROUPS if g in groups], sorted(raw)


def canonical_module_set(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The order-free identity of a module set: ['fc2', 'o_proj'] and ['o_proj', 'fc2'] are one set,
    and ['attn'] equals ['qkv', 'o_proj']."""
    groups, raw = expand_groups(names)
    if set(groups) == set(BASE_GROUPS):
        groups = ["all"]
    return tuple(groups) + tuple(raw)


def module_set_label(names: list[str] | tuple[str, ...]) -> str:
    """Short human label: 'o_proj+fc2', 'all', 'base' for the no-adapter baseline."""
    canonical = canonical_module_set(names)
    return "+".join(canonical) if canonical else "base"


def validate_module_name(name: str) -> str | None:
    """None when the name is a known group or a plausible raw module name, else the problem."""
    if is_group(name):
        return None
    if not RAW_MODULE_NAME.fullmatch(name):
        return (
            f"{name!r} is neither a module group ({', '.join(LOGICAL_GROUPS)}) nor a plausible module "
            "name (a dotted identifier such as 'q_proj' or 'attn.c_proj')"
        )
    return None
