"""Where and how trial Jobs run: images, parallelism, failure limits, resources, scheduling, queues."""

from __future__ import annotations

import re
from enum import Enum
from typing import Any

from pydantic import Field, field_validator, model_validator

from lora_ablation.api.base import ApiModel, ImageReference, LabelName, LabelValue, ObjectName, QualifiedName

QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")


class Toleration(ApiModel):
    key: QualifiedName | None = Field(
        None, description="Taint key the toleration applies to (all keys when empty with Exists)."
    )
    operator: str | None = Field(
        None, description="Exists or Equal (default Equal).", json_schema_extra={"enum": ["Exists", "Equal"]}
    )
    value: LabelValue | None = Field(None, description="Taint value to match with Equal.")
    effect: str | None = Field(
        None,
        description="NoSchedule, PreferNoSchedule or NoExecute (all effects when empty).",
        json_schema_extra={"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]},
    )
    toleration_seconds: int | None = Field(None, description="How long a NoExecute taint is tolerated.")

    @field_validator("operator")
    @classmethod
    def _operator(cls, value: str | None) -> str | None:
        if value is not None and value not in {"Exists", "Equal"}:
            raise ValueError("expected Exists or Equal")
        return value

    @field_validator("effect")
    @classmethod
    def _effect(cls, value: str | None) -> str | None:
        if value is not None and value not in {"NoSchedule", "PreferNoSchedule", "NoExecute"}:
            raise ValueError("expected NoSchedule, PreferNoSchedule or NoExecute")
        return value


class ResourcesSpec(ApiModel):
    gpus: int = Field(1, ge=0, description="GPUs per trial; more than one trains data-parallel inside the pod.")
    gpu_resource_name: QualifiedName = Field("nvidia.com/gpu", description="Extended resource name of the GPU.")
    gpu_memory: str | None = Field(
        None,
        description="Memory of one GPU (Kubernetes quantity, e.g. 24Gi or 80Gi). The plan and the operator warn about "
        "trials whose estimated peak memory exceeds it; when unset it is read from nodeSelector "
        "(nvidia.com/gpu.memory, or a known product in nvidia.com/gpu.product or cloud.google.com/gke-accelerator).",
        json_schema_extra={"pattern": QUANTITY.pattern},
    )
    cpu: str = Field(
        "8",
        description="CPU request and limit per trial (Kubernetes quantity).",
        json_schema_extra={"pattern": QUANTITY.pattern},
    )
    memory: str = Field(
        "64Gi",
        description="Memory request and limit per trial (Kubernetes quantity).",
        json_schema_extra={"pattern": QUANTITY.pattern},
    )
    ephemeral_storage: str | None = Field(
        None,
        description="Ephemeral storage request per trial (model download and checkpoints).",
        json_schema_extra={"pattern": QUANTITY.pattern},
    )

    @field_validator("cpu", "memory", "ephemeral_storage", "gpu_memory")
    @classmethod
    def _quantity(cls, value: str | None) -> str | None:
        if value is not None and not QUANTITY.fullmatch(value):
            raise ValueError("expected a Kubernetes quantity such as 8, 500m, 64Gi")
        return value


MAX_NODES = 64  # nodes per trial; a LoRA ablation trial past this is a pretraining run, not a study
ENGINES = ("JobSet", "TrainJob")


class MultiNodeSpec(ApiModel):
    engine: str | None = Field(
        None,
        description="What runs a trial of more than one node: JobSet (jobset.x-k8s.io, the pods exactly as the "
        "operator builds them) or TrainJob (Kubeflow Trainer, through its torch ClusterTrainingRuntime). Unset: the "
        "operator's configured engine (chart value multiNode.engine, JobSet by default).",
        json_schema_extra={"enum": list(ENGINES)},
    )

    @field_validator("engine")
    @classmethod
    def _engine(cls, value: str | None) -> str | None:
        if value is not None and value not in ENGINES:
            raise ValueError(f"expected one of {', '.join(ENGINES)}")
        return value


class Sharding(str, Enum):
    auto = "auto"
    none = "none"
    fsdp = "fsdp"


class ExecutionSpec(ApiModel):
    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.trialsPerPod) || self.trialsPerPod <= 1 || !has(self.nodes) || self.nodes <= 1",
                    "message": "execution.trialsPerPod: several trials per pod run on one node; set it to 1 with "
                    "execution.nodes > 1",
                },
                {
                    "rule": "!has(self.sharding) || self.sharding != 'fsdp' || (has(self.resources) && "
                    "has(self.resources.gpus) && self.resources.gpus >= 2)",
                    "message": "execution.sharding fsdp needs execution.resources.gpus >= 2",
                },
            ]
        }
    }

    image: ImageReference | None = Field(
        None, description="Trainer image; the operator's configured default when unset."
    )
    parallelism: int = Field(4, ge=1, description="At most this many trials run at once.")
    max_failed_trials: int = Field(
        2, ge=0, description="The ablation fails (and stops running trials) once more trials than this have failed."
    )
    backoff_limit: int = Field(2, ge=0, description="Pod retries per trial Job for transient failures.")
    active_deadline_seconds: int | None = Field(86400, ge=1, description="Wall-clock limit per trial Job.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Resources of each trial pod.")
    node_selector: dict[QualifiedName, LabelValue] | None = Field(
        None, max_length=64, description="Node labels trial pods must match."
    )
    tolerations: list[Toleration] | None = Field(
        None, max_length=64, description="Tolerations for trial pods (e.g. GPU taints)."
    )
    affinity: dict[str, Any] | None = Field(
        None,
        description="Pod affinity for trial pods (core/v1 Affinity).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    priority_class_name: ObjectName | None = Field(None, description="PriorityClass of trial pods.")
    service_account_name: ObjectName | None = Field(None, description="ServiceAccount trial pods run as.")
    queue_name: LabelName | None = Field(
        None, description="Kueue LocalQueue; trial Jobs are admitted by Kueue when set (the name goes into a label)."
    )
    model_cache_claim: ObjectName | None = Field(
        None,
        description="PVC mounted read-only at /models holding pre-downloaded base models, so trials skip the download.",
    )
    suspend: bool = Field(False, description="Stop starting trials and suspend running ones; false resumes.")
    trials_per_pod: int = Field(
        1,
        ge=1,
        le=32,
        description="Run up to this many trials (same dataset) one after another in one Job, so the image is "
        "pulled and the base model downloaded and loaded once for all of them. Each trial keeps its own result, "
        "state and checkpoints; a restarted pod skips the trials it already finished.",
    )
    fused_training: bool = Field(
        True,
        description="Train the trials of one Job (trialsPerPod > 1) together: one forward and backward over the base "
        "model per micro-step for all of their adapters, each adapter on its own rows of the batch with its own "
        "optimizer, data order and dropout stream. It equals training them one after another (to float rounding) at "
        "a fraction of the base's passes. The baseline, DoRA and adapters on raw parameters train alone; groups stay "
        "within the GPU memory the spec declares; a Job with several GPUs trains its trials one after another. "
        "false always trains them one after another.",
    )
    max_gpu_hours: float | None = Field(
        None,
        gt=0,
        le=1e6,
        description="Stop starting trials once the ablation's GPU-hours (finished trials, stage-one runs and "
        "the running trials' expected cost) would exceed this; what finished is summarised (reason "
        "BudgetExhausted). A trial on CPU only counts its wall-clock hours as one device.",
    )
    nodes: int = Field(
        1,
        ge=1,
        le=MAX_NODES,
        description="Nodes (pods) per trial, each with resources.gpus GPUs; more than 1 runs every trial across "
        "that many pods under torchrun's rendezvous, through multiNode.engine (the operator must have multi-node "
        "trials enabled).",
    )
    multi_node: MultiNodeSpec | None = Field(
        None, description="How trials of more than one node run (execution.nodes > 1)."
    )
    sharding: Sharding = Field(
        Sharding.auto,
        description="How a trial with several GPUs (resources.gpus > 1) spreads over them: none trains data-parallel "
        "(every GPU holds the whole model); fsdp shards weights, adapter, gradients and optimizer state across them "
        "(PyTorch FSDP), for models that do not fit one GPU; auto picks fsdp only when the estimated peak memory of "
        "a trial exceeds one GPU (resources.gpuMemory or the nodeSelector's GPU) and resources.gpus > 1. "
        "It changes how a trial runs, not what it computes: trial names and results stay the same.",
    )

    @model_validator(mode="after")
    def _batches_on_one_node(self) -> ExecutionSpec:
        if self.trials_per_pod > 1 and self.nodes > 1:
            raise ValueError(
                "execution.trialsPerPod: several trials per pod run on one node; with execution.nodes "
                f"{self.nodes} set trialsPerPod to 1"
            )
        return self

    @model_validator(mode="after")
    def _sharding_needs_gpus(self) -> ExecutionSpec:
        if self.sharding == Sharding.fsdp and self.resources.gpus < 2:
            raise ValueError(
                f"execution.sharding fsdp shards a trial across the GPUs of its pod and needs "
                f"execution.resources.gpus >= 2 (now {self.resources.gpus}); raise gpus or set sharding to auto or none"
            )
        return self
