"""Deterministic trial names: the same trial configuration always gets the same name, so a restart,
a re-apply or a duplicate event can never create a second Job for one trial."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

MAX_NAME = 63  # a Job name is also the value of its pods' job-name label
HASH_CHARS = 8


def config_hash(identity: Any) -> str:
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_CHARS]


def _slug(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", text.lower())).strip("-")


def trial_name(ablation: str, readable: str, identity: Any) -> str:
    """'<ablation>-<readable>-<hash>', trimmed to a DNS-1123 label of at most 63 characters.

    The readable part is for people scanning `kubectl get jobs`; uniqueness comes from the hash of the
    full identity, so trimming the readable part never makes two trials collide.
    """
    suffix = "-" + config_hash(identity)
    head = _slug(f"{ablation}-{readable}")[: MAX_NAME - len(suffix)].rstrip("-")
    return head + suffix
