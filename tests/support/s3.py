"""A real S3 endpoint for tests: moto's server on a free localhost port, spoken to over HTTP by boto3.

Fixtures (registered for the whole suite via `pytest_plugins` in tests/conftest.py):
  s3_endpoint -> endpoint URL of one session-wide server, with fake AWS credentials in the environment
  s3_bucket   -> (endpoint URL, name of a fresh empty bucket) for each test
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

TEST_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
# A developer's own AWS settings must not leak in: a profile that does not exist here fails client creation, and an
# endpoint override would send the tests elsewhere. Empty config files keep ~/.aws out too.
CLEARED_ENV = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL")
CLEARED_ENV += ("AWS_ENDPOINT_URL_S3", "AWS_REGION")


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it; a tiny race with other processes is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto_server() -> tuple[Any, str]:
    """Start moto's threaded server; returns (server, endpoint_url). Call server.stop() when done."""
    from moto.server import ThreadedMotoServer

    # One log line per request would bury a failing test's output under thousands of lines.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    return server, f"http://127.0.0.1:{port}"


def s3_client(endpoint_url: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1")


@contextmanager
def aws_test_env() -> Iterator[None]:
    """Fake credentials in os.environ for the duration; every touched variable is restored afterwards."""
    names = [*TEST_ENV, *CLEARED_ENV, "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"]
    saved = {name: os.environ.get(name) for name in names}
    for name in CLEARED_ENV:
        os.environ.pop(name, None)
    os.environ.update(TEST_ENV, AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    with aws_test_env():
        server, endpoint_url = start_moto_server()
        try:
            yield endpoint_url
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> tuple[str, str]:
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    s3_client(s3_endpoint).create_bucket(Bucket=bucket)
    return s3_endpoint, bucket


@pytest.fixture
def s3_requests() -> Iterator[Counter[str]]:
    """S3 requests by operation, counted by botocore for every client the default session makes while the test
    runs (the store's clients are made with it)."""
    import boto3

    counts: Counter[str] = Counter()
    boto3.setup_default_session()
    boto3.DEFAULT_SESSION.events.register(
        "before-send.s3", lambda event_name, **_: counts.update([event_name.rsplit(".", 1)[-1]])
    )
    yield counts
    boto3.DEFAULT_SESSION = None
