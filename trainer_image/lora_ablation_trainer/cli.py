"""`python -m lora_ablation_trainer --trial FILE` (or the JSON in $LORA_ABLATION_TRIAL): run one trial.

Exit codes: 0 done (or already done), 42 permanent error (do not retry), 75 transient error (retry).
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
from lora_ablation.api.trial import TrialSpec
from lora_ablation_trainer.errors import EXIT_OK, EXIT_PERMANENT, TrialError

TRIAL_ENV = "LORA_ABLATION_TRIAL"
log = logging.getLogger("lora_ablation_trainer")


def load_trial(path: str | None) -> TrialSpec:
    if path:
        try:
            raw = Path(path).read_text()
        except OSError as error:
            raise TrialError(f"--trial {path}: cannot read ({error.strerror or error})") from None
        origin = path
    elif os.environ.get(TRIAL_ENV):
        raw, origin = os.environ[TRIAL_ENV], f"${TRIAL_ENV}"
    else:
        raise TrialError(f"no trial given: pass --trial FILE or set {TRIAL_ENV}")
    try:
        return TrialSpec.model_validate(json.loads(raw))
    except json.JSONDecodeError as error:
        raise TrialError(f"{origin}: not valid JSON ({error.msg} at line {error.lineno})") from None
    except ValidationError as error:
        raise TrialError(f"{origin}: " + "; ".join(format_validation_error(error))) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_ablation_trainer", description=__doc__)
    parser.add_argument("--trial", help=f"TrialSpec JSON file (default: ${TRIAL_ENV})")
    parser.add_argument("--workdir", help="scratch space for downloads (default: the system temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        spec = load_trial(args.trial)
        from lora_ablation_trainer.distributed import run_maybe_distributed

        result = run_maybe_distributed(spec, Path(args.workdir) if args.workdir else None)
    except TrialError as error:
        log.error("%s (exit %d)", error, error.exit_code)
        return error.exit_code
    if result is not None:
        log.info("trial %s: %s %.4f", spec.name, result.eval.metric, result.eval.score)
    return EXIT_OK


__all__ = ["EXIT_PERMANENT", "main"]
