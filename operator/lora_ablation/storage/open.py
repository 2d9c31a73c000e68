"""Opening a store by URI: file:// and plain paths locally, s3:// through the S3 backend (which imports boto3, so
it is imported only when an S3 store is opened). Above both backends, so neither imports the other's opener."""

from __future__ import annotations

import os
from pathlib import Path

from lora_ablation.storage.store import URI_FORMS, LocalStore, Store, _clean


def open_store(
    uri: str,
    endpoint: str | None = None,
    region: str | None = None,
    *,
    retries: int = 5,
    timeout: float = 10.0,
    local: bool = False,
) -> Store:
    """Open the store for `uri`; endpoint, region, retries and timeout only matter for s3:// URIs. `local`: opened
    by the CLI on a workstation, so access errors point at the AWS_* environment and --endpoint, not at the
    cluster's credentialsSecretRef."""
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"storage URI {uri!r} names no bucket; expected {URI_FORMS}")
        prefix = _clean(prefix, "S3 prefix", allow_empty=True)
        from lora_ablation.storage.s3 import CLUSTER_HINT, LOCAL_HINT, S3Store  # lazy: boto3 only when S3 is used

        client = S3Store.make_client(endpoint, region, retries, timeout)
        return S3Store(bucket, prefix, client, LOCAL_HINT if local else CLUSTER_HINT)
    if uri.startswith("file://") and len(uri) > len("file://"):
        return LocalStore(Path.cwd() / uri[len("file://") :])  # an absolute path wins over cwd
    if uri.startswith("/"):
        return LocalStore(Path(uri))
    raise ValueError(f"unsupported storage URI {uri!r}; expected {URI_FORMS}")


def plain_path_uri(text: str) -> str:
    """A store named on the command line: a plain path (no scheme) is a local directory, as file://<abspath>."""
    return text if "://" in text else "file://" + os.path.abspath(text)
