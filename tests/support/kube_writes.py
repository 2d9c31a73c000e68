"""The write path of the emulator in support.kube: what ApiServer does to a create, update, patch or delete before
kmock stores it (server-owned metadata, resourceVersion and generation, validation and pruning, refusals, merge
and JSON patches, the status subresource, CRD registration). One comment per kmock gap closed."""

from __future__ import annotations

import copy
import uuid
from datetime import datetime, timezone
from typing import Any

import attrs
import jsonpatch
import kmock

from support.kube_schema import CrdSchema
from support.kube_validation import (
    FieldError,
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
MODIFIED = "the object has been modified; please apply your changes to the latest version and try again"


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


class Writes:
    """ApiServer's write-path steps (a mixin: the state lives in ApiServer and kmock's emulator)."""

    __slots__ = ()  # ApiServer is a slotted attrs class: its mixins add no __dict__

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
