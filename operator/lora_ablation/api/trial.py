"""The contract between the planner and the trainer: what one trial receives, and what it writes."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator, model_validator

from lora_ablation.api.base import ApiModel, OpenModel
from lora_ablation.api.bounds import MAX_NAME, Loss, Millis, Name, Percent, Score, Seconds, Short, Steps
from lora_ablation.api.curves import MAX_EVAL_POINTS, EvalPoint, LossCurve
from lora_ablation.api.spec import BaseModelSpec, DatasetSpec, LatencySpec, LayerSubset, TrainingSpec
from lora_ablation.api.stages import StageOneSpec
from lora_ablation.api.tracking import TrialTracking

RESULT_SCHEMA_VERSION = 1
# Bounds on what a trial image may write: results are read by the shared operator, so a hostile or broken
# trial must not be able to make it hold gigabytes (the byte bound is in lora_ablation.storage.results).
MAX_NAMES = 100_000
MAX_MAGNITUDE = 1e15  # every number; the fields the summary adds up have tighter bounds (api.bounds)
MAX_RANK = 65536
ModuleName = Annotated[str, Field(max_length=MAX_NAME)]  # a module's full dotted name
SpecModule = Annotated[str, Field(max_length=128)]  # a group or raw module name as a spec lists it
EnvironmentValue = Annotated[str, Field(max_length=1024)]  # a library version, a device or host name
BASELINE_VARIANT = "none"


class TrialStorage(ApiModel):
    uri: str = Field(description="Folder of this trial: result.json, adapter/ and checkpoints/ go under it.")
    endpoint: str | None = Field(None, description="S3 endpoint URL (MinIO and friends).")
    region: str | None = Field(None, description="S3 region.")


class TrialSpec(ApiModel):
    """Everything one trial run needs. Credentials are never part of it: they arrive as environment
    variables (AWS_*, HF_TOKEN) from Secret references."""

    ablation: str = Field(description="Name of the LoraAblation the trial belongs to.")
    namespace: str = Field("default", description="Namespace of the LoraAblation.")
    name: str = Field(description="Trial name: a stable hash of the trial's configuration.")
    base_model: BaseModelSpec = Field(description="The model to adapt.")
    dataset: DatasetSpec = Field(description="The dataset to train and evaluate on.")
    modules: list[str] = Field(default_factory=list, description="Module set from the spec; empty for the baseline.")
    target_modules: list[str] | None = Field(
        None,
        description="Module names the planner resolved from the catalog; the trainer re-checks them on the real model.",
    )
    target_parameters: list[str] | None = Field(
        None, description="3-D expert parameters (MoE) the planner resolved; passed to PEFT's target_parameters."
    )
    rank: int = Field(0, ge=0, description="LoRA rank r; 0 for the baseline.")
    alpha: float = Field(0.0, ge=0, description="lora_alpha (alphaOverRank x r).")
    variant: str = Field(
        "lora",
        description="lora, rslora, dora, loraplus, or none for the baseline.",
        json_schema_extra={"enum": ["lora", "rslora", "dora", "loraplus", BASELINE_VARIANT]},
    )
    layers: LayerSubset = Field(
        "all", description="Layer subset that gets adapters (search.layers); all for every layer."
    )
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Training hyperparameters.")
    latency: LatencySpec = Field(default_factory=LatencySpec, description="Latency protocol.")
    storage: TrialStorage = Field(description="Where the trial writes its outputs.")
    stage_one: StageOneSpec | None = Field(
        None,
        description="Set for a two-stage trial's first stage: train to the fraction, checkpoint, evaluate, write "
        "stage-one.json and stop. Unset: train to the end (resuming from any checkpoint) and publish result.json.",
    )
    sharding: str | None = Field(
        None,
        description="How the trainer spreads the trial over several processes (GPUs): fsdp shards the model with "
        "PyTorch FSDP; none or absent trains data-parallel. The planner decides it (lora_ablation.planning.sharding) "
        "from execution.sharding and the memory estimate; it is not part of the trial's name. Absent unless fsdp, so "
        "the trial JSON of unsharded trials stays what it was.",
        json_schema_extra={"enum": ["none", "fsdp"]},
    )

    tracking: TrialTracking | None = Field(
        None,
        description="Where the trial logs its MLflow run (spec.tracking.mlflow); absent without tracking, so the "
        "trial JSON of untracked ablations stays what it was.",
    )

    @field_validator("sharding")
    @classmethod
    def _sharding(cls, value: str | None) -> str | None:
        if value is not None and value not in {"none", "fsdp"}:
            raise ValueError("expected none or fsdp")
        return value

    @property
    def is_baseline(self) -> bool:
        return self.variant == BASELINE_VARIANT

    @model_validator(mode="after")
    def _baseline_consistency(self) -> TrialSpec:
        if self.is_baseline and (self.modules or self.rank):
            raise ValueError("a baseline trial (variant none) has no modules and rank 0")
        if not self.is_baseline and (not self.modules or self.rank < 1):
            raise ValueError(f"a {self.variant} trial needs at least one module and rank >= 1")
        if self.is_baseline and (self.stage_one is not None or self.layers != "all"):
            raise ValueError("a baseline trial trains nothing: it has no stage one and no layer subset")
        return self


class TrialBatch(ApiModel):
    """Several trials for one pod (execution.trialsPerPod): the base model is fetched and loaded once."""

    trials: list[TrialSpec] = Field(min_length=1, max_length=32, description="Trials, run in this order.")
    fused_group_size: int = Field(
        1,
        ge=1,
        le=32,
        description="Up to this many trials train together, one forward and backward over the base per micro-step "
        "for all of them (lora_ablation.planning.fusion decides which); 1 trains them one after another.",
    )

    @model_validator(mode="after")
    def _one_base_model(self) -> TrialBatch:
        first = self.trials[0].base_model
        for index, trial in enumerate(self.trials):
            if trial.base_model != first:
                raise ValueError(f"trials[{index}].baseModel: every trial of a batch must share one base model")
        names = [t.name for t in self.trials]
        if len(set(names)) != len(names):
            raise ValueError("trials: a trial is listed twice")
        return self


class PreflightSpec(ApiModel):
    """What the preflight Job checks before any GPU is used: every module set resolves on the real model,
    every dataset file is readable and every record parses."""

    ablation: str = Field(description="Name of the LoraAblation.")
    namespace: str = Field("default", description="Namespace of the LoraAblation.")
    base_model: BaseModelSpec = Field(description="The model every trial adapts.")
    datasets: list[DatasetSpec] = Field(description="Datasets of the ablation.")
    module_sets: list[list[str]] = Field(description="Module sets of the ablation.")
    storage: TrialStorage = Field(description="Where preflight.json is written.")


class PreflightReport(OpenModel):
    ok: bool = Field(description="True when every check passed.")
    problems: list[str] = Field(
        default_factory=list, max_length=1000, description="What failed, each naming the field or file."
    )
    modules: dict[str, list[str]] = Field(
        default_factory=dict, description="Module set label -> resolved weight names."
    )
    records: dict[str, int] = Field(default_factory=dict, description="'<dataset>/<split>' -> records parsed.")


class TrainMetrics(OpenModel):
    steps: Steps = Field(description="Optimizer steps taken.")
    tokens: int = Field(ge=0, description="Training tokens processed (non-padding).")
    seconds: Seconds = Field(description="Wall-clock training time.")
    tokens_per_second: float = Field(ge=0, description="tokens / seconds.")
    loss_first: Loss | None = Field(None, description="Mean loss over the first logged window.")
    loss_last: Loss | None = Field(None, description="Mean loss over the last logged window.")
    loss_min: Loss | None = Field(None, description="Lowest logged loss.")
    loss_curve: list[Loss] = Field(  # read from old files, bounded like the rest; `curve` replaced it
        default_factory=list,
        max_length=1000,
        description="Deprecated, no longer written: older trainers' loss at up to 50 evenly spaced steps. Use curve.",
    )
    curve: LossCurve = Field(
        default_factory=LossCurve,
        description="Training loss at up to 200 evenly spaced steps (empty in results of older trainers).",
    )
    eval_points: list[EvalPoint] = Field(
        default_factory=list, max_length=MAX_EVAL_POINTS, description="Eval scores along the run: stage one, final."
    )
    peak_memory_bytes: int | None = Field(None, description="Peak accelerator (or process) memory.")
    resumed_from_step: int | None = Field(None, description="Step of the checkpoint the run resumed from.")


class EvalMetrics(OpenModel):
    metric: Short = Field(description="Metric name from the dataset spec.")
    score: Score = Field(description="Higher is better (eval_loss reports the negative loss).")
    eval_loss: Loss | None = Field(None, description="Mean token cross-entropy on the eval completions.")
    # exp(eval_loss) passes 1e6 at 14 nats, which a diverged trial reaches: only the generic bound (_magnitudes).
    perplexity: float | None = Field(None, description="exp(eval_loss).")
    samples: Steps = Field(description="Eval records scored.")
    parse_failures: Steps = Field(0, description="Predictions the strict parser could not read (counted as wrong).")
    details: dict[Short, float] = Field(
        default_factory=dict, max_length=100, description="Metric components (key recall, value accuracy...)."
    )


class LatencyStats(OpenModel):
    ttft_p50_ms: Millis = Field(description="Time to first token, median.")
    ttft_p95_ms: Millis = Field(description="Time to first token, 95th percentile.")
    tpot_p50_ms: Millis = Field(description="Time per output token after the first, median.")
    tpot_p95_ms: Millis = Field(description="Time per output token after the first, 95th percentile.")
    tpot_cv_pct: Percent | None = Field(None, description="TPOT coefficient of variation over the repeats, in %.")
    ttft_cv_pct: Percent | None = Field(None, description="TTFT coefficient of variation over the repeats, in %.")


class LatencyMetrics(OpenModel):
    device: Name = Field(description="Device name the timings were taken on.")
    dtype: Short = Field(description="Weights dtype during timing.")
    prompt_tokens: int = Field(description="Prompt length.")
    output_tokens: int = Field(description="New tokens per run (asserted).")
    batch_size: int = Field(description="Prompts per run.")
    repeats: int = Field(description="Measured runs.")
    warmup: int | None = Field(None, description="Unmeasured runs before timing.")
    base: LatencyStats = Field(description="Base model, no adapter, same process.")
    adapter: LatencyStats | None = Field(None, description="With the unmerged adapter; absent for the baseline.")
    merged: LatencyStats | None = Field(
        None,
        description="With the adapter merged into a copy of the weights (merge_and_unload): the serving path "
        "without adapter overhead. Absent for the baseline or when a second copy did not fit.",
    )
    tpot_overhead_pct: Percent | None = Field(None, description="(adapter TPOT p95 / base TPOT p95 - 1) x 100.")
    tpot_overhead_ci_pct: Percent | None = Field(
        None,
        description="Half-width of the 95% interval of the overhead, from the repeat-to-repeat spread of "
        "paired (alternating) base and adapter runs: a smaller overhead is within noise.",
    )
    merged_tpot_overhead_pct: Percent | None = Field(None, description="(merged TPOT p95 / base TPOT p95 - 1) x 100.")
    merged_tpot_overhead_ci_pct: Percent | None = Field(
        None, description="Half-width of the 95% interval of the merged overhead (paired runs)."
    )


class AdapterEffect(OpenModel):
    prompts: int = Field(description="Eval records compared with the adapter enabled and disabled.")
    max_logit_delta: float = Field(description="Largest absolute logit change the adapter makes on them.")
    changed_argmax_tokens: int = Field(0, description="Positions whose greedy token the adapter changes.")
    unchanged: bool = Field(
        description="True when the adapter leaves the outputs unchanged (its weights are effectively zero): "
        "serving it is serving the base model."
    )


class TrialResult(OpenModel):
    """result.json: written last, so its presence means the trial is complete. Written by the trial image: its
    identity fields are evidence only (lora_ablation.storage.results.labelled relabels a result by the plan), and its
    figures are bounded (lora_ablation.api.bounds) because the summary sums and averages them."""

    schema_version: int = Field(RESULT_SCHEMA_VERSION, description="Result format version.")
    ablation: Name = Field(description="LoraAblation name.")
    namespace: Short = Field("default", description="LoraAblation namespace.")
    trial: Name = Field(description="Trial name.")
    dataset: Name = Field(description="Dataset name.")
    # 32 names of 128 characters: what a spec's module set can hold; the status's leaderboard repeats them.
    modules: list[SpecModule] = Field(default_factory=list, max_length=32, description="Module set from the spec.")
    rank: int = Field(0, ge=0, le=MAX_RANK, description="LoRA rank.")
    alpha: float = Field(0.0, description="lora_alpha.")
    variant: Short = Field(description="Adapter variant or none.")
    seed: int | None = Field(
        None, description="Training seed (search.seeds); absent for the baseline and for results of older trainers."
    )
    layers: str = Field("all", max_length=320, description="Layer subset that got adapters (search.layers).")
    targeted_module_names: list[ModuleName] = Field(
        default_factory=list, max_length=MAX_NAMES, description="Modules PEFT actually wrapped."
    )
    targeted_parameter_names: list[ModuleName] = Field(
        default_factory=list, max_length=MAX_NAMES, description="3-D parameters PEFT wrapped (MoE)."
    )
    trainable_params: int = Field(0, ge=0, description="Trainable adapter parameters.")
    total_params: int = Field(0, ge=0, description="All parameters of the adapted model.")
    adapter_bytes: int = Field(0, ge=0, description="Size of adapter_model.safetensors.")
    train: TrainMetrics | None = Field(None, description="Training figures; absent for the baseline.")
    eval: EvalMetrics = Field(description="Evaluation figures.")
    latency: LatencyMetrics | None = Field(None, description="Latency figures when latency.enabled.")
    adapter_effect: AdapterEffect | None = Field(
        None, description="Whether the adapter changes the outputs on the eval prompts; absent for the baseline."
    )
    environment: dict[Short, EnvironmentValue] = Field(
        default_factory=dict, max_length=200, description="Library versions, device, host."
    )
    started_at: Short | None = Field(None, description="RFC 3339 start time.")
    finished_at: Short | None = Field(None, description="RFC 3339 finish time.")
    gpu_seconds: Seconds | None = Field(None, description="Wall-clock seconds x GPUs used.")
    compute_seconds: Seconds | None = Field(
        None,
        description="Device-seconds: wall-clock seconds x GPUs used, or x 1 on a CPU-only run (what "
        "execution.maxGpuHours counts); stage one included for a two-stage trial.",
    )
    cpu_seconds: Seconds | None = Field(None, description="CPU time of the trial (user + system, every thread).")

    @model_validator(mode="after")
    def _magnitudes(self) -> TrialResult:
        # Finite is not enough: sums and ratios over thousands of results must stay finite in the summary too.
        for path, value in _numbers(self.model_dump(exclude={"environment"})):
            if abs(value) > MAX_MAGNITUDE:
                # An integer past 1e308 (JSON allows one) has no float: neither float() nor :g on it.
                shown = f"{value:.3g}" if isinstance(value, float) else f"an integer of {len(str(abs(value)))} digits"
                raise ValueError(f"{path}: {shown} is beyond any real score, count or timing (max {MAX_MAGNITUDE:g})")
        return self


def _numbers(node: object, path: str = "") -> list[tuple[str, int | float]]:
    if isinstance(node, dict):
        return [n for key, value in node.items() for n in _numbers(value, f"{path}.{key}" if path else str(key))]
    if isinstance(node, list):
        return [n for index, value in enumerate(node) for n in _numbers(value, f"{path}[{index}]")]
    return [(path, node)] if isinstance(node, (int, float)) and not isinstance(node, bool) else []
