"""Where ablation results live: one small key/value API over a local directory or an S3 bucket.

Keys and prefixes are relative, '/'-separated paths below the store's root URI. A prefix names a
directory: `list("trials/a")` matches `trials/a/x` but never `trials/ab/x`, on both backends, so
`delete_prefix` cannot take a neighbour's files with it. S3 failures are mapped onto three exceptions
the operator can act on: FileNotFoundError, StorageUnavailable (retry later), StorageAccessDenied
(fix the spec or the Secret). The S3 backend lives in store_s3; it (and boto3) is imported only when an S3
store is opened.
"""

from __future__ import annotations

import abc
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

_TMP_SUFFIX = ".store-tmp"  # in-flight local writes; list() skips them
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
    def list_versions(self, prefix: str = "") -> dict[str, str]:
        """Every key under prefix with its version() token, from one listing (no request per object)."""

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> int: ...

    @abc.abstractmethod
    def delete(self, key: str) -> bool:
        """Remove one object; False when there was none."""

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

    def list_versions(self, prefix: str = "") -> dict[str, str]:
        out = {}
        for key in self.list(prefix):
            with suppress(FileNotFoundError):  # removed since the walk saw it
                out[key] = self.version(key)
        return out

    def delete(self, key: str) -> bool:
        try:
            self._path(key).unlink()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return False
        return True

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
