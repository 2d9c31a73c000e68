"""The S3 backend of lora_ablation.storage.store: a bucket and key prefix on AWS S3 or any S3-compatible endpoint.

Open it through lora_ablation.storage.store.open_store. botocore failures are translated into FileNotFoundError,
StorageUnavailable, StorageAccessDenied or StorageError; boto3 itself is imported only when a client is made.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from lora_ablation.storage.store import (
    ObjectTooLarge,
    StorageAccessDenied,
    StorageError,
    StorageUnavailable,
    Store,
    _clean,
    _join,
    _not_found,
)

_DELETE_BATCH = 1000  # the most keys one S3 DeleteObjects call accepts
_DENIED = {"AccessDenied", "Forbidden", "NoSuchBucket", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
_DENIED |= {"AllAccessDisabled", "InvalidToken", "ExpiredToken", "AccountProblem"}
_MISSING = {"NoSuchKey", "404", "NotFound"}
_TRANSIENT = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "ServiceUnavailable", "InternalError"}
# What to check when access fails, as the caller's user would fix it: in the cluster the Secret the Job mounts,
# on a workstation (the CLI) the AWS_* environment and the endpoint flag.
CLUSTER_HINT = "check storage.credentialsSecretRef and storage.endpoint"
LOCAL_HINT = (
    "check the AWS_* credentials in this shell (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) and the "
    "endpoint (--endpoint, spec.storage.endpoint or AWS_ENDPOINT_URL_S3)"
)


def _range_total(content_range: str | None) -> int | None:
    """'bytes 0-99/5000' -> 5000."""
    total = (content_range or "").rpartition("/")[2]
    return int(total) if total.isdigit() else None


def _translate_client_error(error: Any, *, uri: str, bucket: str, endpoint: str, hint: str) -> Exception:
    """Map a botocore ClientError to FileNotFoundError or one of our errors. Credentials never appear."""
    code = str(error.response.get("Error", {}).get("Code", ""))
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    operation = getattr(error, "operation_name", "request")
    if code == "NoSuchBucket":
        return StorageAccessDenied(f"bucket {bucket!r} does not exist at {endpoint} (for {uri}): {hint}")
    if code in _DENIED or status == 403:
        return StorageAccessDenied(f"access to {uri} denied at {endpoint} ({code or status} on {operation}): {hint}")
    if code in _MISSING:
        return _not_found(uri)
    if code in _TRANSIENT or status >= 500:
        return StorageUnavailable(f"storage endpoint {endpoint} failed for {uri} ({code or status}) after retries")
    return StorageError(f"{operation} on {uri} failed at {endpoint}: {code or status}")


class S3Store(Store):
    """A bucket and key prefix on AWS S3 or any S3-compatible endpoint (MinIO, Ceph, ...)."""

    def __init__(self, bucket: str, prefix: str, client: Any, hint: str = CLUSTER_HINT) -> None:
        """Use open_store(); `client` is a boto3 S3 client from make_client(), shared with child stores; `hint`
        ends every access error (CLUSTER_HINT or LOCAL_HINT)."""
        self.bucket, self.prefix, self._client, self.hint = bucket, prefix, client, hint
        self.uri = f"s3://{_join(bucket, prefix)}"
        self._bucket_checked = False

    @staticmethod
    def make_client(endpoint: str | None, region: str | None, retries: int, timeout: float) -> Any:
        import boto3  # lazy: keeps importing the store modules (and the CLI) fast
        from botocore.config import Config

        options: dict[str, Any] = {
            "retries": {"max_attempts": retries, "mode": "standard"},
            "connect_timeout": timeout,
            "read_timeout": timeout,
            # boto3 >= 1.36 sends CRC checksums by default, which older MinIO and Ceph reject.
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
            "max_pool_connections": 16,  # the operator reads a restart's results 16 at a time
        }
        if endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"):
            # MinIO and friends rarely have wildcard DNS for virtual-hosted buckets.
            options["s3"] = {"addressing_style": "path"}
        kwargs: dict[str, Any] = {"config": Config(**options)}
        if endpoint:  # otherwise boto3 itself honours AWS_ENDPOINT_URL_S3
            kwargs["endpoint_url"] = endpoint
        if region:
            kwargs["region_name"] = region
        return boto3.client("s3", **kwargs)

    @property
    def endpoint(self) -> str:
        return str(self._client.meta.endpoint_url)

    def _key(self, key: str) -> str:
        return _join(self.prefix, _clean(key, "key"))

    @contextmanager
    def _errors(self, key: str = "") -> Iterator[None]:
        from boto3.exceptions import RetriesExceededError, S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError

        uri = self._uri(key)
        try:
            yield
        except S3UploadFailedError as error:
            cause = error.__context__  # boto3 raises it while handling the ClientError, without `from`
            if isinstance(cause, ClientError):
                self._raise(cause, uri)
            raise StorageError(f"upload to {uri} failed") from error
        except ClientError as error:
            self._raise(error, uri)
        except (HTTPClientError, ConnectionError, RetriesExceededError) as error:
            name = type(error).__name__
            raise StorageUnavailable(f"storage endpoint {self.endpoint} unreachable for {uri}: {name}") from error
        except BotoCoreError as error:  # NoCredentialsError, PartialCredentialsError, bad config
            raise StorageAccessDenied(f"cannot access {uri} ({type(error).__name__}): {self.hint}") from error

    def _raise(self, error: Any, uri: str) -> None:
        translated = _translate_client_error(error, uri=uri, bucket=self.bucket, endpoint=self.endpoint, hint=self.hint)
        if isinstance(translated, FileNotFoundError):
            raise translated from None  # the botocore chain adds nothing to "no such object"
        raise translated from error

    def _check_bucket(self) -> None:
        """HEAD on a key answers a bare 404 for a missing bucket too; ask the bucket once to tell them apart."""
        if self._bucket_checked:
            return
        try:
            with self._errors():
                self._client.head_bucket(Bucket=self.bucket)
        except FileNotFoundError:
            missing = f"bucket {self.bucket!r} does not exist at {self.endpoint}: {self.hint}"
            raise StorageAccessDenied(missing) from None
        self._bucket_checked = True

    def child(self, *parts: str) -> S3Store:
        prefix = _join(self.prefix, _clean("/".join(p.rstrip("/") for p in parts), "child path"))
        return S3Store(self.bucket, prefix, self._client, self.hint)

    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        from botocore.exceptions import ClientError

        with self._errors(key):
            if max_bytes is None:
                return self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
            try:
                response = self._client.get_object(Bucket=self.bucket, Key=self._key(key), Range=f"bytes=0-{max_bytes}")
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") == "InvalidRange":
                    return b""  # an empty object has no byte 0
                raise
            with closing(response["Body"]) as body:
                data = body.read(max_bytes + 1)  # bounded even where an endpoint ignores Range
        total = _range_total(response.get("ContentRange"))
        if len(data) > max_bytes or (total is not None and total > max_bytes):
            raise ObjectTooLarge(self._uri(key), total, max_bytes)
        return data

    def version(self, key: str) -> str:
        with self._errors(key):
            head = self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        return f"{head.get('ETag', '')}-{head.get('ContentLength', '')}"

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._errors(key):
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def exists(self, key: str) -> bool:
        try:
            with self._errors(key):
                self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except FileNotFoundError:
            self._check_bucket()
            return False
        return True

    def _full_items(self, prefix: str) -> dict[str, str]:
        """Full key -> version, as version() spells it (a listing reports each object's ETag and size)."""
        full = _join(self.prefix, _clean(prefix, "prefix", allow_empty=True))
        items = {}
        with self._errors(prefix):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full + "/" if full else ""
            )
            for page in pages:
                for item in page.get("Contents", []):
                    if not item["Key"].endswith("/"):  # "folder" markers some consoles create are not objects
                        items[item["Key"]] = f"{item.get('ETag', '')}-{item.get('Size', '')}"
        return dict(sorted(items.items()))

    def _full_keys(self, prefix: str) -> list[str]:
        return list(self._full_items(prefix))

    def list(self, prefix: str = "") -> list[str]:
        skip = len(self.prefix) + 1 if self.prefix else 0
        return [key[skip:] for key in self._full_keys(prefix)]

    def list_versions(self, prefix: str = "") -> dict[str, str]:
        skip = len(self.prefix) + 1 if self.prefix else 0
        return {key[skip:]: version for key, version in self._full_items(prefix).items()}

    def delete(self, key: str) -> bool:
        if not self.exists(key):
            return False
        with self._errors(key):
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))
        return True

    def delete_prefix(self, prefix: str) -> int:
        keys = self._full_keys(prefix)
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = [{"Key": key} for key in keys[start : start + _DELETE_BATCH]]
            with self._errors(prefix):
                response = self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            if errors := response.get("Errors"):  # DeleteObjects reports per-key failures in a 200 response
                first = f"s3://{self.bucket}/{errors[0].get('Key')}: {errors[0].get('Code')}"
                raise StorageError(f"could not delete {len(errors)} objects under {self._uri(prefix)}, first {first}")
        return len(keys)

    def _upload_file(self, path: Path, key: str) -> None:
        with self._errors(key):
            self._client.upload_file(str(path), self.bucket, self._key(key))

    def _download_file(self, key: str, dest: Path) -> None:
        with self._errors(key):
            self._client.download_file(self.bucket, self._key(key), str(dest))
