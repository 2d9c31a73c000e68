"""`run` and `report`: an ablation run on this machine, and its results summarised from any store."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lora_ablation.api.base import SpecError
from lora_ablation.api.manifest import load_ablation
from lora_ablation.cli.manifests import planned


def cmd_run(args: argparse.Namespace) -> int:
    from lora_ablation.local.runner import EXIT_INTERRUPTED, run_ablation, with_storage
    from lora_ablation.storage.store import StorageError

    ablation = load_ablation(args.file)
    base = ablation.spec.base_model.uri
    if base.startswith("file://") and not (Path(base[len("file://") :]) / "config.json").is_file():
        hint = " (build it with: python -m lora_ablation_demo.quickstart examples)" if "tiny-llama" in base else ""
        raise SpecError([f"{args.file}: spec.baseModel.uri {base}: no config.json there{hint}"])
    # --store/--endpoint replace spec.storage before planning: every trial, the summary and the plots follow it.
    ablation = with_storage(ablation, args.store, args.endpoint)
    try:
        plan, _, _ = planned(ablation)
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


def _recorded_summary(store, uri: str):
    """The summary.json the ablation wrote, as a Summary: the eliminations, skipped trials and costs it recorded
    (the result files alone do not tell them), its tolerance and latency budget. One that cannot be read or does
    not validate is said and left out: the leaderboard comes from the result files either way."""
    from pydantic import ValidationError

    from lora_ablation.storage.results import SUMMARY_FILE
    from lora_ablation.storage.store import StorageError
    from lora_ablation.summary.models import Summary

    try:
        if not store.exists(SUMMARY_FILE):
            return None
        return Summary.model_validate(store.read_json(SUMMARY_FILE))
    except (StorageError, ValueError) as error:  # ValidationError and JSON errors are ValueErrors
        problem = f"{error.error_count()} problem(s)" if isinstance(error, ValidationError) else str(error)[:200]
        print(f"note: {uri}/{SUMMARY_FILE} is not a valid summary ({problem}): the eliminations and costs it may "
              "record are not shown", file=sys.stderr)  # fmt: skip
        return None


def cmd_report(args: argparse.Namespace) -> int:
    from lora_ablation.storage.open import open_store, plain_path_uri
    from lora_ablation.storage.results import read_all_results
    from lora_ablation.storage.store import StorageError
    from lora_ablation.summary.build import summarize
    from lora_ablation.summary.plots import PlotsUnavailable, write_plots
    from lora_ablation.summary.report import render_markdown, render_text
    from lora_ablation.summary.stages import with_recorded_stages

    try:
        store = open_store(plain_path_uri(args.uri), args.endpoint, local=True)
        results = read_all_results(store)
        if not results:
            raise _no_results(store, args.uri, store.list())
    except (StorageError, ValueError) as error:
        if isinstance(error, SpecError):
            raise
        raise SpecError([f"URI {args.uri}: {error}"]) from None
    recorded = _recorded_summary(store, args.uri)
    tolerance = args.tolerance if args.tolerance is not None else recorded.tolerance if recorded else 0.02
    budget = recorded.latency_budget_ms if recorded else None
    summary = summarize(results, results[0].ablation, results[0].namespace, tolerance, budget)
    if recorded is not None:
        summary = with_recorded_stages(summary, recorded)
    if args.output == "json":
        print(json.dumps(summary.to_wire(), indent=2))
    elif args.output == "markdown":
        print(render_markdown(summary), end="")
    else:
        print(render_text(summary))
    if args.plots:
        try:
            plots = write_plots(summary, Path(args.plots))
        except PlotsUnavailable as error:  # the summary above is printed; the flag cannot be honoured
            raise SpecError([f"--plots {args.plots}: {error}"]) from None
        for plot in plots:
            print(f"wrote {plot}", file=sys.stderr)
    return 0


