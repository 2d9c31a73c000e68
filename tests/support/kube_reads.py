"""The read path of the emulator in support.kube: discovery, get, list and watch as the API serves them (list
kinds and resourceVersions, label and field selectors, watches that resume from a resourceVersion, time out and
end at shutdown). One comment per kmock gap closed."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
from collections.abc import AsyncIterator
from typing import Any

import kmock

CLOSE = object()  # put on every watch bus at shutdown: idle watches end instead of holding the server for a minute


def _selector_match(selector: str | None, value_of: Any, bare_keys: bool) -> bool:
    """Equality-based selectors: `a=b`, `a==b`, `a!=b`, and for labels `a` / `!a` (existence)."""
    for term in filter(None, (t.strip() for t in (selector or "").split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if value_of(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if value_of(key.strip()) != value.strip():
                return False
        elif bare_keys and (value_of(term.lstrip("!")) is None) != term.startswith("!"):
            return False
    return True


def selected(request: kmock.Request, obj: dict[str, Any]) -> bool:
    """Whether an object is in a list/watch request's scope: namespace, name, labelSelector, fieldSelector."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}

    def field(path: str) -> str | None:
        value = functools.reduce(lambda node, key: node.get(key) if isinstance(node, dict) else None,
                                 path.split("."), obj)  # fmt: skip
        return None if value is None else str(value)

    return (
        (request.namespace is None or meta.get("namespace") == request.namespace)
        and (request.name is None or meta.get("name") == request.name)
        and _selector_match(request.params.get("labelSelector"), labels.get, bare_keys=True)
        and _selector_match(request.params.get("fieldSelector"), field, bare_keys=False)
    )


def _version(raw: Any) -> int:
    return int(raw) if str(raw or "").isdigit() else 0


class Reads:
    """ApiServer's list and watch serving (a mixin: the state lives in ApiServer and kmock's emulator)."""

    __slots__ = ()  # ApiServer is a slotted attrs class: its mixins add no __dict__

    async def _serve_version(self, request: kmock.Request) -> kmock.Payload:
        listing: dict[str, Any] = await super()._serve_version(request)  # type: ignore[assignment]
        listing["groupVersion"] = listing["groupVersion"].lstrip("/")  # kmock says "/v1": kubectl then sees no core
        for entry in listing["resources"]:  # kmock repeats names on subresources: kubectl calls short names ambiguous
            if "/" in entry["name"]:
                entry.update(singularName="", shortNames=[], categories=[])
        return listing

    async def _serve_fetch(self, request: kmock.Request) -> kmock.Payload:
        self._stored(request)  # the API's NotFound message: kmock's tells how to add objects to kmock
        return await super()._serve_fetch(request)

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        async with self._write_lock:  # a snapshot no write is half-way through, and the version it is at
            listed: dict[str, Any] = await super()._serve_list(request)  # type: ignore[assignment]
            version = self._last_version
        info = self.resources.get(request.resource, None)
        group, api_version = request.resource.group, request.resource.version
        return {
            # kmock's lists have no kind/apiVersion (kubectl needs them) and resourceVersion "..." (a watch resumes
            # from it); it also ignores label and field selectors.
            "kind": f"{info.kind if info and info.kind else 'Object'}List",
            "apiVersion": f"{group}/{api_version}" if group else api_version,
            "metadata": {"resourceVersion": str(version)},
            "items": sorted((o for o in listed["items"] if selected(request, o)),
                            key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"])),
        }  # fmt: skip

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[kmock.Payload]:
        yield b""  # send the headers at once: clients wait for them
        # Replaces kmock's watch: it took its snapshot, streamed it, and only then subscribed to changes (events in
        # between were lost); it ignored ?resourceVersion (replaying what the preceding list returned, so Kopf retried
        # stale patches); it streamed forever (?timeoutSeconds ignored, clients hung); it ignored selectors.
        since = _version(request.params.get("resourceVersion"))
        timeout = float(request.params.get("timeoutSeconds") or 0) or math.inf
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        bus = self._buses[request.resource]
        async with self._write_lock:  # subscribe and take the snapshot at the same instant
            marker = await bus.mark()
            snapshot = self.live(request.resource)
        sent: dict[tuple[str | None, str | None], int] = {}
        events = aiter(bus.stream(since=marker))
        try:
            for obj in sorted(snapshot, key=lambda o: _version(o["metadata"].get("resourceVersion"))):
                if self._fresh(request, "ADDED", obj, since, sent):
                    yield {"type": "ADDED", "object": obj}
            while (remaining := deadline - loop.time()) > 0:
                try:
                    event = await asyncio.wait_for(anext(events), None if math.isinf(remaining) else remaining)
                except asyncio.TimeoutError:
                    return
                if event is CLOSE:
                    return
                if self._fresh(request, event["type"], event["object"], since, sent):
                    yield event
        finally:
            with contextlib.suppress(ValueError):  # unknown once the bus dropped it
                await bus.unmark(marker)

    @staticmethod
    def _fresh(request: kmock.Request, kind: str, obj: dict[str, Any], since: int, sent: dict[Any, int]) -> bool:
        """Whether a watch sends this event: selected, and newer than ?resourceVersion and what it already sent
        for this object (DELETED always goes: an object freed of its last finalizer keeps its version)."""
        meta = obj.get("metadata") or {}
        version, key = _version(meta.get("resourceVersion")), (meta.get("namespace"), meta.get("name"))
        if kind != "DELETED" and version <= max(since, sent.get(key, 0)):
            return False
        if not selected(request, obj):
            return False
        sent[key] = version
        return True

    def live(self, res: kmock.resource) -> list[dict[str, Any]]:
        """The stored, not deleted objects of a resource (call it on the server's loop)."""
        return [o.raw for (r, _, _), o in list(self.objects.items()) if r == res and not o.deleted]

    async def close_watches(self) -> None:
        """End every open watch stream (at shutdown; clients see a normal end of stream)."""
        for bus in list(self._buses.values()):
            await bus.put(CLOSE)
