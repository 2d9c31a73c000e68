"""The cluster admin's policy: which images, ServiceAccounts, Secrets, buckets and storage endpoints a
LoraAblation may name. Creating a LoraAblation makes the operator create pods and touch storage with its own
identity, so without this anyone who may create the kind could run any image as any ServiceAccount of the
namespace, read any Secret of it through the trial's environment, and make the operator write (and, with
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
- storage endpoints: storage.endpoint, exactly as written; unset (AWS, or the operator's default) is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from lora_ablation.api.spec import LoraAblationSpec, StorageSpec

ANY = "*"
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

    @classmethod
    def open(cls) -> Policy:
        """Everything allowed: a single-user cluster or a test of something else."""
        return cls((ANY,), (), (ANY,), (ANY,), (ANY,), (ANY,))


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
    refs = [("spec.storage.credentialsSecretRef.name", spec.storage.credentials_secret_ref),
            ("spec.baseModel.tokenSecretRef.name", spec.base_model.token_secret_ref)]  # fmt: skip
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
    return out + storage_violations(spec.storage, policy, default_endpoint)


def parse_list(raw: str) -> tuple[str, ...]:
    """A comma-separated setting (none of these names can hold a comma), blanks dropped."""
    return tuple(item.strip() for item in raw.split(",") if item.strip())
