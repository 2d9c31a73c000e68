"""kmock's KubernetesEmulator served over real HTTP on 127.0.0.1, so that the official `kubernetes` client, Kopf
(`kopf run` or `kopf.testing.KopfRunner`) and kubectl can all talk to it. kmock 0.8 is an in-memory object store
with a Kubernetes-shaped URL scheme; `ApiServer` closes the gaps those clients trip over (one comment per fix).
Its write path lives in support.kube_writes and its list and watch serving in support.kube_reads (mixins).

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
import collections
import contextlib
import copy
import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import aiohttp.web
import attrs
import kmock
from kmock._internal import parsing as kmock_parsing

from support.kube_reads import Reads, selected
from support.kube_schema import CrdSchema

# Serving over HTTP and the fixtures live in support.kube_served, public here: pytest registers the fixtures of
# this plugin module (tests/conftest.py's `pytest_plugins`).
from support.kube_served import ServedApi, kube_api, kubeconfig, serve_api, write_kubeconfig
from support.kube_validation import Refusal
from support.kube_writes import STATUS, VERBS, Writes, _error, _what

# kmock's error reasons read "Object Not Found"; clients (kubectl) expect the API's CamelCase reasons.
REASONS = {400: "BadRequest", 404: "NotFound", 409: "Conflict", 422: "Invalid", 500: "InternalError"}


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
class ApiServer(Writes, Reads, kmock.KubernetesEmulator):
    """The emulator with the fixes; all state lives in kmock's `objects` (inspect it directly in tests)."""

    served: int = attrs.field(default=0, init=False)  # requests served so far (kmock's own log is trimmed)
    # Requests by (client, verb, resource): the client is the User-Agent's product ("kopf", "lora-ablation-operator")
    tally: collections.Counter = attrs.field(factory=collections.Counter, init=False)
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
        client = (request.headers.get("User-Agent") or "?").split("/", 1)[0]
        verb = "PATCH" if request.method == kmock.method.PATCH else request.action.name if request.action else "?"
        what = str(getattr(request.resource, "plural", None) or request.url.path)
        self.tally[client, verb, what + (f"/{request.subresource}" if request.subresource else "")] += 1
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

    def _stored(self, request: kmock.Request) -> kmock.Object:
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            raise _error(404, "NotFound", f'{_what(request.resource)} "{request.name}" not found',
                         name=request.name, group=request.resource.group, kind=request.resource.plural)  # fmt: skip
        return self.objects[key]

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


__all__ = ["BUILTIN_RESOURCES", "ApiServer", "CrdSchema", "Refusal", "ServedApi", "kube_api", "kubeconfig",
           "selected", "serve_api", "write_kubeconfig"]  # fmt: skip
