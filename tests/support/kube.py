"""kmock's KubernetesEmulator, served over HTTP on 127.0.0.1, with the few fixes that the official
Python client, Kopf and kubectl need from kmock 0.8 (each fix says why). Tests run the operator for
real against it; the emulator has no controllers, so tests play the Job controller themselves."""

from __future__ import annotations

import asyncio
import copy
import itertools
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs
import jsonpatch
import kmock
import pytest
import yaml
from kmock._internal import enums, k8s_dicts, rendering
from kmock._internal.references import ResourceInfo, resource

STATUS_SUBRESOURCE = "status"
BUILTIN_RESOURCES = {
    ("", "v1", "namespaces"): ResourceInfo(kind="Namespace", namespaced=False, verbs={"list", "watch", "get"}),
    ("", "v1", "events"): ResourceInfo(kind="Event", namespaced=True, verbs={"create", "list", "watch", "get"}),
    ("batch", "v1", "jobs"): ResourceInfo(kind="Job", namespaced=True, subresources={STATUS_SUBRESOURCE},
                                          verbs={"create", "delete", "get", "list", "patch", "watch"}),
    ("events.k8s.io", "v1", "events"): ResourceInfo(kind="Event", namespaced=True, verbs={"create", "list"}),
    ("apiextensions.k8s.io", "v1", "customresourcedefinitions"): ResourceInfo(
        kind="CustomResourceDefinition", namespaced=False, verbs={"create", "get", "list", "watch"}),
}  # fmt: skip


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_diff(old: Any, new: Any) -> Any:
    """A JSON merge patch turning old into new (kmock stores changes as merge patches)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return copy.deepcopy(new)
    diff = {k: None for k in old if k not in new}
    for key, value in new.items():
        if key not in old or old[key] != value:
            diff[key] = merge_diff(old.get(key), value)
    return diff


def _labels_match(obj: dict[str, Any], selector: str | None) -> bool:
    """Equality-based label selectors (a=b,c=d, a!=b, and bare keys): kmock ignores them."""
    if not selector:
        return True
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("==", 1) if "==" in term else term.split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):
    _versions: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _last_version: int = attrs.field(default=0, init=False)
    served: int = attrs.field(default=0, init=False)  # requests served so far (kmock's own log is trimmed)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for (group, version, plural), info in BUILTIN_RESOURCES.items():
            self.resources[resource(group, version, plural)] = copy.deepcopy(info)

    def _next_version(self) -> str:
        self._last_version = next(self._versions)
        return str(self._last_version)

    def _stored(self, request: rendering.Request) -> k8s_dicts.Object | None:
        key = (request.resource, request.namespace, request.name)
        return self.objects[key] if key in self.objects else None  # noqa: SIM401 - ObjectsArray has no .get()

    def _has_status_subresource(self, res: resource) -> bool:
        return res in self.resources and STATUS_SUBRESOURCE in self.resources[res].subresources

    def _register_crd(self, crd: dict[str, Any]) -> None:
        # Creating a CRD must add its resource to discovery, or Kopf never finds it.
        spec = crd["spec"]
        for version in spec["versions"]:
            self.resources[resource(spec["group"], version["name"], spec["names"]["plural"])] = ResourceInfo(
                kind=spec["names"]["kind"], singular=spec["names"].get("singular"),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                shortnames=set(spec["names"].get("shortNames", [])),
                categories=set(spec["names"].get("categories", [])),
                subresources=set((version.get("subresources") or {}).keys()),
                verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
            )  # fmt: skip

    async def __call__(self, raw_request: Any) -> Any:
        # The Python client sends ?watch=True; kmock only recognises `true` (watches became lists).
        if raw_request.query.get("watch") in {"True", "1"}:
            raw_request = raw_request.clone(rel_url=raw_request.rel_url.update_query(watch="true"))
        response = await super().__call__(raw_request)
        # The API answers 201 to a create; kmock says 200 and the client's create_* then returns None.
        if raw_request.method == "POST" and response.status == 200 and not response.prepared:
            response.set_status(201)
        return response

    async def _handle(self, request: rendering.Request) -> Any:
        original = request
        if request.resource is not None and request.action == enums.action.CREATE:
            request = self._prepare_create(request)
        elif request.resource is not None and request.action == enums.action.UPDATE and request.name:
            request = self._prepare_update(request)
        elif request.resource is not None and request.action == enums.action.DELETE and request.name:
            stored = self._stored(request)
            if stored is not None and not stored.deleted:  # marking deletionTimestamp is a change: new version
                stored.patch({"metadata": {"resourceVersion": self._next_version()}})
        if request is not original:  # kmock routes only requests it has recorded: record the amended one
            self._requests[self._requests.index(original)] = request
        self.served += 1
        try:
            return await super()._handle(request)
        except kmock.KubernetesError as error:  # e.g. AlreadyExists raised before kmock's error rendering
            return await self._render_error(error)
        finally:
            # kmock keeps every request for assertions and scans them on each dispatch, which makes a long
            # run quadratic; these tests assert on objects, not requests, so forget served ones.
            self._requests.remove(request)

    def _prepare_create(self, request: rendering.Request) -> rendering.Request:
        # kmock sets no uid/resourceVersion/creationTimestamp/generation; Kopf and our operator need them.
        data = copy.deepcopy(request.data)
        meta = data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):  # Kopf names its Events this way
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if request.namespace and self._is_namespaced(request.resource):
            meta.setdefault("namespace", request.namespace)
        meta.update(uid=str(uuid.uuid4()), resourceVersion=self._next_version(), creationTimestamp=_now(), generation=1)
        if request.resource.plural == "customresourcedefinitions":
            self._register_crd(data)
        return attrs.evolve(request, data=data)

    def _is_namespaced(self, res: resource) -> bool:
        return res not in self.resources or self.resources[res].namespaced is not False

    def _prepare_update(self, request: rendering.Request) -> rendering.Request:
        stored = self._stored(request)
        if stored is None or stored.deleted:
            return request  # kmock answers 404
        old = copy.deepcopy(stored.raw)
        if isinstance(request.data, list):  # JSON patch (Kopf's finalizer removal tests resourceVersion)
            try:
                new = jsonpatch.apply_patch(old, request.data)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as error:
                raise kmock.KubernetesError(f"JSON patch failed: {error}") from None
        else:
            new = copy.deepcopy(old)
            _merge(new, request.data or {})
        # The status subresource changes only status; the main resource never changes status.
        if request.subresource == STATUS_SUBRESOURCE:
            new = {**copy.deepcopy(old), "status": new.get("status")}
        elif self._has_status_subresource(request.resource):
            new["status"] = old.get("status")
        if new.get("status") is None:
            new.pop("status", None)
        meta = new.setdefault("metadata", {})
        meta["resourceVersion"] = self._next_version()
        if new.get("spec") != old.get("spec"):
            meta["generation"] = (old.get("metadata", {}).get("generation") or 1) + 1
        return attrs.evolve(request, data=merge_diff(old, new))

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        listed: dict[str, Any] = await super()._serve_list(request)  # type: ignore[assignment]
        info = self.resources.get(request.resource, None)
        kind = info.kind if info and info.kind else "Object"
        group = request.resource.group
        return {
            # Lists carry kind/apiVersion and a real resourceVersion (kubectl and Kopf's watch resume need them).
            "kind": f"{kind}List",
            "apiVersion": f"{group}/{request.resource.version}" if group else request.resource.version,
            "metadata": {"resourceVersion": str(self._current_version())},
            "items": [o for o in listed["items"] if _labels_match(o, request.params.get("labelSelector"))],
        }

    def _current_version(self) -> int:
        return self._last_version

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        # A watch from a resourceVersion must not replay what the preceding list returned (Kopf would
        # retry stale patches): drop events not newer than that or than the last one sent per object.
        # timeoutSeconds ends the stream as the API server does (kmock streams forever; clients hang).
        raw_since = str(request.params.get("resourceVersion") or "0")
        since = int(raw_since) if raw_since.isdigit() else 0
        selector = request.params.get("labelSelector")
        timeout = float(request.params.get("timeoutSeconds") or 0) or None
        deadline = asyncio.get_running_loop().time() + timeout if timeout else None
        sent: dict[tuple[str | None, str | None], int] = {}
        events = super()._serve_watch(request).__aiter__()
        while True:
            try:
                if deadline is None:
                    event = await events.__anext__()
                else:
                    event = await asyncio.wait_for(
                        events.__anext__(), max(0.0, deadline - asyncio.get_running_loop().time())
                    )
            except (StopAsyncIteration, asyncio.TimeoutError):
                await events.aclose()
                return
            if not isinstance(event, dict):
                yield event
                continue
            obj = event.get("object") or {}
            meta = obj.get("metadata") or {}
            version = int(meta.get("resourceVersion") or 0)
            key = (meta.get("namespace"), meta.get("name"))
            if event.get("type") != "DELETED" and (version <= since or version <= sent.get(key, 0)):
                continue
            if _labels_match(obj, selector):
                sent[key] = version
                yield event


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class ServedApi:
    """The emulator on a real port, in its own thread and event loop, usable from sync code."""

    def __init__(self) -> None:
        self.emulator = ApiServer()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="kube-api", daemon=True)
        self.url = ""

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with kmock.Server(self.emulator, host="127.0.0.1") as server:
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> ServedApi:
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("the emulated API server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=20)

    def objects(self, group: str, version: str, plural: str) -> list[dict[str, Any]]:
        res = resource(group, version, plural)
        return [o.raw for (r, _, _), o in list(self.emulator.objects.items()) if r == res and not o.deleted]


def write_kubeconfig(path: Path, url: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulated", "cluster": {"server": url}}],
        "users": [{"name": "tester", "user": {"token": "not-checked"}}],
        "contexts": [
            {"name": "emulated", "context": {"cluster": "emulated", "user": "tester", "namespace": "default"}}
        ],
        "current-context": "emulated",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def kube_api() -> Iterator[ServedApi]:
    with ServedApi() as api:
        yield api


@pytest.fixture
def kubeconfig(kube_api: ServedApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = write_kubeconfig(tmp_path / "kubeconfig", kube_api.url)
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path
