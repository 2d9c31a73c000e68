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


def _fitted(parts: list[str], identity: Any, trim_order: list[int] | None = None) -> tuple[list[str], str]:
    """The readable parts as bounded_name trims them (empty parts dropped first), and the hash suffix."""
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
    return slugs, suffix


def bounded_name(parts: list[str], identity: Any, trim_order: list[int] | None = None) -> str:
    """'<part>-<part>-...-<hash>': a DNS-1123 label of at most 63 characters.

    Uniqueness comes from the hash of the full identity, so trimming readable parts never makes two names
    collide. When the parts do not fit, they are trimmed in `trim_order` (indexes, first trimmed first;
    default: left to right), each first down to MIN_PART characters and then, only if still needed, further,
    so the parts trimmed last (the trial's module set, rank and variant) stay readable longest. A name that
    fits is never changed, so names stay stable as this function learns new tricks.
    """
    slugs, suffix = _fitted(parts, identity, trim_order)
    head = "-".join(s for s in slugs if s)
    return (head + suffix) if head else suffix[1:]


def trial_name(ablation: str, dataset: str, config: list[str], identity: Any) -> str:
    """'<ablation>-<dataset>-<config...>-<hash>'. Trimmed first: the ablation name, then the dataset, then
    the config parts (module set, rank, variant) from the left, so the variant stays readable longest."""
    return bounded_name([ablation, dataset, *config], identity)


def trial_names(ablation: str, trials: list[tuple[str, list[str], Any]]) -> list[str]:
    """trial_name for each (dataset, config, identity) of one ablation, with one spelling of the ablation (and of
    each dataset) in all of them: when a long configuration trims the prefix, every trial gets the same trim, so
    `kubectl get jobs | grep llama-stud` finds them all. An ablation none of whose names needs trimming keeps
    exactly trial_name's names."""
    ablation_part, dataset_parts = _slug(ablation), {d: _slug(d) for d, _, _ in trials}
    names: list[str] = []
    for _ in range(8):  # lengths only shrink, so this settles in a pass or two
        fitted = [_fitted([ablation_part, dataset_parts[d], *config], identity) for d, config, identity in trials]
        names = [("-".join(s for s in slugs if s) + suffix) for slugs, suffix in fitted]
        ablation_lengths = {len(slugs[0]) for slugs, _ in fitted}
        dataset_lengths = {d: {len(f[0][1]) for f, (dd, _, _) in zip(fitted, trials, strict=True) if dd == d}
                           for d in dataset_parts}  # fmt: skip
        if len(ablation_lengths) <= 1 and all(len(lengths) == 1 for lengths in dataset_lengths.values()):
            return names
        if min(ablation_lengths) == 0 or any(min(lengths) == 0 for lengths in dataset_lengths.values()):
            return names  # a part trimmed away entirely: no prefix left to keep common
        ablation_part = _trim(ablation_part, min(ablation_lengths))
        dataset_parts = {d: _trim(part, min(dataset_lengths[d])) for d, part in dataset_parts.items()}
    return names


def label_value(text: str) -> str:
    """`text` when it is a valid label value, else a readable prefix and a hash of the whole (<= 63 chars)."""
    if len(text) <= MAX_NAME and LABEL_VALUE.fullmatch(text):
        return text
    head = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[: MAX_NAME - HASH_CHARS - 1]
    head = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", head)
    digest = hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]
    return f"{head}-{digest}" if head else digest
