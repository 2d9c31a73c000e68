"""The preflight check the operator runs as a small CPU Job before any GPU trial: module sets resolve on
the real module tree (meta device, config and tokenizer only, no weights), every dataset parses, and a
chat-format dataset has a chat template to render it with.

It collects every problem instead of stopping at the first, writes preflight.json, and exits 42 when
anything is wrong, so the ablation fails with the whole list and no GPU Job is ever created.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from transformers import AutoProcessor, AutoTokenizer

from lora_ablation.api.trial import PreflightReport, PreflightSpec
from lora_ablation.modules.groups import module_set_label
from lora_ablation.modules.inventory import ModuleResolutionError, resolve_module_set
from lora_ablation.storage.open import open_store
from lora_ablation.storage.store import StorageAccessDenied, StorageUnavailable
from lora_ablation_trainer.data import chat_template_problem, load_examples
from lora_ablation_trainer.errors import PermanentTrialError, TransientTrialError, TrialError
from lora_ablation_trainer.module_tree import tree_inventory
from lora_ablation_trainer.sources import fetch_file, fetch_model
from lora_ablation_trainer.vision import image_problems, is_vision_language, with_image_uris

log = logging.getLogger(__name__)
REPORT = "preflight.json"


def check(spec: PreflightSpec, workdir: Path) -> PreflightReport:
    endpoint, region = spec.storage.endpoint, spec.storage.region
    report = PreflightReport(ok=True)
    try:
        model_dir = fetch_model(spec.base_model, workdir, endpoint, region, weights=False)
        inventory = tree_inventory(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        vision = is_vision_language(model_dir)
        if vision:  # its processor renders chat records with images (the tokenizer's template may not)
            tokenizer = AutoProcessor.from_pretrained(model_dir)
    except TransientTrialError:
        raise
    except (TrialError, OSError, ValueError) as error:
        return PreflightReport(ok=False, problems=[f"spec.baseModel.uri {spec.base_model.uri}: {error}"])
    for index, module_set in enumerate(spec.module_sets):
        try:
            report.modules[module_set_label(module_set)] = resolve_module_set(inventory, module_set).target_modules
        except ModuleResolutionError as error:
            report.problems.append(f"spec.search.moduleSets[{index}]: {error}")
    for index, dataset in enumerate(spec.datasets):
        parse_with = tokenizer
        if dataset.format == "chat":
            problem = chat_template_problem(tokenizer, dataset.name, [dataset.train, dataset.eval])
            if problem:  # reported once for the dataset; its records are still checked for every other problem
                report.problems.append(f"spec.datasets[{index}]: {problem}")
                parse_with = None
        for split in ("train", "eval"):
            uri = getattr(dataset, split)
            try:
                path = fetch_file(uri, workdir, endpoint, region)
                examples = with_image_uris(load_examples(path, dataset.format, parse_with), uri)
                report.records[f"{dataset.name}/{split}"] = len(examples)
                report.problems += _image_problems(examples, vision, index, split, workdir, endpoint, region)
            except TransientTrialError:
                raise
            except TrialError as error:
                report.problems.append(f"spec.datasets[{index}].{split}: {error}")
    report.ok = not report.problems
    return report


def _image_problems(examples, vision: bool, index: int, split: str, workdir: Path, endpoint, region) -> list[str]:
    """Every image a record names exists and opens; records with images need a vision-language model."""
    where = f"spec.datasets[{index}].{split}"
    with_images = next((e for e in examples if e.images), None)
    if with_images is None:
        return []
    if not vision:
        return [f"{where}: {with_images.where} has images, but the base model is text-only; use a vision-language "
                "base model (llava, qwen2-vl, gemma3, ...) or text-only records"]  # fmt: skip
    return [f"{where}: {problem}" for problem in image_problems(examples, workdir, endpoint, region)]


def run_preflight(spec: PreflightSpec, workdir: Path | None = None) -> PreflightReport:
    with tempfile.TemporaryDirectory(prefix="preflight-", dir=workdir) as tmp:
        report = check(spec, Path(tmp))
    try:
        open_store(spec.storage.uri, spec.storage.endpoint, spec.storage.region).write_json(REPORT, report.to_wire())
    except StorageUnavailable as error:
        raise TransientTrialError(str(error)) from None
    except StorageAccessDenied as error:
        raise PermanentTrialError(str(error)) from None
    for problem in report.problems:
        log.error("preflight: %s", problem)
    if not report.ok:
        raise PermanentTrialError(f"preflight found {len(report.problems)} problem(s)")
    log.info("preflight passed: %d module sets, %d dataset files", len(report.modules), len(report.records))
    return report
