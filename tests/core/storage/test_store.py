"""The storage layer against a real local directory and a real S3 API (moto's server, over HTTP)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from lora_ablation.storage.open import open_store
from lora_ablation.storage.s3 import CLUSTER_HINT, S3Store, _translate_client_error
from lora_ablation.storage.store import LocalStore, StorageAccessDenied, StorageError, StorageUnavailable, Store
from support.s3 import free_port


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return open_store(f"file://{tmp_path}/root")
    endpoint, bucket = request.getfixturevalue("s3_bucket")  # only S3 cases pay for the moto server
    return open_store(f"s3://{bucket}/root", endpoint=endpoint)


def test_round_trip_bytes_text_json(store: Store) -> None:
    store.write_bytes("a/b.bin", b"\x00\xff")
    store.write_text("t.txt", "héllo")
    store.write_json("r/result.json", {"z": 1, "a": [1.5, None], "name": "é"})
    assert store.read_bytes("a/b.bin") == b"\x00\xff"
    assert store.read_text("t.txt") == "héllo"
    assert store.read_json("r/result.json") == {"z": 1, "a": [1.5, None], "name": "é"}
    raw = store.read_text("r/result.json")
    assert raw.endswith("}\n") and raw.startswith('{\n  "z": 1')  # indent 2, insertion order kept
    store.write_bytes("a/b.bin", b"new")
    assert store.read_bytes("a/b.bin") == b"new"


def test_missing_key_is_file_not_found_naming_the_uri(store: Store) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        store.read_bytes("nope/missing.json")
    assert f"{store.uri}/nope/missing.json" in str(caught.value)
    assert not store.exists("nope/missing.json")
    store.write_text("nope/here.txt", "x")
    assert store.exists("nope/here.txt")
    assert not store.exists("nope")  # a "directory" is not an object


def test_list_is_recursive_sorted_and_prefixes_are_directories(store: Store) -> None:
    for key in ["b/2", "a/1", "a/sub/3", "ab/4", "top"]:
        store.write_text(key, key)
    assert store.list() == ["a/1", "a/sub/3", "ab/4", "b/2", "top"]
    assert store.list("a") == ["a/1", "a/sub/3"]  # not ab/4
    assert store.list("a/") == ["a/1", "a/sub/3"]
    assert store.list("missing") == []


@pytest.mark.slow  # ~5 s on S3: one PUT per object, and threads do not help against an in-process server
def test_list_paginates_past_1000(store: Store) -> None:
    keys = [f"many/{i:04d}" for i in range(1005)]  # one more page than S3's 1000-key maximum
    for key in keys:
        store.write_bytes(key, b"x")
    assert store.list("many") == keys
    assert store.delete_prefix("many") == 1005
    assert store.list() == []


def test_a_listing_reports_each_version_as_version_does(store: Store) -> None:
    store.write_text("t/result.json", "one")
    store.write_text("t/sub/stage-one.json", "two")
    listed = store.list_versions()
    assert listed == {key: store.version(key) for key in store.list()} and len(listed) == 2
    store.write_text("t/result.json", "rewritten")
    assert store.list_versions("t")["t/result.json"] == store.version("t/result.json") != listed["t/result.json"]
    assert store.child("t").list_versions() == {"result.json": store.version("t/result.json"),
                                                "sub/stage-one.json": listed["t/sub/stage-one.json"]}  # fmt: skip


def test_delete_removes_one_object(store: Store) -> None:
    store.write_text("t/failure.json", "x")
    store.write_text("t/failure.json.bak", "y")
    assert store.delete("t/failure.json") is True and store.delete("t/failure.json") is False
    assert store.list() == ["t/failure.json.bak"] and store.delete("t") is False


def test_delete_prefix_counts_and_spares_neighbours(store: Store) -> None:
    for key in ["t/a/1", "t/a/deep/2", "t/ab/3", "keep"]:
        store.write_text(key, "x")
    assert store.delete_prefix("t/a") == 2
    assert store.list() == ["keep", "t/ab/3"]
    assert store.delete_prefix("t/a") == 0
    for risky in ("/", "/t", "t/../t"):  # never "everything" by accident
        with pytest.raises(ValueError):
            store.delete_prefix(risky)
    assert store.list() == ["keep", "t/ab/3"]


def test_upload_dir_and_download_prefix_round_trip(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "adapter"
    files = {"adapter_config.json": b"{}", "weights/model.safetensors": os.urandom(300), "a/b/c/d.txt": b"deep"}
    for relative, data in files.items():
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        (source / relative).write_bytes(data)
    assert store.upload_dir(source, "trials/t1/adapter") == 3
    assert store.list("trials") == sorted(f"trials/t1/adapter/{r}" for r in files)
    target = tmp_path / "fetched" / "here"
    assert store.download_prefix("trials/t1", target) == 3
    for relative, data in files.items():
        assert (target / "adapter" / relative).read_bytes() == data
    assert store.download_prefix("nothing/here", tmp_path / "empty") == 0
    assert (tmp_path / "empty").is_dir()
    with pytest.raises(FileNotFoundError):
        store.upload_dir(tmp_path / "no-such-dir", "x")


def test_child_stores_share_keys_with_their_parent(store: Store) -> None:
    child = store.child("trials", "t1/")
    assert child.uri == store.uri + "/trials/t1"
    assert store.child("trials/t1").uri == child.uri
    child.write_json("metrics.json", {"loss": 0.5})
    assert store.list() == ["trials/t1/metrics.json"]
    assert store.read_json("trials/t1/metrics.json") == {"loss": 0.5}
    assert child.list() == ["metrics.json"]
    assert child.child("x").uri == store.uri + "/trials/t1/x"


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "../escape", "a/./b", "a/../b", "trailing/"])
def test_bad_keys_are_refused(store: Store, key: str) -> None:
    with pytest.raises(ValueError):
        store.write_bytes(key, b"x")


def test_local_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    for i in range(3):
        store.write_json("dir/result.json", {"i": i})
    assert os.listdir(tmp_path / "dir") == ["result.json"]
    with pytest.raises(TypeError):  # fails while serialising: the previous file must survive untouched
        store.write_json("dir/result.json", {"bad": object()})
    assert store.read_json("dir/result.json") == {"i": 2}
    (tmp_path / "dir" / ".result.json.abc.store-tmp").write_text("crashed writer")
    assert store.list() == ["dir/result.json"]


def test_local_delete_prefix_removes_empty_directories(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    store.write_text("t/a/deep/x", "x")
    store.write_text("t/b", "y")
    assert store.delete_prefix("t/a") == 1
    assert not (tmp_path / "root" / "t" / "a").exists()
    assert store.delete_prefix("") == 1
    assert (tmp_path / "root").is_dir() and not any((tmp_path / "root").iterdir())


def test_local_uri_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert open_store("file://results/run").uri == f"file://{tmp_path}/results/run"
    assert open_store(f"file://{tmp_path}/x/").uri == f"file://{tmp_path}/x"
    assert open_store(f"{tmp_path}/y").uri == f"file://{tmp_path}/y"
    assert isinstance(open_store("/abs"), LocalStore)


def test_s3_uri_forms() -> None:
    store = open_store("s3://bucket/a/b/", endpoint="http://127.0.0.1:1", region="us-east-1")
    assert isinstance(store, S3Store) and store.uri == "s3://bucket/a/b"
    assert open_store("s3://bucket", endpoint="http://127.0.0.1:1").uri == "s3://bucket"


@pytest.mark.parametrize("uri", ["", "relative/path", "gs://b/x", "s3://", "s3:///key", "file://", "http://h/x"])
def test_bad_uris_are_value_errors(uri: str) -> None:
    with pytest.raises(ValueError, match="s3://bucket"):
        open_store(uri)


def test_unreachable_endpoint_is_unavailable_quickly() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    store = open_store("s3://bucket/p", endpoint=endpoint, retries=1, timeout=1)
    start = time.monotonic()
    for operation in (lambda: store.read_bytes("k"), lambda: store.list(), lambda: store.write_bytes("k", b"x")):
        with pytest.raises(StorageUnavailable, match=endpoint):
            operation()
    assert time.monotonic() - start < 10


def test_missing_bucket_is_access_denied(s3_endpoint: str, tmp_path: Path) -> None:
    store = open_store("s3://no-such-bucket-here/p", endpoint=s3_endpoint)
    operations = {
        "read": lambda: store.read_bytes("k"),
        "write": lambda: store.write_bytes("k", b"x"),
        "exists": lambda: store.exists("k"),
        "list": lambda: store.list(),
        "upload": lambda: store.upload_dir(tmp_path, ""),
    }
    (tmp_path / "f").write_text("x")
    for name, operation in operations.items():
        with pytest.raises(StorageAccessDenied, match="no-such-bucket-here") as caught:
            operation()
        assert "storage.credentialsSecretRef" in str(caught.value), name


def test_error_messages_never_contain_the_secret(
    s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "SuperSecretValue/+42xyzzy"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSECRETTEST")
    dead = open_store("s3://b/p", endpoint=f"http://127.0.0.1:{free_port()}", retries=1, timeout=1)
    missing_bucket = open_store("s3://no-such-bucket-either/p", endpoint=s3_endpoint)
    errors: list[BaseException] = []
    for operation in (lambda: dead.read_bytes("k"), lambda: missing_bucket.write_bytes("k", b"x")):
        with pytest.raises(StorageError) as caught:
            operation()
        errors.append(caught.value)
    for error in errors:
        chain = error
        while chain is not None:  # the whole chain ends up in logs, not just our message
            assert secret not in str(chain) and secret not in repr(chain)
            chain = chain.__cause__ or chain.__context__


def test_aws_endpoint_url_s3_env_is_honoured(s3_bucket: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint, bucket = s3_bucket
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    store = open_store(f"s3://{bucket}")
    store.write_text("k", "v")
    assert store.read_text("k") == "v"
    assert isinstance(store, S3Store) and store.endpoint == endpoint


def _client_error(code: str, status: int) -> ClientError:
    response = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "GetObject")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("NoSuchKey", 404, FileNotFoundError),
        ("404", 404, FileNotFoundError),
        ("NoSuchBucket", 404, StorageAccessDenied),
        ("AccessDenied", 403, StorageAccessDenied),
        ("403", 403, StorageAccessDenied),
        ("InvalidAccessKeyId", 403, StorageAccessDenied),
        ("SignatureDoesNotMatch", 403, StorageAccessDenied),
        ("SlowDown", 503, StorageUnavailable),
        ("Throttling", 400, StorageUnavailable),
        ("InternalError", 500, StorageUnavailable),
        ("", 502, StorageUnavailable),
        ("InvalidArgument", 400, StorageError),
    ],
)
def test_client_errors_are_classified(code: str, status: int, expected: type[Exception]) -> None:
    error = _translate_client_error(
        _client_error(code, status), uri="s3://b/k", bucket="b", endpoint="http://e", hint=CLUSTER_HINT
    )
    assert type(error) is expected
    assert "s3://b/k" in str(error) or "'b'" in str(error)
    if expected is StorageUnavailable:
        assert "http://e" in str(error)


def test_importing_the_store_does_not_import_boto3() -> None:
    code = "import json, sys, lora_ablation.storage.store; print(json.dumps([m for m in sys.modules if 'boto' in m]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
