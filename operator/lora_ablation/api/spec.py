"""The desired state of a LoraAblation: what to train, on what, how to measure it, where to run it.

Defaults live here and are applied when the spec is read; the generated CRD carries no defaults, so
the API server never writes them back into `spec` (GitOps tools would report drift).
"""

from __future__ import annotations

import re
from enum import Enum

from pydantic import Field, field_validator, model_validator

from lora_ablation.api.base import DNS1123_LABEL, ApiModel, ObjectName, SecretKey
from lora_ablation.api.execution import ExecutionSpec
from lora_ablation.api.search import MAX_SEEDS, LayerSubset, ModuleSet, SearchSpec, Variant
from lora_ablation.api.tracking import TrackingSpec

__all__ = ["MAX_SEEDS", "LayerSubset", "ModuleSet", "SearchSpec", "Variant"]  # re-exported: spec is their old home

_CLAIM = r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?"  # a PersistentVolumeClaim name (DNS-1123 subdomain)
MODEL_URI = re.compile(rf"^(hf://[^/\s]+(/[^/\s]+)?|s3://[^/\s]+(/\S*)?|pvc://{_CLAIM}(/\S*)?|file://\S+)$")
# file:// paths may be relative (file://examples/data/x.jsonl): the local runner resolves them from the
# working directory. Cluster trials read s3:// or pvc:// only; the operator rejects file:// (preflight).
DATA_URI = re.compile(rf"^(s3://[^/\s]+/\S+|file://\S+|/\S+|pvc://{_CLAIM}/\S+)$")
# An S3 prefix is a path below the bucket: no empty, '.' or '..' segments (RE2 has no lookahead, hence the spelling
# out), so the operator's writes and deletes can never leave the prefix the spec names.
_SEGMENT = r"([^/\s.\\][^/\s\\]*|\.[^/\s.\\][^/\s\\]*|\.\.[^/\s\\]+)"
ENDPOINT = re.compile(r"^https?://[^\s/]+(/\S*)?$")
# The most trials one ablation may plan: the operator plans (and keeps status for) every one of them, so an
# unbounded grid (64 datasets x 64 module sets x 16 ranks x 4 variants is 262,208) would stall it. The operator's
# own setting (the chart's maxTrials) can lower this.
MAX_TRIALS = 5000
STORAGE_URI = re.compile(rf"^(s3://[a-z0-9][a-z0-9.\-]{{1,61}}[a-z0-9](/{_SEGMENT})*/?|file://\S+)$")


class DatasetFormat(str, Enum):
    chat = "chat"
    prompt_completion = "prompt-completion"
    text = "text"


class Metric(str, Enum):
    accuracy = "accuracy"
    exact_match = "exact_match"
    rouge_lsum = "rougeLsum"
    json_kv_match = "json_kv_match"
    eval_loss = "eval_loss"


class Quantization(str, Enum):
    none = "none"
    nf4 = "nf4"


class SecretKeyRef(ApiModel):
    name: ObjectName = Field(description="Name of a Secret in the LoraAblation's namespace.")
    key: SecretKey = Field(description="Key inside the Secret whose value is used.")


class CredentialsSecretRef(ApiModel):
    name: ObjectName = Field(description="Name of a Secret holding S3 credentials.")
    access_key_id_key: SecretKey = Field(
        "AWS_ACCESS_KEY_ID", description="Key of the access key id in the Secret (default AWS_ACCESS_KEY_ID)."
    )
    secret_access_key_key: SecretKey = Field(
        "AWS_SECRET_ACCESS_KEY",
        description="Key of the secret access key in the Secret (default AWS_SECRET_ACCESS_KEY).",
    )


class BaseModelSpec(ApiModel):
    uri: str = Field(
        description="Where the base model lives: hf://org/name (Hugging Face Hub), s3://bucket/prefix/, "
        "pvc://claim/path (a PersistentVolumeClaim in the namespace) or file://path (local runner).",
        json_schema_extra={"pattern": MODEL_URI.pattern},
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for hf:// models.")
    token_secret_ref: SecretKeyRef | None = Field(
        None, description="Secret key holding a Hugging Face token for gated or private hf:// models."
    )
    dtype: str = Field(
        "auto",
        description="Weights dtype for training and inference: auto (bfloat16 on GPU, float32 on CPU), "
        "bfloat16, float16 or float32.",
        json_schema_extra={"enum": ["auto", "bfloat16", "float16", "float32"]},
    )
    quantization: Quantization = Field(
        Quantization.none,
        description="Load the frozen base weights quantized: none, or nf4 (4-bit NormalFloat through bitsandbytes, "
        "QLoRA: about a quarter of the weight memory; adapters stay ordinary PEFT adapters trained in dtype). Every "
        "trial of the ablation, the baseline included, is trained, evaluated and timed on the quantized base.",
    )

    @field_validator("uri")
    @classmethod
    def _uri_scheme(cls, value: str) -> str:
        if not MODEL_URI.fullmatch(value):
            raise ValueError("expected hf://org/name, s3://bucket/prefix/, pvc://claim/path or file://path")
        return value

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str) -> str:
        if value not in {"auto", "bfloat16", "float16", "float32"}:
            raise ValueError("expected one of auto, bfloat16, float16, float32")
        return value


class DatasetSpec(ApiModel):
    name: str = Field(
        description="Short DNS-1123 name of the dataset (unique within the ablation); used in trial names.",
        max_length=24,
        json_schema_extra={"pattern": DNS1123_LABEL.pattern},
    )
    train: str = Field(
        description="JSONL training file: s3://bucket/key, pvc://claim/path, file://path or /path.",
        json_schema_extra={"pattern": DATA_URI.pattern},
    )
    eval: str = Field(
        description="JSONL evaluation file, same URI forms as train.", json_schema_extra={"pattern": DATA_URI.pattern}
    )
    format: DatasetFormat = Field(
        DatasetFormat.chat,
        description="Record shape: chat ({messages:[{role,content}]}), prompt-completion ({prompt,completion}) "
        "or text ({text}).",
    )
    metric: Metric = Field(
        Metric.eval_loss,
        description="How the eval split is scored: accuracy (multiple choice, strict parser), exact_match, "
        "rougeLsum, json_kv_match or eval_loss (lower is better; reported as negative loss in rankings).",
    )
    max_eval_samples: int = Field(500, ge=1, description="Evaluate on at most this many eval records.")
    max_train_samples: int | None = Field(
        None, ge=1, description="Train on at most this many records (all when unset)."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not DNS1123_LABEL.fullmatch(value):
            raise ValueError("expected lowercase letters, digits and '-', starting and ending with a letter or digit")
        return value

    @field_validator("train", "eval")
    @classmethod
    def _data_uri(cls, value: str) -> str:
        if not DATA_URI.fullmatch(value):
            raise ValueError("expected s3://bucket/key.jsonl, pvc://claim/path, file://path or an absolute path")
        return value


class TrainingSpec(ApiModel):
    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {"rule": "!has(self.epochs) || !has(self.maxSteps)", "message": "set epochs or maxSteps, not both"}
            ]
        }
    }

    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate (AdamW, linear decay after warmup).")
    epochs: float | None = Field(
        None, gt=0, description="Passes over the training set (1 when neither this nor maxSteps is set)."
    )
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps to train; overrides epochs.")
    batch_size: int = Field(4, ge=1, description="Per-device micro-batch size.")
    gradient_accumulation: int = Field(4, ge=1, description="Micro-batches per optimizer step.")
    max_seq_length: int = Field(2048, ge=16, description="Sequences are truncated to this many tokens.")
    packing: bool = Field(
        False,
        description="Pack several short records into one sequence without padding (faster on short data); position "
        "ids restart per record, so each record attends only to itself and trains exactly as it would alone.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass instead of storing them: far less memory per token "
        "(long documents, small GPUs) for about a third more compute per step.",
    )
    seed: int = Field(42, ge=0, description="Seed for data order, adapter initialisation and dropout.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Fraction of steps spent warming up the learning rate.")
    loraplus_lr_ratio: float = Field(
        16.0, gt=0, le=1024, description="LoRA+ only: learning-rate multiplier of the B matrices."
    )
    checkpoint_every_steps: int = Field(
        100, ge=1, description="Save a resumable checkpoint to storage every this many steps."
    )

    @model_validator(mode="after")
    def _epochs_or_steps(self) -> TrainingSpec:
        if self.epochs is not None and self.max_steps is not None:
            raise ValueError("set epochs or maxSteps, not both")
        return self


class LatencySpec(ApiModel):
    enabled: bool = Field(True, description="Measure time to first token and time per output token.")
    prompt_tokens: int = Field(
        512, ge=1, description="Fixed prompt length in tokens (identical prompts for every config)."
    )
    output_tokens: int = Field(128, ge=2, description="New tokens generated per run (greedy, exactly this many).")
    batch_size: int = Field(1, ge=1, description="Prompts generated together per run.")
    warmup: int = Field(3, ge=0, description="Unmeasured runs before timing starts.")
    repeats: int = Field(20, ge=1, description="Measured runs; p50 and p95 are taken over these.")


class SelectionSpec(ApiModel):
    tolerance: float = Field(
        0.02,
        ge=0,
        le=1,
        description="The balanced recommendation is the lowest-latency config whose mean score is within this "
        "absolute distance of the best (0.02 = two points of accuracy).",
    )
    latency_budget_ms: float | None = Field(
        None,
        gt=0,
        description="Only configs with adapter TPOT p95 at or under this many milliseconds qualify as balanced.",
    )
    leaderboard_size: int = Field(10, ge=1, le=100, description="How many configurations the status leaderboard lists.")


class StorageSpec(ApiModel):
    uri: str = Field(
        description="Where results and adapters go: s3://bucket/prefix (any S3 endpoint) or file://path "
        "(local runner).",
        json_schema_extra={"pattern": STORAGE_URI.pattern},
    )
    endpoint: str | None = Field(
        None,
        description="S3 endpoint URL for MinIO and other S3-compatible stores.",
        json_schema_extra={"pattern": ENDPOINT.pattern},
    )
    region: str | None = Field(None, description="S3 region.")
    credentials_secret_ref: CredentialsSecretRef | None = Field(
        None, description="Secret with S3 credentials (workload identity or node role when unset)."
    )
    retain_on_delete: bool = Field(True, description="Keep results in storage when the LoraAblation is deleted.")

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        if not STORAGE_URI.fullmatch(value):
            raise ValueError(
                "expected s3://bucket/prefix (a bucket name, then '/'-separated prefix parts that are not empty, "
                "'.' or '..') or file://path"
            )
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not ENDPOINT.fullmatch(value):
            raise ValueError("expected an http:// or https:// URL such as http://minio.minio:9000")
        return value


class LoraAblationSpec(ApiModel):
    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.selection) || !has(self.selection.latencyBudgetMs) || !has(self.latency) "
                    "|| !has(self.latency.enabled) || self.latency.enabled",
                    "message": "selection.latencyBudgetMs needs latency.enabled",
                },
                {
                    "rule": "!has(self.execution) || !has(self.execution.modelCacheClaim) || "
                    "!self.baseModel.uri.startsWith('file://')",
                    "message": "execution.modelCacheClaim cannot be used with a file:// base model",
                },
                {
                    "rule": "!has(self.execution) || !has(self.execution.sharding) || self.execution.sharding != 'fsdp'"
                    " || !has(self.baseModel.quantization) || self.baseModel.quantization == 'none'",
                    "message": "execution.sharding fsdp needs baseModel.quantization none: 4-bit weights are not "
                    "sharded",
                },
                {
                    "rule": "size(self.datasets) * (size(self.search.moduleSets)"
                    " * (has(self.search.ranks) ? size(self.search.ranks) : 1)"
                    " * (has(self.search.variants) ? size(self.search.variants) : 1)"
                    " * (has(self.search.seeds) ? size(self.search.seeds) : 1)"
                    " * (has(self.search.layers) ? size(self.search.layers) : 1)"
                    " + (has(self.search.includeBaseline) && !self.search.includeBaseline ? 0 : 1))"
                    f" <= {MAX_TRIALS}",
                    "message": "the grid (datasets x (moduleSets x ranks x variants x seeds x layers + baseline)) "
                    f"exceeds {MAX_TRIALS} trials: narrow it or split the study",
                },
            ]
        }
    }

    base_model: BaseModelSpec = Field(description="The model every trial adapts.")
    datasets: list[DatasetSpec] = Field(
        description="Datasets to train and evaluate on; every configuration runs on every dataset.",
        min_length=1,
        max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    search: SearchSpec = Field(description="The grid: module sets x ranks x variants.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Hyperparameters shared by every trial.")
    latency: LatencySpec = Field(default_factory=LatencySpec, description="The latency measurement protocol.")
    selection: SelectionSpec = Field(default_factory=SelectionSpec, description="How the recommendation is chosen.")
    execution: ExecutionSpec = Field(default_factory=ExecutionSpec, description="Where and how trial Jobs run.")
    storage: StorageSpec = Field(description="Object storage for results, adapters and the summary.")
    tracking: TrackingSpec | None = Field(
        None, description="Experiment tracking (MLflow); nothing is logged, and no tracking client loaded, when unset."
    )

    @field_validator("datasets")
    @classmethod
    def _unique_datasets(cls, datasets: list[DatasetSpec]) -> list[DatasetSpec]:
        names = [d.name for d in datasets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"dataset names must be unique; repeated: {', '.join(dupes)}")
        return datasets

    @property
    def seeds(self) -> list[int]:
        """The seeds every configuration is trained with: search.seeds, else training.seed alone."""
        return list(self.search.seeds) if self.search.seeds else [self.training.seed]

    @property
    def trial_count(self) -> int:
        """How many trials the plan will hold, without planning them."""
        per_dataset = len(self.search.module_sets) * len(self.search.ranks) * len(self.search.variants)
        per_dataset *= len(self.seeds) * len(self.search.layers)
        return len(self.datasets) * (per_dataset + int(self.search.include_baseline))

    @model_validator(mode="after")
    def _cross_field(self) -> LoraAblationSpec:
        if self.selection.latency_budget_ms is not None and not self.latency.enabled:
            raise ValueError("selection.latencyBudgetMs needs latency.enabled: true")
        if self.execution.model_cache_claim and self.base_model.uri.startswith("file://"):
            raise ValueError("execution.modelCacheClaim cannot be used with a file:// base model")
        if self.execution.sharding == "fsdp" and self.base_model.quantization != "none":
            raise ValueError(  # the trainer shards full-precision weights only (4-bit storage under FSDP is untested)
                "execution.sharding fsdp needs baseModel.quantization none: 4-bit weights are not sharded; "
                "use sharding none (nf4 usually fits one GPU) or unquantized weights"
            )
        if self.trial_count > MAX_TRIALS:
            raise ValueError(
                f"the grid asks for {self.trial_count} trials (datasets x (moduleSets x ranks x variants x seeds x "
                "layers + baseline)); "
                f"at most {MAX_TRIALS}: narrow it or split the study"
            )
        return self
