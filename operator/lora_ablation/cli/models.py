"""`inspect-model`: a model's module groups, weight names and LoRA sizes."""

from __future__ import annotations

import argparse
import json
from typing import Any

from lora_ablation.api.base import SpecError
from lora_ablation.cli.manifests import checked_config
from lora_ablation.modules.inspect import inspect_inventory, inventory_for, module_tree_available
from lora_ablation.modules.inventory import compress_names
from lora_ablation.modules.model_config import ModelConfigUnavailable, load_model_config
from lora_ablation.summary.report import human_count, text_table


def cmd_inspect_model(args: argparse.Namespace) -> int:
    try:
        config, where = load_model_config(args.model)
    except ModelConfigUnavailable as error:
        raise SpecError([f"MODEL {args.model!r}: {error}"]) from None
    except ValueError as error:
        raise SpecError([f"MODEL {args.model!r}: config.json is not valid JSON ({error})"]) from None
    config = checked_config(config, f"MODEL {args.model!r}: {where}")
    try:
        report = inspect_inventory(inventory_for(config, args.source), args.rank)
    except (ValueError, KeyError) as error:  # UnsupportedModel, or a model_type transformers does not know
        first = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise SpecError([f"MODEL {args.model!r}: {first}"]) from None
    report["model"] = where
    if args.output == "json":
        print(json.dumps(report, indent=2))
        return 0
    _print_inspection(report)
    return 0


def _print_inspection(report: dict[str, Any]) -> None:
    print(f"model:   {report['model']}")
    print(
        f"family:  {report['family']} (model_type {report['modelType']}), "
        f"{report['layers']} layers under {report['layersPath']}"
    )
    if report["source"] == "module tree":
        why = ""
    elif module_tree_available():
        why = " (--source tree checks the real module tree)"
    else:
        why = " (install the trainer extra to check the real module tree)"
    print(f"source:  {report['source']}{why}")
    print("\nadaptable weights:")
    for item in report["linearModules"]:
        print(f"  {item['name']}  x{item['count']}")
    rows = [
        [
            g["group"],
            str(g["modules"]),
            human_count(g["loraParams"], missing="?"),
            g.get("error") or ", ".join(compress_names(g["names"]))[:100],
        ]
        for g in report["groups"]
    ]
    print()
    print(text_table(["GROUP", "MODULES", f"PARAMS@r{report['rank']}", "NAMES"], rows))
    for note in report["notes"]:
        print(f"note: {note}")


