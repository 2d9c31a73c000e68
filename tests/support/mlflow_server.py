"""A real MLflow tracking server for tests: `mlflow server` on 127.0.0.1 and a free port, with its own SQLite backend
and artifact store in a temporary folder (artifacts served over HTTP, as a shared server serves them), torn down
after the session. Not a mock: the trainer, the local runner and the operator talk to it with the MLflow client.

Fixtures (registered for the whole suite via `pytest_plugins` in tests/conftest.py):
  mlflow_server -> MlflowServer, started on first use (the process starts at once, and is waited for only when
                   its URI is first read, so a test's other fixtures build while it starts)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from support.s3 import free_port

STARTUP_SECONDS = 180  # imports and the SQLite migrations: about 14 s on 2 busy cores, longer on a loaded machine


@dataclass
class MlflowServer:
    process: subprocess.Popen
    port: int
    root: Path
    log: Path
    _ready: bool = field(default=False, repr=False)

    @property
    def uri(self) -> str:
        if not self._ready:
            self._wait()
        return f"http://127.0.0.1:{self.port}"

    def _wait(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log.read_text()[-3000:]
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as answer:
                    if answer.status == 200:
                        self._ready = True
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"mlflow server did not answer in {STARTUP_SECONDS} s:\n{self.log.read_text()[-3000:]}")

    def client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def runs(self, experiment: str, filter_string: str = "") -> list[Any]:
        """Every active run of the experiment (none when it does not exist)."""
        client = self.client()
        found = client.get_experiment_by_name(experiment)
        return [] if found is None else list(client.search_runs([found.experiment_id], filter_string, max_results=1000))

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # its own group: the CLI and the uvicorn it starts
            try:
                self.process.wait(timeout=3)  # its data are thrown away: no need to wait for a graceful stop
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)


def start_mlflow_server(root: Path) -> MlflowServer:
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    if mlflow is None:
        pytest.skip("mlflow (the dev extra) is not installed")
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    log = root / "server.log"
    command = [mlflow, "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--serve-artifacts",
               "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # its job runner (huey) is not used and costs seconds to start
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=root, env=env,
                               start_new_session=True)  # fmt: skip
    return MlflowServer(process, port, root, log)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[MlflowServer]:
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow"))
    try:
        yield server
    finally:
        server.stop()
