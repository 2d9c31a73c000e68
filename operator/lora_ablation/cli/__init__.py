"""`lora-ablation`: validate, plan, inspect models and print the CRD, all without a cluster."""

from __future__ import annotations

import argparse
import signal
import sys

from lora_ablation.api.base import SpecError
from lora_ablation.api.crdgen import render_crd
from lora_ablation.cli.manifests import EXIT_INVALID, cmd_plan, cmd_validate
from lora_ablation.cli.models import cmd_inspect_model
from lora_ablation.cli.results import cmd_report, cmd_run
from lora_ablation.planning import suggest

__all__ = ["EXIT_INVALID", "build_parser", "main"]


def cmd_crd(args: argparse.Namespace) -> int:
    sys.stdout.write(render_crd())
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lora-ablation-operator")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _positive_int(text: str) -> int:
    """--parallel: a count of trials at once, 1 or more (argparse names the flag when this refuses)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of trials at once (got {text!r})") from None
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"expected 1 or more trials at once (got {value}); leave the flag out to use spec.execution.parallelism"
        )
    return value


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
    run.add_argument("--parallel", type=_positive_int,
                     help="trials at once, 1 or more (default: spec.execution.parallelism; one GPU each)")  # fmt: skip
    run.add_argument("--logs", default=".lora-ablation/logs", help="per-trial logs (default: .lora-ablation/logs)")
    run.add_argument("--plots", help="where the PNGs go (default: next to summary.json)")
    run.set_defaults(func=cmd_run)
    report = command("report", "summarise an ablation's results from any store")
    report.add_argument(
        "uri", help="the ablation's folder: <storage.uri>/<namespace>/<name>, as a local DIR, file:// or s3://"
    )
    report.add_argument("-o", "--output", choices=["table", "markdown", "json"], default="table")
    report.add_argument("--plots", help="write pareto.png, heatmap.png, effects.png and curves.png into this folder")
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


def console_main() -> int:
    """The `lora-ablation` command: `main` as a process of its own."""
    # `lora-ablation plan -o json | head` should end quietly, as a Unix filter does, not print a traceback. Only
    # here, where this is the whole process: in a caller's process (a test, a notebook) the default disposition
    # would let any write to a closed socket kill that process with no message.
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    return main()


def main(argv: list[str] | None = None) -> int:
    """Run one command in this process; it leaves the process's signal handling as it found it."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SpecError as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_INVALID


