"""`python -m lora_ablation_trainer --trial FILE` (or the JSON in $LORA_ABLATION_TRIAL): run one trial.
`--trials FILE` (or $LORA_ABLATION_TRIALS): run a TrialBatch on one loaded base model; a trial that fails for
good leaves failure.json and the others go on.
`--preflight FILE` (or $LORA_ABLATION_PREFLIGHT): check an ablation's modules and data before any GPU is used.

Exit codes: 0 done (or already done; for a batch: every trial done or failed for good), 42 permanent error
(do not retry), 75 transient error (retry).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from lora_ablation.api.base import format_validation_error
from lora_ablation.api.contract import PREFLIGHT_ENV, TERMINATION_LOG, TERMINATION_LOG_ENV, TRIAL_ENV, TRIALS_ENV
from lora_ablation.api.trial import PreflightSpec, TrialBatch, TrialSpec
from lora_ablation_trainer.errors import EXIT_OK, EXIT_PERMANENT, TrialError

log = logging.getLogger("lora_ablation_trainer")


def _load(model: type, path: str | None, env: str, flag: str):
    if path:
        try:
            raw = Path(path).read_text()
        except OSError as error:
            raise TrialError(f"{flag} {path}: cannot read ({error.strerror or error})") from None
        origin = path
    elif os.environ.get(env):
        raw, origin = os.environ[env], f"${env}"
    else:
        raise TrialError(f"nothing to do: pass {flag} FILE or set {env}")
    try:
        return model.model_validate(json.loads(raw))
    except json.JSONDecodeError as error:
        raise TrialError(f"{origin}: not valid JSON ({error.msg} at line {error.lineno})") from None
    except ValidationError as error:
        raise TrialError(f"{origin}: " + "; ".join(format_validation_error(error))) from None


def load_trial(path: str | None) -> TrialSpec:
    return _load(TrialSpec, path, TRIAL_ENV, "--trial")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_ablation_trainer", description=__doc__)
    parser.add_argument("--trial", help=f"TrialSpec JSON file (default: ${TRIAL_ENV})")
    parser.add_argument("--trials", help=f"TrialBatch JSON file (default: ${TRIALS_ENV})")
    parser.add_argument("--preflight", help=f"PreflightSpec JSON file (default: ${PREFLIGHT_ENV})")
    parser.add_argument("--workdir", help="scratch space for downloads (default: the system temp dir)")
    args = parser.parse_args(argv)
    # Under torchrun every rank writes to the pod's one log: each line says which rank wrote it.
    rank = f"[rank {os.environ.get('RANK', '?')}] " if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else ""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {rank}%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)  # fmt: skip
    try:
        if args.preflight or (os.environ.get(PREFLIGHT_ENV) and not args.trial):
            from lora_ablation_trainer.preflight import run_preflight

            run_preflight(_load(PreflightSpec, args.preflight, PREFLIGHT_ENV, "--preflight"), workdir(args))
            return EXIT_OK
        from lora_ablation_trainer.distributed import run_maybe_distributed

        if args.trials or (os.environ.get(TRIALS_ENV) and not args.trial):
            run_maybe_distributed(_load(TrialBatch, args.trials, TRIALS_ENV, "--trials"), workdir(args))
            return EXIT_OK
        spec = load_trial(args.trial)
        result = run_maybe_distributed(spec, workdir(args))
    except TrialError as error:
        log.error("%s (exit %d)", error, error.exit_code)
        write_termination_message(f"{error} (exit {error.exit_code})")
        return error.exit_code
    if result is not None:
        score = result.eval if hasattr(result, "eval") else result  # a stage-one score has metric and score itself
        log.info("trial %s: %s %.4f", spec.name, score.metric, score.score)
    return EXIT_OK


def write_termination_message(message: str) -> None:
    """The failure in the pod's status, where the operator and `kubectl describe` read it (a diverged trial's step)."""
    path = Path(os.environ.get(TERMINATION_LOG_ENV) or TERMINATION_LOG)
    if os.environ.get(TERMINATION_LOG_ENV) or path.exists():  # outside Kubernetes the default path is absent
        try:
            path.write_text(message.encode()[:4000].decode(errors="ignore"))  # the kubelet keeps 4 KiB
        except OSError as error:
            log.warning("cannot write the termination message to %s: %s", path, error.strerror or error)


def workdir(args: argparse.Namespace) -> Path | None:
    return Path(args.workdir) if args.workdir else None


__all__ = ["EXIT_PERMANENT", "main"]
