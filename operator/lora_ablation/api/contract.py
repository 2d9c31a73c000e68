"""The contract between the operator (or local runner) and the trainer process, in one place:
how a trial is handed over and what its exit code means."""

TRIAL_ENV = "LORA_ABLATION_TRIAL"  # TrialSpec JSON for one trial
TRIALS_ENV = "LORA_ABLATION_TRIALS"  # TrialBatch JSON: several trials in one pod (execution.trialsPerPod)
PREFLIGHT_ENV = "LORA_ABLATION_PREFLIGHT"  # PreflightSpec JSON for the preflight check
# Where the trainer writes why it failed (the kubelet copies it into the pod's terminated state, 4 KiB at most);
# the environment variable overrides the path outside Kubernetes.
TERMINATION_LOG_ENV = "LORA_ABLATION_TERMINATION_LOG"
TERMINATION_LOG = "/dev/termination-log"

EXIT_OK = 0
EXIT_PERMANENT = 42  # bad trial config, module not in model, malformed or missing data: do not retry
EXIT_TRANSIENT = 75  # EX_TEMPFAIL: storage or hub unreachable after retries: retry the pod

# What a trial leaves in its storage folder (besides adapter/ and checkpoints/).
RESULT = "result.json"  # written last: its presence means the trial is complete
STAGE_ONE = "stage-one.json"  # a two-stage trial's score at its stage-one checkpoint
FAILURE = "failure.json"  # a trial that failed for good inside a multi-trial pod
PROGRESS = "progress.json"  # a running trial's live progress, rewritten at a bounded interval; advisory only
# Seconds between two progress.json writes at least (the first step and the end are always written); 0 turns
# progress off. Read by the trainer from its environment, so the operator, runner and tests can set it.
PROGRESS_SECONDS_ENV = "LORA_ABLATION_PROGRESS_SECONDS"
PROGRESS_SECONDS = 30.0
