"""spec.tracking: where an ablation's trials are logged as experiment-tracker runs (MLflow), and what a trial is
handed for it. Only configuration lives here: the client (mlflow-skinny, the tracking extra) is imported by
lora_ablation.tracking, lazily, and only when the field is set."""

from __future__ import annotations

import hashlib
import re

from pydantic import Field, field_validator

from lora_ablation.api.base import ApiModel, ObjectName, SecretKey

# An MLflow tracking server's REST endpoint. Only http(s): a file or database URI would have trials write into
# their own container (or a database with credentials in the URI), which no one else could read.
TRACKING_URI = re.compile(r"^https?://[^\s/?#@]+(/[^\s?#]*)?$")
# MLflow takes any experiment name; these are kept printable and bounded (no control characters, no edge spaces).
EXPERIMENT_NAME = re.compile(r"^[^\s\x00-\x1f\x7f]([^\x00-\x1f\x7f]{0,254}[^\s\x00-\x1f\x7f])?$")
# The keys MLflow's client reads its credentials from (basic auth or a bearer token).
USERNAME_ENV, PASSWORD_ENV, TOKEN_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"


class MlflowCredentialsRef(ApiModel):
    name: ObjectName = Field(
        description="Name of a Secret in the LoraAblation's namespace holding the tracking server's credentials: "
        "a username and password, or a token. Every key is optional (a missing one is left unset)."
    )
    username_key: SecretKey = Field(USERNAME_ENV, description=f"Key of the username (default {USERNAME_ENV}).")
    password_key: SecretKey = Field(PASSWORD_ENV, description=f"Key of the password (default {PASSWORD_ENV}).")
    token_key: SecretKey = Field(TOKEN_ENV, description=f"Key of a bearer token (default {TOKEN_ENV}).")


class MlflowSpec(ApiModel):
    tracking_uri: str = Field(
        description="The MLflow tracking server, http:// or https:// (such as http://mlflow.mlflow:5000); reached by "
        "the trial pods and by the operator.",
        max_length=2048,
        json_schema_extra={"pattern": TRACKING_URI.pattern},
    )
    experiment_name: str = Field(
        description="MLflow experiment the ablation's run goes into (created when missing).",
        max_length=256,
        json_schema_extra={"pattern": EXPERIMENT_NAME.pattern},
    )
    credentials_secret_ref: MlflowCredentialsRef | None = Field(
        None,
        description="Secret with the tracking server's credentials, passed to trial pods by reference only "
        "(unauthenticated when unset).",
    )
    log_adapter: bool = Field(
        True,
        description="Upload each trial's adapter files as artifacts of its run; false records only the adapter's "
        "storage URI (tag lora.ablation.dev/adapter-uri).",
    )

    @field_validator("tracking_uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        if not TRACKING_URI.fullmatch(value):
            raise ValueError(
                "expected an http:// or https:// URL of an MLflow tracking server such as http://mlflow.mlflow:5000 "
                "(no credentials, query or fragment in it: credentials go in credentialsSecretRef)"
            )
        return value

    @field_validator("experiment_name")
    @classmethod
    def _experiment(cls, value: str) -> str:
        if not EXPERIMENT_NAME.fullmatch(value):
            raise ValueError(
                "expected 1 to 256 printable characters, not starting or ending with a space (such as "
                "lora-ablations/team-a)"
            )
        return value


class TrackingSpec(ApiModel):
    mlflow: MlflowSpec | None = Field(
        None,
        description="Log every trial as an MLflow run nested under one run per ablation (parameters, step and final "
        "metrics, latency, cost, the adapter), and the summary and plots on the ablation's run.",
    )


class TrialTracking(ApiModel):
    """What a trial needs to log its run: never credentials (they arrive as MLFLOW_TRACKING_* environment)."""

    tracking_uri: str = Field(description="The MLflow tracking server.")
    experiment_name: str = Field(description="The experiment of the ablation's run.")
    ablation_key: str = Field(
        description="Identity of the ablation's run: a hash of the ablation's storage folder (its record), found by "
        "the tag lora.ablation.dev/record."
    )
    log_adapter: bool = Field(True, description="Upload the adapter files as artifacts.")


def ablation_key(ablation_uri: str) -> str:
    """The ablation's run is the run of its record: the same storage folder is the same ablation, across restarts,
    re-applies and local re-runs."""
    return hashlib.sha256(ablation_uri.rstrip("/").encode()).hexdigest()[:32]


def trial_tracking(tracking: TrackingSpec | None, ablation_uri: str) -> TrialTracking | None:
    if tracking is None or tracking.mlflow is None:
        return None
    mlflow = tracking.mlflow
    return TrialTracking(tracking_uri=mlflow.tracking_uri, experiment_name=mlflow.experiment_name,
                         ablation_key=ablation_key(ablation_uri), log_adapter=mlflow.log_adapter)  # fmt: skip
