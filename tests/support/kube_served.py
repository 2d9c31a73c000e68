"""An ApiServer (support.kube) served over HTTP on 127.0.0.1 from its own thread, a kubeconfig for it, and the
`kube_api` / `kubeconfig` fixtures; all importable from support.kube (see its docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp.web
import kmock
import pytest
import yaml

if TYPE_CHECKING:
    from support.kube import ApiServer
    from support.kube_validation import Refusal

T = TypeVar("T")


class ServedApi:
    """An ApiServer on http://127.0.0.1:<free port>, run by its own event loop in a daemon thread, so that sync
    code (the kubernetes client) and other threads or loops (KopfRunner) can use it alike."""

    def __init__(self, emulator: ApiServer | None = None) -> None:
        if emulator is None:
            from support.kube import ApiServer  # support.kube imports this module: import it when needed

            emulator = ApiServer()
        self.emulator = emulator
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kube-api", daemon=True)
        self._runner: aiohttp.web.ServerRunner | None = None

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        """Run a coroutine on the server's loop (where the emulator's state may be touched safely)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start(self) -> None:
        await self.emulator.__aenter__()  # kmock's stream feeder; errors become Status responses, not dropped links
        # Plain aiohttp rather than kmock.Server: that one also swaps aiohttp's DNS resolver process-wide, which
        # must be undone in strict LIFO order (and Kopf in the same process resolves with aiohttp too).
        server = aiohttp.web.Server(self.emulator, handler_cancellation=True)  # a client's hang-up ends its watch
        self._runner = aiohttp.web.ServerRunner(server, shutdown_timeout=5)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))  # the port is ours from here on: no race for a "free" port
        await aiohttp.web.SockSite(self._runner, sock).start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def _stop(self) -> None:
        await self.emulator.close_watches()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.emulator.__aexit__(None, None, None)

    def __enter__(self) -> ServedApi:
        self._thread.start()
        self.call(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self._stop(), timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self._loop.close()

    def objects(self, group: str, version: str, plural: str) -> list[dict[str, Any]]:
        """Copies of the live objects of one resource, all namespaces."""
        res = kmock.resource(group, version, plural)

        async def snapshot() -> list[dict[str, Any]]:
            return copy.deepcopy(self.emulator.live(res))

        return self.call(snapshot())

    def refuse(self, resource: str, when: Callable[[dict[str, Any]], bool] | None = None, **how: Any) -> Refusal:
        """ApiServer.refuse (see the module docstring)."""
        return self.emulator.refuse(resource, when, **how)

    def count(self, group: str, version: str, plural: str) -> int:
        """How many live objects one resource has (nothing copied: cheap enough to poll)."""
        res = kmock.resource(group, version, plural)

        async def count() -> int:
            return len(self.emulator.live(res))

        return self.call(count())

    def get(self, group: str, version: str, plural: str, name: str, namespace: str | None = None) -> dict | None:
        """A copy of one live object, or None (only that one is copied)."""
        res = kmock.resource(group, version, plural)

        async def find() -> dict | None:
            for obj in self.emulator.live(res):
                if obj["metadata"]["name"] == name and obj["metadata"].get("namespace") == namespace:
                    return copy.deepcopy(obj)
            return None

        return self.call(find())


@contextlib.contextmanager
def serve_api(emulator: ApiServer | None = None) -> Iterator[ServedApi]:
    """Serve an ApiServer on 127.0.0.1 for the duration of the block."""
    with ServedApi(emulator) as api:
        yield api


def write_kubeconfig(path: Path, url: str, ns: str = "default") -> Path:
    """A kubeconfig with one context and no credentials (the emulator checks none; plain HTTP needs no TLS)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulated", "cluster": {"server": url}}],
        "users": [{"name": "tester", "user": {}}],
        "contexts": [{"name": "emulated", "context": {"cluster": "emulated", "user": "tester", "namespace": ns}}],
        "current-context": "emulated",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def kube_api() -> Iterator[ServedApi]:
    with serve_api() as api:
        yield api


@pytest.fixture
def kubeconfig(kube_api: ServedApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = write_kubeconfig(tmp_path / "kubeconfig", kube_api.url)
    monkeypatch.setenv("KUBECONFIG", str(path))  # subprocesses (kopf run, kubectl) and Kopf's own kubeconfig login
    try:  # the kubernetes client reads $KUBECONFIG once, at import: in-process load_kube_config() (Kopf's
        import kubernetes.config.kube_config as kube_config  # login_via_client in a KopfRunner) would miss it

        monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    except ImportError:  # the operator extra is not installed: nothing in-process to point
        pass
    yield path
