"""The status as a JSON merge patch (RFC 7386) against what the object already holds: the status is patched only
when a pass changed something, and then only in the keys that changed."""

from __future__ import annotations

from typing import Any


def merge_patch(old: dict[str, Any], new: dict[str, Any], partial: bool = True) -> dict[str, Any]:
    """The merge patch turning `old` into `new`; {} when nothing changes. With `partial`, only the keys `new`
    names (a pass may report only its conditions); nested objects are replaced whole (a key they lost is
    deleted). A key set to None is a deletion (merge-patch null) and an absent key equals None, so a deleted key is
    not deleted again on every pass. Lists are replaced whole, as merge patches do."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if value is None:
            if before is not None:
                patch[key] = None
        elif isinstance(value, dict) and isinstance(before, dict):
            inner = merge_patch(before, value, partial=False)
            if inner:
                patch[key] = inner
        elif value != before:
            patch[key] = value
    if not partial:
        patch.update({k: None for k, v in old.items() if k not in new and v is not None})
    return patch


def apply_merge_patch(old: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 applied: what the API server stores after `patch` (used to keep the written status in memory)."""
    out = dict(old)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):  # merged into what is there, or into {} (nulls inside are dropped)
            out[key] = apply_merge_patch(out[key] if isinstance(out.get(key), dict) else {}, value)
        else:
            out[key] = value
    return out
