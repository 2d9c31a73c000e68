"""Where ablation results live: one small key/value API over a local directory or an S3 bucket.

Keys and prefixes are relative, '/'-separated paths below the store's root URI. A prefix names a
directory: `list("trials/a")` matches `trials/a/x` but never `trials/ab/x`, on both backends, so
`delete_prefix` cannot take a neighbour's files with it. S3 failures are mapped onto three exceptions
the operator can act on: FileNotFoundError, StorageUnavailable (retry later), StorageAccessDenied
(fix the spec or the Secret). boto3 is imported only when an S3 store is opened.
"""

from __future__ import annotations

import abc
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import IO, Any

_TMP_SUFFIX = ".store-tmp"  # in-flight local writes; list() skips them
_DELETE_BATCH = 1000  # the most keys one S3 DeleteObjects call accepts
_DENIED = {"AccessDenied", "Forbidden", "NoSuchBucket", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
_DENIED |= {"AllAccessDisabled", "InvalidToken", "ExpiredToken", "AccountProblem"}
_MISSING = {"NoSuchKey", "404", "NotFound"}
_TRANSIENT = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "ServiceUnavailable", "InternalError"}
_HINT = "check storage.credentialsSecretRef and storage.endpoint"
URI_FORMS = "file://relative/path, file:///absolute/path, /absolute/path or s3://bucket/optional/prefix"


class StorageError(Exception):
    """Any storage failure that is not simply a missing key."""


class StorageUnavailable(StorageError):
    """Transient: the endpoint is unreachable, timed out or kept failing (5xx, throttling) after retries."""


class StorageAccessDenied(StorageError):
    """Permanent until someone fixes the spec or the credentials: 403, missing bucket, bad keys."""


class ObjectTooLarge(ValueError):
    """An object is larger than the reader allows (a bounded read: see read_bytes)."""

    def __init__(self, uri: str, size: int | None, limit: int) -> None:
        self.size, self.limit = size, limit
        told = f"{size} bytes" if size is not None else "more than that"
        super().__init__(f"{uri} is {told}; at most {limit} bytes are read")


def _clean(path: str, what: str, *, allow_empty: bool = False) -> str:
    """Validate a relative key or prefix; '.', '..' and empty parts are refused so no key escapes its root."""
    # A trailing '/' on a prefix is harmless; a leading one is refused, so "/" can never mean "everything".
    trimmed = path.rstrip("/") if allow_empty and not path.startswith("/") else path
    if not trimmed:
        if allow_empty:
            return ""
        raise ValueError(f"empty {what}")
    if any(part in ("", ".", "..") for part in trimmed.split("/")) or "\\" in trimmed or "\0" in trimmed:
        raise ValueError(f"invalid {what} {path!r}: expected a relative path like 'a/b' without '.' or '..' parts")
    return trimmed


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _range_total(content_range: str | None) -> int | None:
    """'bytes 0-99/5000' -> 5000."""
    total = (content_range or "").rpartition("/")[2]
    return int(total) if total.isdigit() else None


def _join(*parts: str) -> str:
    return "/".join(part for part in parts if part)


def _not_found(uri: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, "no such object", uri)


def _local_files(local_dir: Path) -> list[tuple[Path, str]]:
    if not local_dir.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such directory", str(local_dir))
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    return [(path, path.relative_to(local_dir).as_posix()) for path in files]


def _atomic_write(dest: Path, fill: Callable[[IO[bytes]], Any]) -> None:
    """Readers see the old file or the new one, never half of one: write a sibling temp file, then rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name[:100]}.", suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            fill(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; other pods (other uids) read these results
        os.replace(tmp, dest)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class Store(abc.ABC):
    """A root URI plus keys below it. Subclasses implement the byte-level operations."""

    uri: str

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    def _uri(self, key: str) -> str:
        return _join(self.uri, key)

    @abc.abstractmethod
    def child(self, *parts: str) -> Store: ...

    @abc.abstractmethod
    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        """The object's bytes; with max_bytes, never more than that read or held (ObjectTooLarge)."""

    @abc.abstractmethod
    def version(self, key: str) -> str:
        """A token that changes whenever the object is rewritten (ETag and size; mtime and size locally)."""

    @abc.abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None: ...

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]: ...

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> int: ...

    @abc.abstractmethod
    def _upload_file(self, path: Path, key: str) -> None: ...

    @abc.abstractmethod
    def _download_file(self, key: str, dest: Path) -> None: ...

    def read_text(self, key: str, max_bytes: int | None = None) -> str:
        return self.read_bytes(key, max_bytes).decode("utf-8")

    def read_json(self, key: str, max_bytes: int | None = None) -> Any:
        """Strict JSON: NaN and Infinity (which Python writes and other readers refuse) are errors too."""
        return json.loads(self.read_text(key, max_bytes), parse_constant=_refuse_constant)

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode("utf-8"))

    def write_json(self, key: str, obj: Any) -> None:
        # allow_nan=False: Python would write NaN and Infinity, which no other JSON reader accepts.
        self.write_text(key, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False, allow_nan=False) + "\n")

    def upload_dir(self, local_dir: Path, prefix: str) -> int:
        prefix = _clean(prefix, "prefix", allow_empty=True)
        files = _local_files(Path(local_dir))
        for path, relative in files:
            self._upload_file(path, _join(prefix, relative))
        return len(files)

    def download_prefix(self, prefix: str, local_dir: Path) -> int:
        prefix = _clean(prefix, "prefix", allow_empty=True)
        local_dir = Path(local_dir)
        local_dir.mkdir(parents=True, exist_ok=True)
        keys = self.list(prefix)
        for key in keys:
            dest = local_dir / (key[len(prefix) + 1 :] if prefix else key)
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._download_file(key, dest)
        return len(keys)


class LocalStore(Store):
    """A directory on a local disk or a mounted volume."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))
        self.uri = "file://" + self.root.as_posix()

    def _path(self, key: str) -> Path:
        return self.root / _clean(key, "key")

    def child(self, *parts: str) -> LocalStore:
        return LocalStore(self.root / _clean("/".join(p.rstrip("/") for p in parts), "child path"))

    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        try:
            with self._path(key).open("rb") as handle:
                data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise _not_found(self._uri(key)) from None
        if max_bytes is not None and len(data) > max_bytes:
            raise ObjectTooLarge(self._uri(key), self._path(key).stat().st_size, max_bytes)
        return data

    def version(self, key: str) -> str:
        try:
            info = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            raise _not_found(self._uri(key)) from None
        return f"{info.st_mtime_ns}-{info.st_size}"

    def write_bytes(self, key: str, data: bytes) -> None:
        _atomic_write(self._path(key), lambda handle: handle.write(data))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self.root / _clean(prefix, "prefix", allow_empty=True)
        keys = []
        for directory, _, names in os.walk(base):
            for name in names:
                if not name.endswith(_TMP_SUFFIX):
                    keys.append(Path(directory, name).relative_to(self.root).as_posix())
        return sorted(keys)

    def delete_prefix(self, prefix: str) -> int:
        base = self.root / _clean(prefix, "prefix", allow_empty=True)
        keys = self.list(prefix)
        for key in keys:
            (self.root / key).unlink()
        # Leave no empty directories behind, as deleting objects does on S3; non-empty ones stay.
        for directory, _, _ in os.walk(base, topdown=False):
            if Path(directory) != self.root:
                with suppress(OSError):
                    os.rmdir(directory)
        return len(keys)

    def _upload_file(self, path: Path, key: str) -> None:
        with path.open("rb") as source:
            _atomic_write(self._path(key), lambda handle: shutil.copyfileobj(source, handle))

    def _download_file(self, key: str, dest: Path) -> None:
        with self._path(key).open("rb") as source:
            _atomic_write(dest, lambda handle: shutil.copyfileobj(source, handle))


def _translate_client_error(error: Any, *, uri: str, bucket: str, endpoint: str) -> Exception:
    """Map a botocore ClientError to FileNotFoundError or one of our errors. Credentials never appear."""
    code = str(error.response.get("Error", {}).get("Code", ""))
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    operation = getattr(error, "operation_name", "request")
    if code == "NoSuchBucket":
        return StorageAccessDenied(f"bucket {bucket!r} does not exist at {endpoint} (for {uri}): {_HINT}")
    if code in _DENIED or status == 403:
        return StorageAccessDenied(f"access to {uri} denied at {endpoint} ({code or status} on {operation}): {_HINT}")
    if code in _MISSING:
        return _not_found(uri)
    if code in _TRANSIENT or status >= 500:
        return StorageUnavailable(f"storage endpoint {endpoint} failed for {uri} ({code or status}) after retries")
    return StorageError(f"{operation} on {uri} failed at {endpoint}: {code or status}")


class S3Store(Store):
    """A bucket and key prefix on AWS S3 or any S3-compatible endpoint (MinIO, Ceph, ...)."""

    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        """Use open_store(); `client` is a boto3 S3 client from make_client(), shared with child stores."""
        self.bucket, self.prefix, self._client = bucket, prefix, client
        self.uri = f"s3://{_join(bucket, prefix)}"
        self._bucket_checked = False

    @staticmethod
    def make_client(endpoint: str | None, region: str | None, retries: int, timeout: float) -> Any:
        import boto3  # lazy: keeps `import lora_ablation.store` (and the CLI) fast
        from botocore.config import Config

        options: dict[str, Any] = {
            "retries": {"max_attempts": retries, "mode": "standard"},
            "connect_timeout": timeout,
            "read_timeout": timeout,
            # boto3 >= 1.36 sends CRC checksums by default, which older MinIO and Ceph reject.
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
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
            raise StorageAccessDenied(f"cannot access {uri} ({type(error).__name__}): {_HINT}") from error

    def _raise(self, error: Any, uri: str) -> None:
        translated = _translate_client_error(error, uri=uri, bucket=self.bucket, endpoint=self.endpoint)
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
            raise StorageAccessDenied(f"bucket {self.bucket!r} does not exist at {self.endpoint}: {_HINT}") from None
        self._bucket_checked = True

    def child(self, *parts: str) -> S3Store:
        prefix = _join(self.prefix, _clean("/".join(p.rstrip("/") for p in parts), "child path"))
        return S3Store(self.bucket, prefix, self._client)

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

    def _full_keys(self, prefix: str) -> list[str]:
        full = _join(self.prefix, _clean(prefix, "prefix", allow_empty=True))
        keys = []
        with self._errors(prefix):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full + "/" if full else ""
            )
            for page in pages:
                # Keys ending in '/' are "folder" markers some consoles create, not objects.
                keys.extend(item["Key"] for item in page.get("Contents", []) if not item["Key"].endswith("/"))
        return sorted(keys)

    def list(self, prefix: str = "") -> list[str]:
        skip = len(self.prefix) + 1 if self.prefix else 0
        return [key[skip:] for key in self._full_keys(prefix)]

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


def open_store(
    uri: str, endpoint: str | None = None, region: str | None = None, *, retries: int = 5, timeout: float = 10.0
) -> Store:
    """Open the store for `uri`; endpoint, region, retries and timeout only matter for s3:// URIs."""
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"storage URI {uri!r} names no bucket; expected {URI_FORMS}")
        prefix = _clean(prefix, "S3 prefix", allow_empty=True)
        return S3Store(bucket, prefix, S3Store.make_client(endpoint, region, retries, timeout))
    if uri.startswith("file://") and len(uri) > len("file://"):
        return LocalStore(Path.cwd() / uri[len("file://") :])  # an absolute path wins over cwd
    if uri.startswith("/"):
        return LocalStore(Path(uri))
    raise ValueError(f"unsupported storage URI {uri!r}; expected {URI_FORMS}")
