"""What kube-apiserver checks on every object before it stores one, for the emulator in support.kube: object
metadata (names, labels, annotations, ownerReferences), the labels of a Job's pod template (with the labels the
API adds to it), and the 422 Invalid Status it answers with. Messages follow k8s.io/apimachinery's validation
package word for word (its "characters" wording; releases from 1.32 on say "bytes" in the length messages).

Also here: `Refusal`, a test's stand-in for an admission webhook, a ResourceQuota or a missing referenced object
(see ApiServer.refuse in support.kube).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import kmock

OMIT = object()  # a FieldError without a value ("Too long", "Required value")

# field.ErrorType: the words in the message, and the StatusCause reason.
_TYPES = {
    "Invalid": ("Invalid value", "FieldValueInvalid"),
    "TypeInvalid": ("Invalid value", "FieldValueTypeInvalid"),
    "Required": ("Required value", "FieldValueRequired"),
    "NotSupported": ("Unsupported value", "FieldValueNotSupported"),
    "Duplicate": ("Duplicate value", "FieldValueDuplicate"),
    "Forbidden": ("Forbidden", "FieldValueForbidden"),
    "TooLong": ("Too long", "FieldValueTooLong"),
    "TooMany": ("Too many", "FieldValueTooMany"),
}
_VALUELESS = {"Required", "Forbidden", "TooLong"}  # ErrorBody() prints no value for these

DNS1123_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = DNS1123_LABEL + r"(\." + DNS1123_LABEL + ")*"
QUALIFIED_NAME = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
LABEL_VALUE = "(" + QUALIFIED_NAME + ")?"
ANNOTATIONS_MAX_BYTES = 256 * 1024
# Labels the API adds to a Job's pod template (unless spec.manualSelector): the name ones make a Job name longer
# than a label value (63) invalid, although object names may run to 253.
JOB_NAME_LABELS = ("job-name", "batch.kubernetes.io/job-name")
JOB_UID_LABELS = ("controller-uid", "batch.kubernetes.io/controller-uid")


def go_value(value: Any) -> str:
    """A value as Go's fmt prints it in field errors: %q for strings, %v for numbers, %#v for the rest."""
    if value is None:
        return '"null"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e21 else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        inner = ", ".join(f"{json.dumps(str(k))}:{go_value(v)}" for k, v in sorted(value.items()))
        return "map[string]interface {}{" + inner + "}"
    if isinstance(value, list):
        return "[]interface {}{" + ", ".join(go_value(v) for v in value) + "}"
    return repr(value)


@attrs.frozen
class FieldError:
    """One k8s.io/apimachinery field.Error: `type` is its ErrorType name (Invalid, Required, ...; see _TYPES)."""

    type: str
    field: str
    value: Any = OMIT
    detail: str = ""

    def body(self) -> str:
        words = _TYPES[self.type][0]
        text = words if self.type in _VALUELESS or self.value is OMIT else f"{words}: {go_value(self.value)}"
        return f"{text}: {self.detail}" if self.detail else text

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"

    def cause(self) -> dict[str, str]:
        return {"reason": _TYPES[self.type][1], "message": self.body(), "field": self.field}


def invalid(kind: str, group: str, name: str, errors: list[FieldError]) -> kmock.KubernetesError:
    """The API's 422: `Job.batch "x" is invalid: <errors>`, one StatusCause per error (the message lists each
    distinct error once, bracketed when more than one), as errors.NewInvalid builds it."""
    distinct = list(dict.fromkeys(str(e) for e in errors))
    listed = distinct[0] if len(distinct) == 1 else "[" + ", ".join(distinct) + "]"
    qualified = f"{kind}.{group}" if group else kind
    return kmock.KubernetesError(
        status=422,
        reason="Invalid",
        message=f'{qualified} "{name}" is invalid: {listed}',
        details={"name": name, "group": group, "kind": kind, "causes": [e.cause() for e in errors]},
    )


# -- k8s.io/apimachinery/pkg/util/validation ------------------------------------------------------------------
def _regex_error(message: str, fmt: str, *examples: str) -> str:
    shown = "".join(f"'{e}', " if i == 0 else f" or '{e}', " for i, e in enumerate(examples))
    return f"{message} (e.g. {shown}regex used for validation is '{fmt}')"


def _max_len(n: int) -> str:
    return f"must be no more than {n} characters"


def _matches(pattern: str, value: str) -> bool:
    return re.fullmatch(pattern, value) is not None


def dns1123_label(value: str) -> list[str]:
    errors = [_max_len(63)] if len(value) > 63 else []
    if not _matches(DNS1123_LABEL, value):
        if _matches(DNS1123_SUBDOMAIN, value):
            errors.append("must not contain dots")
        else:
            errors.append(_regex_error("a lowercase RFC 1123 label must consist of lower case alphanumeric characters "
                                       "or '-', and must start and end with an alphanumeric character",
                                       DNS1123_LABEL, "my-name", "123-abc"))  # fmt: skip
    return errors


def dns1123_subdomain(value: str) -> list[str]:
    errors = [_max_len(253)] if len(value) > 253 else []
    if not _matches(DNS1123_SUBDOMAIN, value):
        errors.append(_regex_error("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                                   "characters, '-' or '.', and must start and end with an alphanumeric character",
                                   DNS1123_SUBDOMAIN, "example.com"))  # fmt: skip
    return errors


_QNAME_MSG = ("must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
              "alphanumeric character")  # fmt: skip


def qualified_name(value: str) -> list[str]:
    """A label or annotation key: an optional DNS subdomain prefix and '/', then a name of at most 63."""
    parts, errors = value.split("/"), []
    if len(parts) > 2:
        return ["a qualified name " + _regex_error(_QNAME_MSG, QUALIFIED_NAME, "MyName", "my.name", "123-abc")
                + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"]  # fmt: skip
    if len(parts) == 2:
        prefix = parts[0]
        errors += [f"prefix part {m}" for m in dns1123_subdomain(prefix)] if prefix else [
            "prefix part must be non-empty"
        ]
    name = parts[-1]
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > 63:
        errors.append("name part " + _max_len(63))
    if not _matches(QUALIFIED_NAME, name):
        errors.append("name part " + _regex_error(_QNAME_MSG, QUALIFIED_NAME, "MyName", "my.name", "123-abc"))
    return errors


def label_value(value: str) -> list[str]:
    errors = [_max_len(63)] if len(value) > 63 else []
    if not _matches(LABEL_VALUE, value):
        errors.append(_regex_error("a valid label must be an empty string or consist of alphanumeric characters, "
                                   "'-', '_' or '.', and must start and end with an alphanumeric character",
                                   LABEL_VALUE, "MyValue", "my_value", "12345"))  # fmt: skip
    return errors


# -- ObjectMeta (k8s.io/apimachinery/pkg/api/validation) ---------------------------------------------------------
def validate_labels(labels: Any, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    for key, value in (labels or {}).items():
        errors += [FieldError("Invalid", path, key, m) for m in qualified_name(str(key))]
        errors += [FieldError("Invalid", path, value, m) for m in label_value(str(value))]
    return errors


def validate_annotations(annotations: Any, path: str) -> list[FieldError]:
    annotations = annotations or {}
    errors = [FieldError("Invalid", path, key, m) for key in annotations for m in qualified_name(str(key).lower())]
    size = sum(len(str(k).encode()) + len(str(v).encode()) for k, v in annotations.items())
    if size > ANNOTATIONS_MAX_BYTES:
        errors.append(FieldError("TooLong", path, detail=f"must have at most {ANNOTATIONS_MAX_BYTES} bytes"))
    return errors


def validate_owner_references(refs: Any, path: str) -> list[FieldError]:
    errors, controller = [], ""
    for ref in refs or []:
        api_version = str(ref.get("apiVersion") or "")
        for key, value, ok, detail in (
            ("apiVersion", api_version, api_version.split("/")[-1], "version must not be empty"),
            ("kind", ref.get("kind") or "", ref.get("kind"), "must not be empty"),
            ("name", ref.get("name") or "", ref.get("name"), "must not be empty"),
            ("uid", ref.get("uid") or "", ref.get("uid"), "must not be empty"),
        ):
            if not ok:
                errors.append(FieldError("Invalid", f"{path}.{key}", value, detail))
        if ref.get("controller") is True:
            current = f"{ref.get('kind')}/{ref.get('name')}"
            if controller:
                errors.append(FieldError("Invalid", path, refs, "Only one reference can have Controller set to true. "
                                         f'Found "true" in references for {controller} and {current}'))  # fmt: skip
            controller = controller or current
    return errors


def validate_metadata(meta: Mapping[str, Any], name_rule: Callable[[str], list[str]] = dns1123_subdomain,
                      namespaced: bool = True) -> list[FieldError]:  # fmt: skip
    """ValidateObjectMeta: the name (by the kind's rule), the namespace, labels, annotations, ownerReferences."""
    name = meta.get("name") or ""
    errors = [FieldError("Invalid", "metadata.name", name, m) for m in name_rule(name)] if name else []
    if namespaced and meta.get("namespace"):
        errors += [FieldError("Invalid", "metadata.namespace", meta["namespace"], m)
                   for m in dns1123_label(meta["namespace"])]  # fmt: skip
    errors += validate_labels(meta.get("labels"), "metadata.labels")
    errors += validate_annotations(meta.get("annotations"), "metadata.annotations")
    errors += validate_owner_references(meta.get("ownerReferences"), "metadata.ownerReferences")
    return errors


def name_rule(group: str, plural: str) -> Callable[[str], list[str]]:
    """Namespaces are DNS-1123 labels; the other kinds emulated here are DNS-1123 subdomains."""
    return dns1123_label if (group, plural) == ("", "namespaces") else dns1123_subdomain


# -- Jobs (k8s.io/kubernetes/pkg/registry/batch/job, pkg/apis/batch/validation) ---------------------------------
def default_job(job: dict[str, Any]) -> None:
    """What the API does to a Job it creates: the Job's labels default to its pod template's, and (unless
    spec.manualSelector) the template gets the job-name and controller-uid labels and spec.selector selects the
    uid. Call it once metadata.name and metadata.uid are set."""
    meta, spec = job.setdefault("metadata", {}), job.setdefault("spec", {})
    template_meta = spec.setdefault("template", {}).setdefault("metadata", {})
    if not meta.get("labels") and template_meta.get("labels"):
        meta["labels"] = dict(template_meta["labels"])
    if spec.get("manualSelector") is True:
        return
    labels = template_meta.setdefault("labels", {})
    for key in JOB_NAME_LABELS:
        labels.setdefault(key, meta["name"])
    for key in JOB_UID_LABELS:
        labels.setdefault(key, meta["uid"])
    selector = spec.get("selector") or {}
    selector.setdefault("matchLabels", {}).setdefault(JOB_UID_LABELS[1], meta["uid"])
    spec["selector"] = selector


def validate_pod_template(template: Any, path: str) -> list[FieldError]:
    """ValidatePodTemplateSpec, its metadata part: errors read `spec.template.labels`, not `.metadata.labels`."""
    meta = (template.get("metadata") if isinstance(template, dict) else None) or {}
    labels, annotations = meta.get("labels"), meta.get("annotations")
    return validate_labels(labels, f"{path}.labels") + validate_annotations(annotations, f"{path}.annotations")


# -- refusals --------------------------------------------------------------------------------------------------
VERBS = frozenset({"create", "update", "delete"})


@attrs.define(kw_only=True)
class Refusal:
    """A test's stand-in for a validating admission step (webhook, ResourceQuota, a missing ServiceAccount):
    a request on `resource` with a verb in `verbs` whose object `when` accepts is answered `code`/`reason`/
    `message` instead of being stored. `refused` counts the requests it refused; `cancel()` lifts it."""

    resource: str  # plural ("jobs"), plural.group ("jobs.batch") or Kind ("Job")
    when: Callable[[dict[str, Any]], bool] | None = None
    code: int = 403
    reason: str = "Forbidden"
    message: str | Callable[[dict[str, Any]], str] | None = None
    verbs: frozenset[str] = attrs.field(default=frozenset({"create"}), converter=frozenset)
    refused: int = 0
    active: bool = True

    def __attrs_post_init__(self) -> None:
        if not self.verbs <= VERBS:
            raise ValueError(f"verbs must be among {sorted(VERBS)}, not {sorted(self.verbs)}")

    def cancel(self) -> None:
        self.active = False

    def applies(self, verb: str, res: kmock.resource, kind: str | None, obj: dict[str, Any]) -> bool:
        names = {res.plural, f"{res.plural}.{res.group}" if res.group else res.plural, kind}
        return self.active and verb in self.verbs and self.resource in names and (self.when is None or self.when(obj))

    def error(self, res: kmock.resource, obj: dict[str, Any]) -> kmock.KubernetesError:
        name = (obj.get("metadata") or {}).get("name") or ""
        what = f"{res.plural}.{res.group}" if res.group else str(res.plural)
        message = self.message(obj) if callable(self.message) else self.message
        self.refused += 1
        return kmock.KubernetesError(status=self.code, reason=self.reason,
                                     message=message or f'{what} "{name}" is forbidden: refused by the test',
                                     details={"name": name, "group": res.group, "kind": res.plural})  # fmt: skip


def first_refusal(refusals: Iterable[Refusal], verb: str, res: kmock.resource, kind: str | None,
                  obj: dict[str, Any]) -> Refusal | None:  # fmt: skip
    return next((r for r in list(refusals) if r.applies(verb, res, kind, obj)), None)
