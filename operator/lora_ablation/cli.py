"""`lora-ablation`: validate, plan, inspect models and print the CRD, all without a cluster."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from lora_ablation.api.base import SpecError
from lora_ablation.api.crdgen import render_crd
from lora_ablation.api.manifest import load_ablation, read_manifest
from lora_ablation.modules.catalog import UnsupportedModel
from lora_ablation.modules.inspect import inspect_inventory, inventory_for, module_tree_available
from lora_ablation.modules.inventory import ModelInventory, ModuleResolutionError, catalog_inventory, compress_names
from lora_ablation.modules.model_config import ModelConfigUnavailable, load_model_config
from lora_ablation.planning import guardrails, suggest
from lora_ablation.planning.memory import GIB, MemoryReport, plan_memory
from lora_ablation.planning.placement import multi_node_line, multi_node_placement
from lora_ablation.planning.plan import LayerSelectionError, PlannedTrial, plan_trials
from lora_ablation.planning.sharding import plan_lines as sharding_lines
from lora_ablation.run.schedule import describe as describe_schedule
from lora_ablation.summary.report import human_count, text_table

EXIT_INVALID = 2  # bad input: the message names the file and the field


def cmd_crd(args: argparse.Namespace) -> int:
    sys.stdout.write(render_crd())
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Every file is checked and reported, good or bad; exit 2 when any one is bad."""
    bad = 0
    for path in args.files:
        try:
            manifest = read_manifest(path)
        except SpecError as error:
            bad += 1
            for problem in error.problems:
                print(f"error: {problem}", file=sys.stderr)
            continue
        for ablation in manifest.ablations:
            print(f"{path}: {ablation.metadata.name} is valid")
            for line in guardrails.render(guardrails.check(ablation.spec, guardrails.local_sizes(ablation.spec))):
                print(line)  # advice, never a failure: the exit code stays 0
        for note in manifest.skipped:
            print(f"note: {note}")
    if bad:
        print(f"{bad} of {len(args.files)} file(s) invalid", file=sys.stderr)
        return EXIT_INVALID
    return 0


def _plan_inventory(config: dict[str, Any]) -> ModelInventory:
    """The catalog (instant, same answer as the operator); the real module tree for architectures the
    catalog does not list, when the trainer extra is installed."""
    try:
        return catalog_inventory(config)
    except UnsupportedModel:
        if not module_tree_available():
            raise
        try:
            return inventory_for(config, "tree")
        except (ValueError, KeyError) as error:  # transformers does not know this model_type either
            first = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            raise UnsupportedModel(f"model_type {config.get('model_type')!r}: {first}") from None


def _checked_config(config: Any, where: str) -> dict[str, Any]:
    """A model config the resolvers can use: a JSON object with a model_type, or a SpecError saying so."""
    if not isinstance(config, dict):
        raise SpecError([f"{where}: expected a JSON object (a model's config.json), got {type(config).__name__}"])
    if not isinstance(config.get("model_type"), str):
        raise SpecError([f'{where}: no "model_type" field; expected a Hugging Face model\'s config.json'])
    return config


def _read_config_file(path: str, option: str) -> dict[str, Any]:
    """config.json named on the command line: unreadable or not JSON is bad input naming the file."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise SpecError([f"{option} {path}: cannot read ({reason}); pass a model's config.json"]) from None
    try:
        config = json.loads(text)
    except ValueError as error:
        raise SpecError([f"{option} {path}: not valid JSON ({error}); pass a model's config.json"]) from None
    return _checked_config(config, f"{option} {path}")


def _target_count(trial: PlannedTrial) -> str:
    if trial.spec.is_baseline:
        return "-"
    if trial.spec.target_modules is None:
        return "?"
    return str(len(trial.spec.target_modules) + len(trial.spec.target_parameters or []))


def _runs(plan, name: str) -> str | None:
    decision = plan.sharding.get(name)
    return f"{decision.describe()}: {decision.reason}" if decision else None


def cmd_plan(args: argparse.Namespace) -> int:
    ablation = load_ablation(args.file)
    meta = ablation.metadata
    given = (_read_config_file(args.model_config, "--model-config"), args.model_config) if args.model_config else None
    try:
        plan, source_note, memory = _planned(ablation, given)
    except SpecError as error:
        raise SpecError([f"{args.file}: {p}" for p in error.problems]) from None
    if args.output == "json":
        out = {
            "ablation": meta.name,
            "namespace": meta.namespace,
            "resolution": source_note,
            "trials": [
                {
                    "name": t.name,
                    "dataset": t.spec.dataset.name,
                    "config": t.label,
                    "modules": t.spec.modules,
                    "rank": t.spec.rank,
                    "alpha": t.spec.alpha,
                    "variant": t.spec.variant,
                    "seed": t.seed,
                    "layers": t.spec.layers,
                    "targetModules": t.spec.target_modules,
                    "targetParameters": t.spec.target_parameters,
                    "estimatedParams": t.estimated_params,
                    "estimatedMemoryBytes": memory.estimates[t.name].total if t.name in memory.estimates else None,
                    "sharding": t.spec.sharding or "none",
                    "runs": _runs(plan, t.name),
                    "resultsUri": t.spec.storage.uri,
                }
                for t in plan.trials
            ],
            "multiNode": multi_node_placement(ablation.spec.execution),
            "schedule": describe_schedule(meta.name, plan, ablation.spec),
            "gpuMemoryBytes": memory.gpu_bytes,
            "memoryWarnings": memory.warnings,
            "warnings": [vars(g) for g in guardrails.for_plan(ablation.spec, plan)],
        }
        print(json.dumps(out, indent=2))
        return 0
    seeds = ablation.spec.seeds
    rows = [
        [
            t.name,
            t.spec.dataset.name,
            "+".join(t.spec.modules) or "(none)",
            str(t.spec.rank),
            t.spec.variant,
            *([] if len(seeds) == 1 else ["-" if t.seed is None else str(t.seed)]),
            human_count(t.estimated_params, missing="?"),
            _target_count(t),
            f"{memory.estimates[t.name].total / GIB:.1f}Gi" if t.name in memory.estimates else "?",
        ]
        for t in plan.trials
    ]
    headers = ["TRIAL", "DATASET", "MODULES", "RANK", "VARIANT", *([] if len(seeds) == 1 else ["SEED"]), "PARAMS"]
    print(text_table([*headers, "TARGETS", "MEMORY"], rows))
    print(f"\n{len(plan.trials)} trials for {meta.namespace}/{meta.name}; {source_note}.")
    if line := multi_node_line(ablation.spec.execution):
        print(line)
    for line in describe_schedule(meta.name, plan, ablation.spec):
        print(line)
    for line in memory.lines():
        print(line)
    for line in sharding_lines(plan.trials, plan.sharding):
        print(line)
    warnings = guardrails.for_plan(ablation.spec, plan)
    if warnings:
        print(f"\n{len(warnings)} guardrail warning(s) (advice from the seed studies; the plan stands):")
        print("\n".join(guardrails.render(warnings)))
    return 0


def _planned(ablation, given: tuple[dict[str, Any], str] | None = None):
    """Plan an ablation, resolving modules when the model's config.json is readable from here."""
    spec, meta = ablation.spec, ablation.metadata
    inventory, source_note, config = None, "", {}
    try:
        if given:  # plan --model-config FILE
            config, where = given
        else:
            try:
                config, where = load_model_config(spec.base_model.uri, spec.base_model.revision, spec.storage.endpoint)
            except ValueError as error:  # a config.json that is not JSON
                raise SpecError(
                    [f"spec.baseModel.uri {spec.base_model.uri}: config.json is not valid JSON ({error})"]
                ) from None
            config = _checked_config(config, f"spec.baseModel.uri {spec.base_model.uri}: config.json")
        inventory = _plan_inventory(config)
        source_note = f"modules resolved by the {inventory.source} from {where}"
    except (ModelConfigUnavailable, UnsupportedModel) as error:
        source_note = f"modules not resolved ({error})"
    try:
        plan = plan_trials(meta.name, meta.namespace, spec, inventory, config if inventory else None)
    except ModuleResolutionError as error:
        raise SpecError([f"spec.search.moduleSets: {error}"]) from None
    except LayerSelectionError as error:  # already names spec.search.layers[i]
        raise SpecError([str(error)]) from None
    memory = plan_memory(plan, inventory, config, spec.execution) if inventory else MemoryReport({}, None, "", [])
    return plan, source_note, memory


def cmd_run(args: argparse.Namespace) -> int:
    from lora_ablation.local.runner import EXIT_INTERRUPTED, run_ablation, with_storage
    from lora_ablation.storage.store import StorageError

    ablation = load_ablation(args.file)
    base = ablation.spec.base_model.uri
    if base.startswith("file://") and not (Path(base[len("file://") :]) / "config.json").is_file():
        hint = " (build it with: python -m lora_ablation_trainer.quickstart examples)" if "tiny-llama" in base else ""
        raise SpecError([f"{args.file}: spec.baseModel.uri {base}: no config.json there{hint}"])
    # --store/--endpoint replace spec.storage before planning: every trial, the summary and the plots follow it.
    ablation = with_storage(ablation, args.store, args.endpoint)
    try:
        plan, _, _ = _planned(ablation)
    except SpecError as error:
        raise SpecError([f"{args.file}: {p}" for p in error.problems]) from None
    logs = Path(args.logs) / ablation.metadata.namespace / ablation.metadata.name
    try:
        report = run_ablation(
            ablation, plan, args.parallel or ablation.spec.execution.parallelism, logs,
            Path(args.plots) if args.plots else None, sys.stdout,
        )  # fmt: skip
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except StorageError as error:
        where = "--store" if args.store else f"{args.file}: spec.storage.uri"
        raise SpecError([f"{where} {ablation.spec.storage.uri}: {error}"]) from None
    if report.failed:
        print(f"\n{len(report.failed)} trial(s) failed; see the logs in {logs}", file=sys.stderr)
        return 1
    return 0


def _no_results(store: Any, uri: str, keys: list[str]) -> SpecError:
    """Why `report` found nothing: the location is missing, empty, or one level above the ablation."""
    from lora_ablation.storage.results import RESULT_FILE
    from lora_ablation.storage.store import LocalStore

    expected = (
        "pass one ablation's folder, <storage.uri>/<namespace>/<name> (e.g. file://ablation-results/default/quickstart)"
    )
    if isinstance(store, LocalStore) and not store.root.exists():
        return SpecError([f"URI {uri}: {store.root} does not exist; {expected}"])
    if isinstance(store, LocalStore) and not store.root.is_dir():
        return SpecError([f"URI {uri}: {store.root} is not a directory; {expected}"])
    if not keys:
        store.exists(RESULT_FILE)  # an S3 store checks its bucket here: a missing bucket raises StorageError
        return SpecError([f"URI {uri}: nothing stored under this location; {expected}"])
    deeper = sorted({key.rsplit("/", 2)[0] for key in keys if key.endswith("/" + RESULT_FILE) and key.count("/") >= 2})
    if deeper:
        found = ", ".join(f"{store.uri}/{prefix}" for prefix in deeper[:3]) + (" ..." if len(deeper) > 3 else "")
        return SpecError([f"URI {uri}: no trial results directly here, but below: {found}; pass one of those"])
    return SpecError([f"URI {uri}: no trial results (<trial>/{RESULT_FILE}) under this prefix; {expected}"])


def cmd_report(args: argparse.Namespace) -> int:
    from lora_ablation.storage.open import open_store
    from lora_ablation.storage.results import SUMMARY_FILE, read_all_results
    from lora_ablation.storage.store import StorageError
    from lora_ablation.summary.build import summarize
    from lora_ablation.summary.plots import write_plots
    from lora_ablation.summary.report import render_markdown, render_text

    try:
        store = open_store(args.uri, args.endpoint)
        results = read_all_results(store)
        if not results:
            raise _no_results(store, args.uri, store.list())
        previous = store.read_json(SUMMARY_FILE) if store.exists(SUMMARY_FILE) else {}
    except (StorageError, ValueError) as error:
        if isinstance(error, SpecError):
            raise
        raise SpecError([f"URI {args.uri}: {error}"]) from None
    tolerance = args.tolerance if args.tolerance is not None else previous.get("tolerance", 0.02)
    budget = previous.get("latencyBudgetMs")
    summary = summarize(results, results[0].ablation, results[0].namespace, tolerance, budget)
    if args.output == "json":
        print(json.dumps(summary.to_wire(), indent=2))
    elif args.output == "markdown":
        print(render_markdown(summary), end="")
    else:
        print(render_text(summary))
    if args.plots:
        for plot in write_plots(summary, Path(args.plots)):
            print(f"wrote {plot}", file=sys.stderr)
    return 0


def cmd_inspect_model(args: argparse.Namespace) -> int:
    try:
        config, where = load_model_config(args.model)
    except ModelConfigUnavailable as error:
        raise SpecError([f"MODEL {args.model!r}: {error}"]) from None
    except ValueError as error:
        raise SpecError([f"MODEL {args.model!r}: config.json is not valid JSON ({error})"]) from None
    config = _checked_config(config, f"MODEL {args.model!r}: {where}")
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
    print(
        f"source:  {report['source']}"
        + ("" if report["source"] == "module tree" else " (install the trainer extra to check the real module tree)")
    )
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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lora-ablation-operator")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lora-ablation",
        description="LoRA target-module and rank ablations without a cluster: validate and plan LoraAblation "
        "manifests, run one on this machine, report results from any store, inspect models, print the CRD.",
        epilog="Exit codes: 0 success; 1 `run` finished with failed trials; 2 bad input (the message names the file "
        "and the field or flag); 130 `run` interrupted (run it again to resume).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")

    run = command("run", "run the whole ablation on this machine (resumable; Ctrl-C keeps results)")
    run.add_argument("file", help="YAML file with one LoraAblation")
    run.add_argument(
        "--store",
        help="results store instead of spec.storage.uri: file://DIR, a local DIR or s3://bucket/prefix; every trial, "
        "summary.json and the plots go there",
    )
    run.add_argument("--endpoint", help="S3 endpoint URL for the store (default: spec.storage.endpoint, "
                     "then $AWS_ENDPOINT_URL_S3)")  # fmt: skip
    run.add_argument("--parallel", type=int, help="trials at once (default: spec.execution.parallelism; one GPU each)")
    run.add_argument("--logs", default=".lora-ablation/logs", help="per-trial logs (default: .lora-ablation/logs)")
    run.add_argument("--plots", help="where the PNGs go (default: next to summary.json)")
    run.set_defaults(func=cmd_run)
    report = command("report", "summarise an ablation's results from any store")
    report.add_argument("uri", help="the ablation's folder: <storage.uri>/<namespace>/<name>, file:// or s3://")
    report.add_argument("-o", "--output", choices=["table", "markdown", "json"], default="table")
    report.add_argument("--plots", help="write pareto.png and heatmap.png into this folder")
    report.add_argument("--tolerance", type=float, help="selection tolerance (default: the stored summary's, or 0.02)")
    report.add_argument("--endpoint", help="S3 endpoint URL (default: $AWS_ENDPOINT_URL_S3)")
    report.set_defaults(func=cmd_report)
    validate = command("validate", "check LoraAblation manifests, every file (exit 2 naming each bad field)")
    validate.add_argument("files", nargs="+", metavar="file", help="YAML files (several documents and kind: List ok)")
    validate.set_defaults(func=cmd_validate)
    plan = command("plan", "expand a LoraAblation into its trials, with resolved modules and parameter counts")
    plan.add_argument("file", help="YAML file with one LoraAblation")
    plan.add_argument("-o", "--output", choices=["table", "json"], default="table")
    plan.add_argument(
        "--model-config", help="config.json to resolve modules with (instead of reading the base model's)"
    )
    plan.set_defaults(func=cmd_plan)
    inspect = command("inspect-model", "show a model's module groups, weight names and LoRA sizes")
    inspect.add_argument("model", help="local folder with config.json, or a hub id")
    inspect.add_argument("--rank", type=int, default=16, help="LoRA rank for the parameter counts (default: 16)")
    inspect.add_argument(
        "--source",
        choices=["auto", "tree", "catalog"],
        default="auto",
        help="module tree (needs the trainer extra) or catalog",
    )
    inspect.add_argument("-o", "--output", choices=["table", "json"], default="table")
    inspect.set_defaults(func=cmd_inspect_model)
    suggest.add_parser(command)
    crd = command("crd", "print the LoraAblation CRD generated from the API models")
    crd.set_defaults(func=cmd_crd)
    return parser


def main(argv: list[str] | None = None) -> int:
    if hasattr(signal, "SIGPIPE"):  # `lora-ablation plan -o json | head` should not print a traceback
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SpecError as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())
