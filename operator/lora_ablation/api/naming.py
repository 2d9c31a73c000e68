"""Every name and label value the project puts into Kubernetes comes from here: deterministic (the same
trial configuration always gets the same name, so a restart, a re-apply or a duplicate event can never
create a second Job for one trial), at most 63 characters, DNS-1123, readable parts trimmed before the hash.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

MAX_NAME = 63  # a Job name is also the value of its pods' job-name label
HASH_CHARS = 8
MIN_PART = 6  # a trimmed readable part keeps at least this much before parts of higher priority are cut
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def config_hash(identity: Any) -> str:
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_CHARS]


def _slug(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", text.lower())).strip("-")


def _trim(part: str, size: int) -> str:
    return part[:size].rstrip("-")


def bounded_name(parts: list[str], identity: Any, trim_order: list[int] | None = None) -> str:
    """'<part>-<part>-...-<hash>': a DNS-1123 label of at most 63 characters.

    Uniqueness comes from the hash of the full identity, so trimming readable parts never makes two names
    collide. When the parts do not fit, they are trimmed in `trim_order` (indexes, first trimmed first;
    default: left to right), each first down to MIN_PART characters and then, only if still needed, further,
    so the parts trimmed last (the trial's module set, rank and variant) stay readable longest. A name that
    fits is never changed, so names stay stable as this function learns new tricks.
    """
    suffix = "-" + config_hash(identity)
    budget = MAX_NAME - len(suffix)
    slugs = [s for s in (_slug(p) for p in parts) if s]
    order = [i for i in (trim_order if trim_order is not None else range(len(slugs))) if i < len(slugs)]
    order += [i for i in range(len(slugs)) if i not in order]

    def length() -> int:
        return sum(len(s) for s in slugs if s) + max(0, sum(1 for s in slugs if s) - 1)

    for floor in (MIN_PART, 0):
        for index in order:
            excess = length() - budget
            if excess <= 0:
                break
            slugs[index] = _trim(slugs[index], max(floor, len(slugs[index]) - excess))
    head = "-".join(s for s in slugs if s)
    return (head + suffix) if head else suffix[1:]


def trial_name(ablation: str, dataset: str, config: list[str], identity: Any) -> str:
    """'<ablation>-<dataset>-<config...>-<hash>'. Trimmed first: the ablation name, then the dataset, then
    the config parts (module set, rank, variant) from the left, so the variant stays readable longest."""
    return bounded_name([ablation, dataset, *config], identity)


def label_value(text: str) -> str:
    """`text` when it is a valid label value, else a readable prefix and a hash of the whole (<= 63 chars)."""
    if len(text) <= MAX_NAME and LABEL_VALUE.fullmatch(text):
        return text
    head = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[: MAX_NAME - HASH_CHARS - 1]
    head = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", head)
    digest = hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]
    return f"{head}-{digest}" if head else digest
