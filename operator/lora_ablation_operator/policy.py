"""The cluster admin's policy: which images, ServiceAccounts, Secrets, buckets, storage endpoints, volume claims,
priority classes and placements a LoraAblation may name. Creating a LoraAblation makes the operator create pods
and touch storage with its own identity, so without this anyone who may create the kind could run any image as
any ServiceAccount of the namespace, read any Secret of it through the trial's environment, mount any of its
claims, preempt other pods, land on nodes kept for others, and make the operator write (and, with
retainOnDelete: false, delete) in any bucket at any endpoint. Pure: spec + policy -> violations.

The chart's ValidatingAdmissionPolicy (templates/admission-policy.yaml) says the same rules in CEL at apply
time; tests/policy_cases.py is the one case table both are tested against.

Rules (each list also accepts "*", meaning anything):
- image repositories: an entry is a repository (`ghcr.io/org/trainer`, matching any tag or digest of it) or a
  prefix ending in "/" (`registry.corp/ml/`); the operator's own trainer image is always allowed;
- image digests (`sha256:<64 hex>`): when any is listed, execution.image must be pinned to one of them;
- ServiceAccounts: execution.serviceAccountName unset (the namespace's default) is always allowed;
- Secrets: credentialsSecretRef and tokenSecretRef names; the operator's default credentials Secret is allowed;
- buckets: every s3:// URI of the spec (storage, base model, datasets), since trials may run with the
  operator's default credentials and the operator writes and deletes results with its own;
- storage endpoints: storage.endpoint, exactly as written; unset (AWS, or the operator's default) is allowed;
- tracking URIs: tracking.mlflow.trackingUri, exactly as written (trial pods send the run's credentials there and
  the operator its own when it logs the summary); its credentialsSecretRef name is a Secret like the others;
- claims: every PersistentVolumeClaim a trial pod mounts (the claim of each pvc:// URI, execution.modelCacheClaim);
- priority classes: execution.priorityClassName; unset (the cluster's default) is always allowed;
- tolerations: each toleration's key and effect (a toleration without a key tolerates every taint and one without
  an effect every effect of its key: the first needs "*", the second "*" or all three effects listed);
- node selectors: each execution.nodeSelector label, by an entry "key" (any value) or "key=value";
- affinity: execution.affinity (which can pick nodes by any label) only when allowed at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from lora_ablation.api.spec import LoraAblationSpec, StorageSpec

ANY = "*"
EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# The chart's defaults too: trials may tolerate the GPU taint and pick a GPU model, nothing else.
GPU_TAINT = "nvidia.com/gpu"
GPU_LABELS = ("nvidia.com/gpu.product", "nvidia.com/gpu.memory", "cloud.google.com/gke-accelerator")
DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
# A reference is [registry[:port]/]path[:tag][@digest]; a tag never holds '/', a registry port is before one.
TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
DIGEST_SUFFIX = r"[a-z0-9]+:[a-f0-9]+"
_REFERENCE = re.compile(rf"^(?P<repo>[^@\s]+?)(:(?P<tag>{TAG}))?(@(?P<digest>{DIGEST_SUFFIX}))?$")


class Forbidden(ValueError):
    """Storage the policy does not allow (raised where the operator would open it)."""


@dataclass(frozen=True)
class Policy:
    image_repositories: tuple[str, ...] = ()
    image_digests: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()
    buckets: tuple[str, ...] = ()
    storage_endpoints: tuple[str, ...] = ()
    tracking_uris: tuple[str, ...] = ()
    claims: tuple[str, ...] = ()
    priority_classes: tuple[str, ...] = ()
    toleration_keys: tuple[str, ...] = (GPU_TAINT,)
    toleration_effects: tuple[str, ...] = EFFECTS
    node_selectors: tuple[str, ...] = GPU_LABELS
    affinity: bool = False

    @classmethod
    def open(cls) -> Policy:
        """Everything allowed: a single-user cluster or a test of something else."""
        return cls(image_repositories=(ANY,), service_accounts=(ANY,), secrets=(ANY,), buckets=(ANY,),
                   storage_endpoints=(ANY,), tracking_uris=(ANY,), claims=(ANY,), priority_classes=(ANY,),
                   toleration_keys=(ANY,), toleration_effects=(ANY,), node_selectors=(ANY,),
                   affinity=True)  # fmt: skip


def image_parts(image: str) -> tuple[str, str | None]:
    """(repository, digest) of an image reference; the whole reference as repository when it does not parse."""
    match = _REFERENCE.fullmatch(image)
    if not match:
        return image, None
    return match["repo"], match["digest"]


def image_allowed(image: str, repositories: Iterable[str]) -> bool:
    repository, _ = image_parts(image)
    return any(r == ANY or repository == r or (r.endswith("/") and repository.startswith(r)) for r in repositories)


def bucket_of(uri: str) -> str | None:
    return uri[len("s3://") :].split("/", 1)[0] if uri.startswith("s3://") else None


def claim_of(uri: str) -> str | None:
    return uri[len("pvc://") :].split("/", 1)[0] if uri.startswith("pvc://") else None


def _listed(value: str, allowed: Iterable[str]) -> bool:
    return any(a in (ANY, value) for a in allowed)


def _shown(allowed: Iterable[str], always: str | None = None) -> str:
    items = [*([always] if always else []), *allowed]
    return ", ".join(items) if items else "none"


def storage_violations(storage: StorageSpec, policy: Policy, default_endpoint: str | None = None) -> list[str]:
    """What the operator's own storage access (summary writes, result reads, deletion) would break."""
    out = []
    bucket = bucket_of(storage.uri)
    if bucket is not None and not _listed(bucket, policy.buckets):
        out.append(f"spec.storage.uri: bucket {bucket!r} is not an allowed bucket (allowed: "
                   f"{_shown(policy.buckets)}, chart value policy.allowedBuckets)")  # fmt: skip
    endpoint = storage.endpoint
    if endpoint and endpoint != default_endpoint and not _listed(endpoint, policy.storage_endpoints):
        allowed = _shown(policy.storage_endpoints, default_endpoint)
        out.append(f"spec.storage.endpoint: {endpoint!r} is not an allowed storage endpoint (allowed: {allowed}, "
                   "chart value policy.allowedStorageEndpoints)")  # fmt: skip
    return out


def violations(spec: LoraAblationSpec, policy: Policy, *, trainer_image: str, default_secret: str | None = None,
               default_endpoint: str | None = None) -> list[str]:  # fmt: skip
    """Every rule the spec breaks, each naming the field path and the rule; empty when the spec is allowed."""
    out = []
    image = spec.execution.image
    if image is not None:
        default_repository = image_parts(trainer_image)[0]
        if not image_allowed(image, (default_repository, *policy.image_repositories)):
            out.append(f"spec.execution.image: {image!r} is not from an allowed repository (allowed: "
                       f"{_shown(policy.image_repositories, default_repository)}, chart value "
                       "policy.allowedImageRepositories)")  # fmt: skip
        digest = image_parts(image)[1]
        if policy.image_digests and not (digest and _listed(digest, policy.image_digests)):
            out.append(f"spec.execution.image: {image!r} must be pinned by an allowed digest (image@sha256:..., "
                       "chart value policy.allowedImageDigests)")  # fmt: skip
    account = spec.execution.service_account_name
    if account is not None and not _listed(account, policy.service_accounts):
        out.append(f"spec.execution.serviceAccountName: {account!r} is not an allowed ServiceAccount (allowed: "
                   f"{_shown(policy.service_accounts)}, chart value policy.allowedServiceAccounts)")  # fmt: skip
    mlflow = spec.tracking.mlflow if spec.tracking else None
    refs = [("spec.storage.credentialsSecretRef.name", spec.storage.credentials_secret_ref),
            ("spec.baseModel.tokenSecretRef.name", spec.base_model.token_secret_ref),
            ("spec.tracking.mlflow.credentialsSecretRef.name",
             mlflow.credentials_secret_ref if mlflow else None)]  # fmt: skip
    for path, ref in refs:
        if ref is not None and ref.name != default_secret and not _listed(ref.name, policy.secrets):
            out.append(f"{path}: Secret {ref.name!r} is not one trials may use (allowed: "
                       f"{_shown(policy.secrets, default_secret)}, chart value policy.allowedSecrets)")  # fmt: skip
    reads = [("spec.baseModel.uri", spec.base_model.uri)]
    for i, dataset in enumerate(spec.datasets):
        reads += [(f"spec.datasets[{i}].train", dataset.train), (f"spec.datasets[{i}].eval", dataset.eval)]
    for path, uri in reads:
        bucket = bucket_of(uri)
        if bucket is not None and not _listed(bucket, policy.buckets):
            out.append(f"{path}: bucket {bucket!r} is not an allowed bucket (allowed: {_shown(policy.buckets)}, "
                       "chart value policy.allowedBuckets)")  # fmt: skip
    claims = [(path, claim_of(uri)) for path, uri in reads]
    claims.append(("spec.execution.modelCacheClaim", spec.execution.model_cache_claim))
    for path, claim in claims:
        if claim is not None and not _listed(claim, policy.claims):
            out.append(f"{path}: PersistentVolumeClaim {claim!r} is not one trials may mount (allowed: "
                       f"{_shown(policy.claims)}, chart value policy.allowedClaims)")  # fmt: skip
    if mlflow is not None and not _listed(mlflow.tracking_uri, policy.tracking_uris):
        out.append(f"spec.tracking.mlflow.trackingUri: {mlflow.tracking_uri!r} is not an allowed MLflow tracking "
                   f"server (allowed: {_shown(policy.tracking_uris)}, chart value "
                   "policy.allowedTrackingUris)")  # fmt: skip
    return out + placement_violations(spec, policy) + storage_violations(spec.storage, policy, default_endpoint)


def _every_effect(allowed: tuple[str, ...]) -> bool:
    return ANY in allowed or all(e in allowed for e in EFFECTS)


def placement_violations(spec: LoraAblationSpec, policy: Policy) -> list[str]:
    """Where trial pods may run and whom they may preempt: priority class, tolerations, node selector, affinity."""
    out, execution = [], spec.execution
    priority = execution.priority_class_name
    if priority is not None and not _listed(priority, policy.priority_classes):
        out.append(f"spec.execution.priorityClassName: {priority!r} is not an allowed PriorityClass (allowed: "
                   f"{_shown(policy.priority_classes)}, chart value policy.allowedPriorityClasses)")  # fmt: skip
    for i, toleration in enumerate(execution.tolerations or []):
        key = toleration.key or ""
        if not (_listed(key, policy.toleration_keys) if key else ANY in policy.toleration_keys):
            what = f"key {key!r}" if key else "no key (every taint)"
            out.append(f"spec.execution.tolerations[{i}].key: {what} is not an allowed toleration key (allowed: "
                       f"{_shown(policy.toleration_keys)}, chart value policy.allowedTolerationKeys)")  # fmt: skip
        effect = toleration.effect or ""
        if not (_listed(effect, policy.toleration_effects) if effect else _every_effect(policy.toleration_effects)):
            what = f"effect {effect!r}" if effect else "no effect (every effect)"
            out.append(f"spec.execution.tolerations[{i}].effect: {what} is not an allowed toleration effect "
                       f"(allowed: {_shown(policy.toleration_effects)}, chart value "
                       "policy.allowedTolerationEffects)")  # fmt: skip
    for key, value in (execution.node_selector or {}).items():
        if not any(a in (ANY, key, f"{key}={value}") for a in policy.node_selectors):
            out.append(f"spec.execution.nodeSelector: {key}={value} is not an allowed node label (allowed: "
                       f"{_shown(policy.node_selectors)}, chart value policy.allowedNodeSelectors)")  # fmt: skip
    if execution.affinity and not policy.affinity:
        out.append("spec.execution.affinity: affinity is not allowed, as it can pick nodes by any label (use a "
                   "nodeSelector within policy.allowedNodeSelectors, or chart value policy.allowAffinity)")
    return out


def parse_list(raw: str) -> tuple[str, ...]:
    """A comma-separated setting (none of these names or labels can hold a comma), blanks dropped."""
    return tuple(item.strip() for item in raw.split(",") if item.strip())
