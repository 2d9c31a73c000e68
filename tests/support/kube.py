"""kmock's KubernetesEmulator served over real HTTP on 127.0.0.1, so that the official `kubernetes` client, Kopf
(`kopf run` or `kopf.testing.KopfRunner`) and kubectl can all talk to it. kmock 0.8 is an in-memory object store
with a Kubernetes-shaped URL scheme; `ApiServer` closes the gaps those clients trip over (one comment per fix).

API (fixtures registered for the whole suite via `pytest_plugins` in tests/conftest.py):
  ApiServer()                          the emulator; `.objects` holds what was stored, `.served` counts requests
  ApiServer.refuse(resource, when=None, *, code=403, reason="Forbidden", message=None, verbs=("create",))
                                       -> Refusal: answer matching requests as an admission webhook, a
                                       ResourceQuota or a missing referenced object would; `resource` is a plural
                                       ("jobs"), plural.group ("jobs.batch") or Kind ("Job"); `when(obj) -> bool`
                                       picks objects (all when None); `message` is a str or `f(obj) -> str`;
                                       verbs among create/update (patch, put)/delete; `.refused` counts,
                                       `.cancel()` lifts it. E.g. `kube_api.refuse("jobs", message='jobs.batch "x"
                                       is forbidden: exceeded quota: q, requested: count/jobs.batch=1, ...')`
  ApiServer.crd_schema(group, version, plural) -> CrdSchema | None   a created CRD's schema (its `.rules`)
  serve_api(emulator=None)             context manager -> ServedApi(.url, .emulator, .objects(), .get(), .refuse())
  write_kubeconfig(path, url) -> path  a kubeconfig without auth for kopf, the kubernetes client and kubectl
  kube_api                             fixture: a fresh ServedApi per test
  kubeconfig                           fixture: writes the kubeconfig to tmp_path and points $KUBECONFIG at it

Refused as by kube-apiserver (422 Invalid, message and causes worded as the API words them), on create, update,
patch and status patches: invalid metadata (name: DNS-1123 subdomain, for Namespaces a label; namespace; label
keys and values; annotation keys and total size; ownerReferences); a Job's pod-template labels, including the
job-name labels the API adds (so a Job name over 63 characters is refused); custom resources failing their CRD
schema or its x-kubernetes-validations CEL rules. Custom resources are also pruned of fields their schema does
not describe, as in a cluster (support.kube_validation, support.kube_schema).

Not emulated: admission beyond refuse(); validation of built-in kinds' specs (a Pod without containers is
stored) and immutable fields; changes to a CRD after its creation (its schema stays the one it was created with);
metadata pruning, validation ratcheting, and the CEL that cel-python lacks (see support.kube_schema); garbage
collection (ownerReferences are stored, children are never deleted); set-based label selectors; watch events
for objects that stop matching a selector; and a watch from a resourceVersion replays the objects changed since
as ADDED (a cluster says MODIFIED for those that existed then).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import itertools
import math
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from datetime import datetime, timezone
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import parsing as kmock_parsing

from support.kube_schema import CrdSchema

# Serving over HTTP and the fixtures live in support.kube_served, public here: pytest registers the fixtures of
# this plugin module (tests/conftest.py's `pytest_plugins`).
from support.kube_served import ServedApi, kube_api, kubeconfig, serve_api, write_kubeconfig
from support.kube_validation import (
    FieldError,
    Refusal,
    default_job,
    first_refusal,
    invalid,
    name_rule,
    validate_metadata,
    validate_pod_template,
)

STATUS = "status"
VERBS = {"create", "delete", "get", "list", "patch", "update", "watch"}
# Metadata only the server writes: creates and patches cannot set or change it.
SERVER_OWNED = ("uid", "resourceVersion", "creationTimestamp", "generation", "deletionTimestamp")
# kmock's error reasons read "Object Not Found"; clients (kubectl) expect the API's CamelCase reasons.
REASONS = {400: "BadRequest", 404: "NotFound", 409: "Conflict", 422: "Invalid", 500: "InternalError"}
MODIFIED = "the object has been modified; please apply your changes to the latest version and try again"
CLOSE = object()  # put on every watch bus at shutdown: idle watches end instead of holding the server for a minute


def _info(kind: str, short: str, namespaced: bool = True, status: bool = False) -> kmock.ResourceInfo:
    return kmock.ResourceInfo(kind=kind, singular=kind.lower(), shortnames=set(short.split()), namespaced=namespaced,
                              subresources={STATUS} if status else set(), verbs=set(VERBS))  # fmt: skip


# Built-in resources the operator, Kopf and the tests use. kmock answers 404 to listing a resource it does not know
# of (no objects stored yet and not declared), and Kopf finds resources only through discovery.
BUILTIN_RESOURCES = {
    ("", "v1", "namespaces"): _info("Namespace", "ns", namespaced=False, status=True),
    ("", "v1", "configmaps"): _info("ConfigMap", "cm"),
    ("", "v1", "secrets"): _info("Secret", ""),
    ("", "v1", "pods"): _info("Pod", "po", status=True),
    ("", "v1", "events"): _info("Event", "ev"),
    ("batch", "v1", "jobs"): _info("Job", "", status=True),
    ("events.k8s.io", "v1", "events"): _info("Event", ""),
    ("apiextensions.k8s.io", "v1", "customresourcedefinitions"): _info(
        "CustomResourceDefinition", "crd crds", namespaced=False, status=True
    ),
}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(code: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=code, reason=reason, message=message, details=details)


def _what(res: kmock.resource) -> str:
    return f"{res.plural}.{res.group}" if res.group else str(res.plural)


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch. kmock's own merge refuses to replace a scalar by a dict or a dict by a scalar."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


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


def _parse_path(path: str, _kmock_parse: Callable[[str], Any] = kmock_parsing.parse_path) -> Any:
    """kmock reads /api/v1/namespaces[/<name>[/status]] as a namespace prefix without a resource (and fails on the
    bare collection with a 500): read it as the API does, as the cluster-scoped resource `namespaces`."""
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and (len(parts) <= 4 or (len(parts) == 5 and parts[4] == STATUS)):
        name, subresource = [*parts[3:], None, None][:2]
        return kmock_parsing.ParsedPath("", "v1", "namespaces", None, name, subresource)
    return _kmock_parse(path)


kmock_parsing.parse_path = _parse_path  # where kmock's request parsing looks it up; kmock is the emulator's alone


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):
    """The emulator with the fixes; all state lives in kmock's `objects` (inspect it directly in tests)."""

    served: int = attrs.field(default=0, init=False)  # requests served so far (kmock's own log is trimmed)
    _versions: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _last_version: int = attrs.field(default=0, init=False)
    _write_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    _schemas: dict[kmock.resource, CrdSchema] = attrs.field(factory=dict, init=False)
    refusals: list[Refusal] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for (group, version, plural), info in BUILTIN_RESOURCES.items():
            self.resources[kmock.resource(group, version, plural)] = copy.deepcopy(info)
        # Reactions just above kmock's own fallbacks (a sub-priority of -inf), reusing its handlers: creates answer
        # 201 as the API does (kmock says 200, and the client's create_*() then returns None), and watch streams are
        # application/json (kmock sends application/octet-stream, which kubectl refuses to decode).
        fallback = (self**1) ** -math.inf
        fallback[kmock.action.CREATE] << 201 << self._serve_create
        fallback[kmock.action.WATCH] << {"Content-Type": "application/json"} << self._serve_watch

    @property
    def resource_version(self) -> int:
        """The latest resourceVersion handed out: every change gets the next one, across all resources."""
        return self._last_version

    def refuse(self, resource: str, when: Callable[[dict[str, Any]], bool] | None = None, *, code: int = 403,
               reason: str = "Forbidden", message: str | Callable[[dict[str, Any]], str] | None = None,
               verbs: Iterable[str] = ("create",)) -> Refusal:  # fmt: skip
        """Refuse the requests on `resource` whose object `when` accepts (see the module docstring)."""
        refusal = Refusal(resource=resource, when=when, code=code, reason=reason, message=message, verbs=verbs)
        self.refusals.append(refusal)
        return refusal

    def crd_schema(self, group: str, version: str, plural: str) -> CrdSchema | None:
        """The schema a created CRD declared for a served version, as custom resources are checked against."""
        return self._schemas.get(kmock.resource(group, version, plural))

    def _next_version(self) -> str:
        self._last_version = next(self._versions)
        return str(self._last_version)

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # Typed kubectl commands (`kubectl create configmap`) send protobuf, unreadable here: say so rather than fail
        # on an empty object (`kubectl apply/create -f` manifests go as JSON and work).
        if "protobuf" in raw_request.content_type:
            return await self._render_error(_error(415, "UnsupportedMediaType", "only JSON bodies are understood"))
        # The Python client sends ?watch=True (str(True)); kmock recognises only `true`: watches became lists.
        watch = raw_request.query.get("watch")
        if watch is not None and watch != "true" and watch.lower() in {"true", "1"}:
            raw_request = raw_request.clone(rel_url=raw_request.rel_url.update_query(watch="true"))
        return await super().__call__(raw_request)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        self.served += 1
        try:
            writes = request.action in {kmock.action.CREATE, kmock.action.UPDATE, kmock.action.DELETE}
            if request.resource is None or not (writes or (request.method == kmock.method.PUT and request.name)):
                return await super()._handle(request)
            # Writes go one at a time, as through etcd: a JSON patch's resourceVersion test, the version counter and
            # the order of watch events all stay consistent (kmock's lock does not cover the steps added here).
            async with self._write_lock:
                amended = self._amend(request)
                if amended is not request:  # kmock routes only requests it has recorded: record the amended one
                    self._requests[self._requests.index(request)] = request = amended
                return await super()._handle(request)
        except kmock.KubernetesError as error:  # e.g. AlreadyExists, raised before kmock's own error rendering
            return await self._render_error(error)
        finally:
            # kmock keeps every request for assertions and scans them all on each dispatch, which makes a long run
            # quadratic (and memory-bound); these tests assert on objects, so forget requests once served.
            with contextlib.suppress(ValueError):
                self._requests.remove(request)
            for reaction in self._payloads:
                reaction._requests.clear()

    def _amend(self, request: kmock.Request) -> kmock.Request:
        if request.action == kmock.action.CREATE:
            return self._prepare_create(request)
        if request.name is None:
            return request
        stored = self._stored(request)
        if request.action == kmock.action.UPDATE or request.method == kmock.method.PUT:
            return self._prepare_update(request, stored)
        if request.action == kmock.action.DELETE:
            self._check_refusals("delete", request.resource, stored.raw)
        if request.action == kmock.action.DELETE and not stored.get("metadata", {}).get("deletionTimestamp"):
            # Deletion is a change: the DELETED event (or MODIFIED, if finalizers hold it) carries a new version.
            stored.history.append(kmock.ObjectVersion(self._with_version(stored.raw)))
        return request

    def _stored(self, request: kmock.Request) -> kmock.Object:
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            raise _error(404, "NotFound", f'{_what(request.resource)} "{request.name}" not found',
                         name=request.name, group=request.resource.group, kind=request.resource.plural)  # fmt: skip
        return self.objects[key]

    def _with_version(self, obj: dict[str, Any]) -> dict[str, Any]:
        new = copy.deepcopy(obj)
        new.setdefault("metadata", {})["resourceVersion"] = self._next_version()
        return new

    def _has_status(self, res: kmock.resource) -> bool:
        return res in self.resources and STATUS in self.resources[res].subresources

    def _prepare_create(self, request: kmock.Request) -> kmock.Request:
        res = request.resource
        data = copy.deepcopy(request.data) if isinstance(request.data, dict) else {}
        meta = data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):  # e.g. Kopf names its Events this way
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            required = FieldError("Required", "metadata.name", detail="name or generateName is required")
            raise invalid(self._kind(res), res.group, "", [required])
        if res not in self.resources or self.resources[res].namespaced is not False:
            if request.namespace and meta.setdefault("namespace", request.namespace) != request.namespace:
                raise _error(400, "BadRequest", "the namespace of the object does not match the request's")
        else:
            meta.pop("namespace", None)  # cluster-scoped: kmock would file it under a namespace nobody asks for
        # kmock sets no uid/resourceVersion/creationTimestamp/generation: Kopf's patches and our operator's
        # observedGeneration need them. Status is the status subresource's alone, as in the API.
        for name in SERVER_OWNED:
            meta.pop(name, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        if self._has_status(res):
            data.pop(STATUS, None)
        if (res.group, res.plural) == ("batch", "jobs"):
            default_job(data)  # the job-name/controller-uid labels and selector the API adds
        data = self._admit("create", res, data)  # validated (and pruned) before the name is looked up, as in the API
        meta = data["metadata"]
        # kmock answers 200 and overwrites nothing here, but its conflict error reads "Object Already Exists" with a
        # traceback: answer as the API does, which the operator's idempotent creates rely on.
        key = (res, meta.get("namespace"), meta["name"])
        if key in self.objects and not self.objects[key].deleted:
            raise _error(409, "AlreadyExists", f'{_what(res)} "{meta["name"]}" already exists',
                         name=meta["name"], group=res.group, kind=res.plural)  # fmt: skip
        meta["resourceVersion"] = self._next_version()
        if res.group == "apiextensions.k8s.io" and res.plural == "customresourcedefinitions":
            self._register_crd(data)
        return attrs.evolve(request, data=data)

    def _admit(self, verb: str, res: kmock.resource, obj: dict[str, Any], old: dict[str, Any] | None = None
               ) -> dict[str, Any]:  # fmt: skip
        """What the API does between decoding a write and storing it: validate (422 Invalid, listing every
        error), prune a custom resource to its schema, then validating admission (the tests' refusals)."""
        meta, info = obj.get("metadata") or {}, self.resources.get(res, None)
        errors = validate_metadata(meta, name_rule(res.group, res.plural), info is None or info.namespaced is not False)
        if (res.group, res.plural) == ("batch", "jobs"):
            errors += validate_pod_template((obj.get("spec") or {}).get("template"), "spec.template")
        if res in self._schemas:
            obj, schema_errors = self._schemas[res].admit(obj, old)
            errors += schema_errors
        if errors:
            raise invalid(self._kind(res), res.group, meta.get("name") or "", errors)
        self._check_refusals(verb, res, obj)
        return obj

    def _kind(self, res: kmock.resource) -> str:
        info = self.resources.get(res, None)
        return info.kind if info is not None and info.kind else str(res.plural)

    def _check_refusals(self, verb: str, res: kmock.resource, obj: dict[str, Any]) -> None:
        refusal = first_refusal(self.refusals, verb, res, self._kind(res), obj)
        if refusal is not None:
            raise refusal.error(res, obj)

    def _register_crd(self, crd: dict[str, Any]) -> None:
        # kmock does not add a CRD's resource to discovery; Kopf scans /apis and never finds it otherwise.
        spec, now = crd.get("spec") or {}, _now()
        names = spec.get("names") or {}
        for version in spec.get("versions") or []:
            schema = (version.get("schema") or {}).get("openAPIV3Schema")
            if version.get("served", True) and schema:  # custom resources are validated and pruned by it
                self._schemas[kmock.resource(spec["group"], version["name"], names["plural"])] = CrdSchema(schema)
            if version.get("served", True):
                self.resources[kmock.resource(spec["group"], version["name"], names["plural"])] = kmock.ResourceInfo(
                    kind=names.get("kind"), singular=names.get("singular"), verbs=set(VERBS),
                    namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                    shortnames=set(names.get("shortNames") or []), categories=set(names.get("categories") or []),
                    subresources=set(version.get("subresources") or {}),
                )  # fmt: skip
        # As the API reports it, for `kubectl wait --for condition=Established` and the like.
        crd[STATUS] = {
            "acceptedNames": names,
            "storedVersions": [v["name"] for v in spec.get("versions") or [] if v.get("storage")],
            "conditions": [{"type": t, "status": "True", "reason": r, "lastTransitionTime": now}
                           for t, r in (("NamesAccepted", "NoConflicts"), ("Established", "InitialNamesAccepted"))],
        }  # fmt: skip

    def _prepare_update(self, request: kmock.Request, stored: kmock.Object) -> kmock.Request:
        old = copy.deepcopy(stored.raw)
        old_meta, patch = old.get("metadata") or {}, request.data
        expected = (patch.get("metadata") or {}).get("resourceVersion") if isinstance(patch, dict) else None
        if expected and str(expected) != old_meta.get("resourceVersion"):  # optimistic concurrency, as the API
            raise _error(409, "Conflict", f'{_what(request.resource)} "{request.name}": {MODIFIED}')
        if request.method == kmock.method.PUT and isinstance(patch, dict):  # replace (kmock ignores PUT)
            new = copy.deepcopy(patch)
        elif isinstance(patch, list):  # JSON patch: Kopf removes finalizers with a `test` of resourceVersion
            try:
                new = jsonpatch.apply_patch(old, patch)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as error:
                # 422 tells Kopf "conflict, retry on the next event"; kmock's 500 made it retry stale patches.
                raise _error(422, "Invalid", f"the JSON patch was not applied: {error}") from None
        elif isinstance(patch, dict):  # merge patch (strategic merge patches are treated as merge patches)
            new = _merge_patch(old, patch)
        else:
            raise _error(400, "BadRequest", "the patch is neither a JSON patch nor a merge patch")
        # kmock applies every patch to the whole object. In the API, /status changes only status, and the main
        # resource never changes status when the resource has a status subresource.
        if request.subresource == STATUS:
            new = {**old, STATUS: new.get(STATUS)}
        elif request.subresource is None and self._has_status(request.resource):
            new[STATUS] = old.get(STATUS)
        if new.get(STATUS) is None:
            new.pop(STATUS, None)
        meta = new.setdefault("metadata", {})
        for name in (*SERVER_OWNED, "name", "namespace"):
            if name in old_meta:
                meta[name] = old_meta[name]
            else:
                meta.pop(name, None)
        new = self._admit("update", request.resource, new, old)  # a pruned field never counts as a change
        meta = new["metadata"]
        if new != old:  # a no-op patch keeps the version (kmock's repeated event for it is dropped from watches)
            # kmock bumps neither resourceVersion (Kopf's JSON-patch test then fails forever) nor generation.
            meta["resourceVersion"] = self._next_version()
            if new.get("spec") != old.get("spec"):
                meta["generation"] = int(old_meta.get("generation") or 1) + 1
        # Store the exact new state; kmock then "patches" with nothing, emitting its MODIFIED event (and DELETED
        # when the last finalizer of a deleted object went).
        stored.history.append(kmock.ObjectVersion(new))
        return attrs.evolve(request, action=kmock.action.UPDATE, data={})

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

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        # A Status as the API writes it: CamelCase reason, no traceback (kmock's carries one in `details`).
        if isinstance(exc, kmock.KubernetesError):
            code, message, details = exc.status, exc.message or repr(exc), exc.details
            reason = exc.reason if type(exc) is kmock.KubernetesError else REASONS.get(code, "InternalError")
        else:
            code, reason, message, details = 500, "InternalError", repr(exc), None
        details = details if isinstance(details, dict) else {}
        body = {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": code,
                "reason": reason, "message": message, "details": details}  # fmt: skip
        return aiohttp.web.json_response(body, status=code)

    def live(self, res: kmock.resource) -> list[dict[str, Any]]:
        """The stored, not deleted objects of a resource (call it on the server's loop)."""
        return [o.raw for (r, _, _), o in list(self.objects.items()) if r == res and not o.deleted]

    async def close_watches(self) -> None:
        """End every open watch stream (at shutdown; clients see a normal end of stream)."""
        for bus in list(self._buses.values()):
            await bus.put(CLOSE)


__all__ = ["BUILTIN_RESOURCES", "ApiServer", "CrdSchema", "Refusal", "ServedApi", "kube_api", "kubeconfig",
           "selected", "serve_api", "write_kubeconfig"]  # fmt: skip
