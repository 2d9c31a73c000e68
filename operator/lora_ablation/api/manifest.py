"""Read LoraAblation manifests from YAML files, errors naming file, document and field.

A file may hold several YAML documents and lists (`kind: List` or `LoraAblationList`, as `kubectl get -o yaml`
writes them); every item is read. Documents of other kinds (a Secret next to the ablation) are skipped and
reported as such; a kind that looks like a misspelt LoraAblation, or any kind of this API group, is an error.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lora_ablation.api.base import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, SpecError
from lora_ablation.api.resource import LoraAblation, parse_ablation

LIST_KINDS = ("List", f"{KIND}List")


class KubeYamlLoader(yaml.SafeLoader):
    """YAML as kubectl reads it: PyYAML's YAML 1.1 floats need a dot (`2e-4` would be a string), Kubernetes'
    parser takes `2e-4` and `1e3` as numbers. Strict typing (parse_ablation) would refuse what kubectl accepts."""


KubeYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"), list("-+0123456789")
)
_OUR_NAMES = {KIND.lower(), PLURAL, SINGULAR, *SHORT_NAMES}


@dataclass
class Manifest:
    path: Path
    ablations: list[LoraAblation] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "<file> (document 2): kind Secret, not a LoraAblation"


def _meant_ours(document: dict[str, Any]) -> bool:
    """A document whose kind is wrong but that was clearly written for this API: same group, or a near miss."""
    api_version, kind = document.get("apiVersion"), document.get("kind")
    if isinstance(api_version, str) and api_version.split("/")[0] == GROUP:
        return True
    if not isinstance(kind, str):
        return True  # let the model say what is wrong with it
    lowered = kind.lower()
    return lowered in _OUR_NAMES or bool(difflib.get_close_matches(lowered, [KIND.lower()], n=1, cutoff=0.75))


def _entries(path: Path, documents: list[Any], problems: list[str]) -> list[tuple[str, Any]]:
    """(where, document) for every document and every item of a list document, `where` naming the file."""
    numbered = [(i, d) for i, d in enumerate(documents, start=1) if d is not None]
    entries: list[tuple[str, Any]] = []
    for number, document in numbered:
        where = f"{path} (document {number})" if len(numbered) > 1 else str(path)
        if isinstance(document, dict) and document.get("kind") in LIST_KINDS:
            items = document.get("items")
            if not isinstance(items, list):
                problems.append(f"{where}: kind {document['kind']} needs a list of objects under `items`")
                continue
            inside = f"{path} (document {number}, " if len(numbered) > 1 else f"{path} ("
            entries.extend((f"{inside}items[{index}])", item) for index, item in enumerate(items))
        else:
            entries.append((where, document))
    return entries


def read_manifest(path: str | Path) -> Manifest:
    """Every LoraAblation in a YAML file, plus a note for each document of another kind that was skipped."""
    path = Path(path)
    try:
        documents = list(yaml.load_all(path.read_text(), Loader=KubeYamlLoader))
    except OSError as error:
        raise SpecError([f"{path}: cannot read ({error.strerror or error})"]) from None
    except yaml.YAMLError as error:
        raise SpecError([f"{path}: not valid YAML ({error})"]) from None
    manifest, problems = Manifest(path), []
    for where, document in _entries(path, documents, problems):
        kind = document.get("kind") if isinstance(document, dict) else None
        if isinstance(document, dict) and kind not in (None, KIND):
            if _meant_ours(document):
                problems.append(f"{where}: kind {kind!r} is not {KIND}; expected `kind: {KIND}` (check the spelling)")
            else:
                manifest.skipped.append(f"{where}: kind {kind}, not a {KIND}: skipped")
            continue
        try:
            manifest.ablations.append(parse_ablation(document))
        except SpecError as error:
            problems.extend(f"{where}: {p}" for p in error.problems)
    if problems:
        raise SpecError(problems)
    if not manifest.ablations:
        kinds = f" (it holds {len(manifest.skipped)} document(s) of other kinds)" if manifest.skipped else ""
        raise SpecError([f"{path}: no {KIND} found{kinds}; expected a document with `kind: {KIND}`"])
    return manifest


def load_ablations(path: str | Path) -> list[LoraAblation]:
    """Every LoraAblation in a YAML file; other kinds (Secrets, ConfigMaps) in the same file are skipped."""
    return read_manifest(path).ablations


def load_ablation(path: str | Path) -> LoraAblation:
    ablations = load_ablations(path)
    if len(ablations) > 1:
        raise SpecError([f"{path}: holds {len(ablations)} {KIND}s; expected one"])
    return ablations[0]
