"""Read LoraAblation manifests from YAML files (one or many documents), errors naming file and field."""

from __future__ import annotations

from pathlib import Path

import yaml

from lora_ablation.api.base import KIND, SpecError
from lora_ablation.api.resource import LoraAblation, parse_ablation


def load_ablations(path: str | Path) -> list[LoraAblation]:
    """Every LoraAblation in a YAML file; other kinds (Secrets, ConfigMaps) in the same file are skipped."""
    path = Path(path)
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except OSError as error:
        raise SpecError([f"{path}: cannot read ({error.strerror or error})"]) from None
    except yaml.YAMLError as error:
        raise SpecError([f"{path}: not valid YAML ({error})"]) from None
    ablations, problems = [], []
    for index, document in enumerate(documents):
        if isinstance(document, dict) and document.get("kind") not in (None, KIND):
            continue
        try:
            ablations.append(parse_ablation(document))
        except SpecError as error:
            where = f"{path}" + (f" (document {index + 1})" if len(documents) > 1 else "")
            problems.extend(f"{where}: {p}" for p in error.problems)
    if problems:
        raise SpecError(problems)
    if not ablations:
        raise SpecError([f"{path}: no {KIND} found"])
    return ablations


def load_ablation(path: str | Path) -> LoraAblation:
    ablations = load_ablations(path)
    if len(ablations) > 1:
        raise SpecError([f"{path}: holds {len(ablations)} {KIND}s; expected one"])
    return ablations[0]
