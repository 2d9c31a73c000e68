"""Custom resources against their CRD version's openAPIV3Schema, as kube-apiserver treats them on every write
(create, update, patch, and the status subresource alike), for the emulator in support.kube:

1. prune: fields the schema does not describe vanish (apiVersion/kind/metadata at the root and in
   x-kubernetes-embedded-resource objects stay; x-kubernetes-preserve-unknown-fields keeps a subtree's unknowns);
2. nulls in fields that are neither `nullable` nor defaulted vanish; 3. `default`s are applied;
4. validate: the OpenAPI 3.0 schema (openapi-schema-validator's OAS30Validator; formats: date-time and date
   only, leniently, as the API), x-kubernetes-list-type set/map uniqueness, then the x-kubernetes-validations
   CEL rules (unless a type/required/enum/too-long/too-many error made them moot, as in the API).

CEL runs on cel-python (celpy), which parses rules without type-checking them and lacks Kubernetes' extension
libraries (lowerAscii, split, quantity, url, ...). A rule it cannot parse, or that calls a function it lacks, is
skipped - the write goes through as if the rule held - and listed in `CrdSchema.skipped`, so a test can assert
that none of a CRD's rules was. `self` is typed by the schema (a `number` field holding 1 is 1.0); at the root
it carries metadata.name and metadata.generateName only; transition rules (`oldSelf`) run on updates, where the
old value correlates (object fields, map-list entries by key), as in the API.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from typing import Any

import attrs
from jsonschema import FormatChecker
from openapi_schema_validator import OAS30Validator

from support.kube_validation import FieldError

try:
    import celpy
except ImportError:  # every rule is then skipped, and says why
    celpy = None

PRESERVE = "x-kubernetes-preserve-unknown-fields"
RULES = "x-kubernetes-validations"
ROOT_FIELDS = ("apiVersion", "kind", "metadata")
# Errors after which the API does not run CEL rules (they would see values of the wrong type or none).
BLOCKING = {"NotSupported", "Required", "TooLong", "TooMany", "TypeInvalid"}
NOT_CHECKED = FieldError("Invalid", "<nil>", None, "some validation rules were not checked because the object was "
                         "invalid; correct the existing errors to complete validation")  # fmt: skip
# strfmt's date-time layouts: RFC 3339 with or without seconds, fraction, zone; 'T' or a space.
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:?\d{2})?")
FORMATS = FormatChecker(formats=())
FORMATS.checks("date-time")(lambda value: not isinstance(value, str) or bool(_DATE_TIME.fullmatch(value)))
FORMATS.checks("date")(lambda value: not isinstance(value, str) or bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}", value)))


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"  # the API decodes whole JSON numbers as int64
    return {float: "number", str: "string", list: "array", dict: "object"}.get(type(value), "object")


def child_path(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _json_path(parts: Any) -> str:
    path = ""
    for part in parts:
        path = child_path(path, part)
    return path


def child_schema(schema: dict[str, Any] | None, key: str) -> dict[str, Any] | None:
    if schema is None:
        return None
    properties = schema.get("properties") or {}
    if key in properties:
        return properties[key]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else None


def _items(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    items = (schema or {}).get("items")
    return items if isinstance(items, dict) else None


def prune(value: Any, schema: dict[str, Any] | None, root: bool = False, path: str = "") -> list[str]:
    """Remove, in place, the fields the schema does not describe (structural pruning); return their paths."""
    pruned: list[str] = []
    if schema is None:
        return pruned
    if isinstance(value, dict):
        kept = ROOT_FIELDS if root or schema.get("x-kubernetes-embedded-resource") else ()
        for key in list(value):
            sub = child_schema(schema, key)
            if key in kept:
                continue  # metadata is ObjectMeta's business, not the schema's
            if sub is not None:
                pruned += prune(value[key], sub, path=child_path(path, key))
            elif not (schema.get(PRESERVE) is True or schema.get("additionalProperties") is True):
                del value[key]
                pruned.append(child_path(path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            pruned += prune(item, _items(schema), path=child_path(path, index))
    return pruned


def drop_nulls(value: Any, schema: dict[str, Any] | None) -> None:
    """Remove, in place, nulls in fields that are neither nullable nor defaulted."""
    if isinstance(value, dict):
        for key in list(value):
            sub = child_schema(schema, key)
            if value[key] is None and sub is not None and not sub.get("nullable") and "default" not in sub:
                del value[key]
            else:
                drop_nulls(value[key], sub)
    elif isinstance(value, list):
        for item in value:
            drop_nulls(item, _items(schema))


def apply_defaults(value: Any, schema: dict[str, Any] | None) -> None:
    if schema is None:
        return
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if "default" in sub and (key not in value or (value[key] is None and not sub.get("nullable"))):
                value[key] = copy.deepcopy(sub["default"])
        for key, item in value.items():
            apply_defaults(item, child_schema(schema, key))
    elif isinstance(value, list):
        for item in value:
            apply_defaults(item, _items(schema))


# -- OpenAPI validation, worded as apiextensions-apiserver words kube-openapi's errors ----------------------------
def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


_BOUNDS = {("minimum", False): "greater than or equal to", ("minimum", True): "greater than",
           ("maximum", False): "less than or equal to", ("maximum", True): "less than"}  # fmt: skip


def _openapi_errors(error: Any) -> list[FieldError]:
    keyword, value, limit, schema = error.validator, error.instance, error.validator_value, error.schema
    path = _json_path(error.absolute_path)
    where = f"{path} in body"
    if keyword == "required":
        missing = [p for p in limit if isinstance(value, dict) and p not in value]
        return [FieldError("Required", child_path(path, p)) for p in missing]
    if keyword in ("type", "nullable"):
        expected = schema.get("type", limit)
        if value is None:
            return [FieldError("TypeInvalid", path, "", f"{where} must be of type {expected}")]
        actual = json_type(value)
        return [FieldError("TypeInvalid", path, actual, f"{where} must be of type {expected}: {json.dumps(actual)}")]
    if keyword == "format":
        return [FieldError("TypeInvalid", path, value, f"{where} must be of type {limit}: {json.dumps(value)}")]
    if keyword == "enum":
        allowed = ", ".join(json.dumps(v if isinstance(v, str) else json.dumps(v)) for v in limit)
        return [FieldError("NotSupported", path, value, f"supported values: {allowed}")]
    if keyword in ("minimum", "maximum"):
        exclusive = schema.get("exclusiveMinimum" if keyword == "minimum" else "exclusiveMaximum") is True
        return [FieldError("Invalid", path, value, f"{where} should be {_BOUNDS[keyword, exclusive]} {_number(limit)}")]
    if keyword == "maxLength":
        return [FieldError("TooLong", path, value, f"may not be longer than {limit}")]
    if keyword == "maxItems":
        return [FieldError("TooMany", path, len(value), f"must have at most {limit} items")]
    if keyword == "maxProperties":
        return [FieldError("TooMany", path, len(value), f"must have at most {limit} items")]
    details = {
        "minLength": (value, f"should be at least {limit} chars long"),
        "pattern": (value, f"should match '{limit}'"),
        "minItems": (len(value) if isinstance(value, list) else value, f"should have at least {limit} items"),
        "minProperties": (len(value) if isinstance(value, dict) else value, f"should have at least {limit} properties"),
        "uniqueItems": (value, "shouldn't contain duplicates"),
        "multipleOf": (value, f"should be a multiple of {_number(limit)}"),
    }
    shown, detail = details.get(keyword, (value, error.message))
    return [FieldError("Invalid", path, shown, f"{where} {detail}")]


def _list_errors(value: Any, schema: dict[str, Any] | None, path: str) -> list[FieldError]:
    """x-kubernetes-list-type: no duplicate items in a set, no duplicate keys in a map."""
    if schema is None:
        return []
    errors: list[FieldError] = []
    if isinstance(value, dict):
        for key, item in value.items():
            errors += _list_errors(item, child_schema(schema, key), child_path(path, key))
    elif isinstance(value, list):
        list_type, keys, seen = schema.get("x-kubernetes-list-type"), schema.get("x-kubernetes-list-map-keys"), set()
        for index, item in enumerate(value):
            identity: Any = item
            if list_type == "map" and keys and isinstance(item, dict):
                identity = {k: item[k] for k in keys if k in item}
            canonical = json.dumps(identity, sort_keys=True)
            if list_type in ("set", "map") and canonical in seen:
                errors.append(FieldError("Duplicate", child_path(path, index), identity))
            seen.add(canonical)
            errors += _list_errors(item, _items(schema), child_path(path, index))
    return errors


# -- x-kubernetes-validations ---------------------------------------------------------------------------------
@functools.cache
def _environment() -> Any:
    return celpy.Environment()


@functools.cache
def _compile(rule: str) -> Any:
    environment = _environment()
    return environment.program(environment.compile(rule))


def to_cel(value: Any, schema: dict[str, Any] | None) -> Any:
    """A JSON value as CEL sees it through its schema, then as celpy's types."""

    def typed(node: Any, sub: dict[str, Any] | None) -> Any:
        if isinstance(node, dict):
            return {k: typed(v, child_schema(sub, k)) for k, v in node.items()}
        if isinstance(node, list):
            return [typed(v, _items(sub)) for v in node]
        if isinstance(node, int) and not isinstance(node, bool) and (sub or {}).get("type") == "number":
            return float(node)
        return node

    return celpy.json_to_cel(typed(value, schema))


@attrs.define
class Rule:
    """One x-kubernetes-validations entry; `where` is its schema location ("<root>", "spec.datasets[*]")."""

    where: str
    rule: str
    message: str = ""
    message_expression: str = ""
    field_path: str = ""
    reason: str = ""
    schema_type: str = "object"
    program: Any = None
    skipped: str = ""  # why it is not evaluated (set when it cannot be compiled or run by celpy)
    evaluated: int = 0  # times it ran

    @property
    def transition(self) -> bool:
        return re.search(r"\boldSelf\b", self.rule) is not None

    def failure(self, path: str, activation: dict[str, Any]) -> FieldError:
        """The error for a rule that evaluated to false (fieldErrorForReason in the API)."""
        detail = self.message.strip() or f"failed rule: {self.rule.strip()}"
        if self.message_expression:
            detail = self._message_from_expression(activation) or detail
        if self.field_path:
            path = (path + "." if path else "") + self.field_path.lstrip(".")
        path = path or "<nil>"
        if self.reason == "FieldValueForbidden":
            return FieldError("Forbidden", path, detail=detail)
        if self.reason == "FieldValueRequired":
            return FieldError("Required", path, detail=detail)
        if self.reason == "FieldValueDuplicate":
            return FieldError("Duplicate", path, self.schema_type)
        return FieldError("Invalid", path, self.schema_type, detail)

    def _message_from_expression(self, activation: dict[str, Any]) -> str:
        try:
            result = _compile(self.message_expression).evaluate(activation)
        except Exception:  # the API falls back to `message` too
            return ""
        return str(result) if isinstance(result, str) else ""


class CrdSchema:
    """One served version's openAPIV3Schema: `admit(obj, old)` -> (the object to store, errors)."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = copy.deepcopy(schema)
        self._validator = OAS30Validator(self.schema, format_checker=FORMATS)
        self.rules: list[Rule] = []
        self.pruned: set[str] = set()  # every field path pruned so far (the API warns `unknown field "<path>"`)
        self._rules_at: dict[int, list[Rule]] = {}
        self._collect(self.schema, "<root>")

    @property
    def skipped(self) -> list[Rule]:
        return [r for r in self.rules if r.skipped]

    def _collect(self, schema: dict[str, Any], where: str) -> None:
        for entry in schema.get(RULES) or []:
            rule = Rule(where, entry.get("rule", ""), entry.get("message", ""), entry.get("messageExpression", ""),
                        entry.get("fieldPath", ""), entry.get("reason", ""), schema.get("type", "object"))  # fmt: skip
            if celpy is None:
                rule.skipped = "cel-python (celpy) is not installed"
            else:
                try:
                    rule.program = _compile(rule.rule)
                except Exception as error:  # celpy.CELParseError: a rule the API may accept; skip, say why
                    rule.skipped = f"cel-python cannot parse it: {str(error).strip()}"
            self.rules.append(rule)
            self._rules_at.setdefault(id(schema), []).append(rule)
        base = "" if where == "<root>" else where
        for key, sub in (schema.get("properties") or {}).items():
            self._collect(sub, child_path(base, key))
        if isinstance(schema.get("additionalProperties"), dict):
            self._collect(schema["additionalProperties"], child_path(base, "*"))
        if _items(schema) is not None:
            self._collect(schema["items"], f"{base}[*]")

    def admit(self, obj: dict[str, Any], old: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[FieldError]]:
        """Prune, drop disallowed nulls, default, and validate; `old` is the stored object on updates."""
        new = copy.deepcopy(obj)
        self.pruned.update(prune(new, self.schema, root=True))
        drop_nulls(new, self.schema)
        apply_defaults(new, self.schema)
        errors: list[FieldError] = []
        for error in self._validator.iter_errors(new):
            errors += [e for e in _openapi_errors(error) if e not in errors]
        errors += _list_errors(new, self.schema, "")
        if any(e.type in BLOCKING for e in errors):
            return new, [*errors, NOT_CHECKED] if self.rules else errors
        root = {**new, "metadata": {k: v for k, v in (new.get("metadata") or {}).items()
                                    if k in ("name", "generateName")}}  # fmt: skip
        old_root = None if old is None else {**old, "metadata": root["metadata"]}
        self._check_rules(root, self.schema, "", old_root, old is not None, errors)
        return new, errors

    def _check_rules(self, value: Any, schema: dict[str, Any] | None, path: str, old: Any, has_old: bool,
                     errors: list[FieldError]) -> None:  # fmt: skip
        if schema is None or value is None:
            return
        for rule in self._rules_at.get(id(schema), ()):
            if not rule.skipped and (has_old or not rule.transition):
                self._evaluate(rule, value, schema, old, path, errors)
        if isinstance(value, dict):
            for key, item in value.items():
                if path or key != "metadata":
                    known = has_old and isinstance(old, dict) and key in old
                    sub_old = old[key] if known else None
                    self._check_rules(item, child_schema(schema, key), child_path(path, key), sub_old, known, errors)
        elif isinstance(value, list):
            keys = schema.get("x-kubernetes-list-map-keys") if schema.get("x-kubernetes-list-type") == "map" else None
            for index, item in enumerate(value):
                sub_old = None
                if keys and has_old and isinstance(old, list) and isinstance(item, dict):
                    same = (o for o in old if isinstance(o, dict) and all(o.get(k) == item.get(k) for k in keys))
                    sub_old = next(same, None)
                self._check_rules(item, _items(schema), child_path(path, index), sub_old, sub_old is not None, errors)

    def _evaluate(self, rule: Rule, value: Any, schema: dict[str, Any], old: Any, path: str,
                  errors: list[FieldError]) -> None:  # fmt: skip
        activation = {"self": to_cel(value, schema)}
        if rule.transition:
            activation["oldSelf"] = to_cel(old, schema)
        try:
            result = rule.program.evaluate(activation)
        except celpy.CELEvalError as error:
            result = error
        except Exception as error:  # celpy's own failure on a rule it parsed: not the object's fault
            rule.skipped = f"cel-python failed running it: {error!r}"
            return
        if isinstance(result, celpy.CELEvalError):
            text = str(result.args[0]) if result.args else str(result)
            unknown = re.search(r"undeclared reference to '[^']*'", text)
            if unknown:  # a function of Kubernetes' CEL libraries (or a variable) celpy does not know
                rule.skipped = f"cel-python cannot run it: {unknown.group(0)}"
                return
            rule.evaluated += 1
            member = re.search(r"no such member in mapping: '([^']*)'", text)  # the API: "no such key: <name>"
            text = f"no such key: {member.group(1)}" if member else text
            errors.append(FieldError("Invalid", path or "<nil>", rule.schema_type,
                                     f"{text} evaluating rule: {(rule.message or rule.rule).strip()}"))  # fmt: skip
            return
        rule.evaluated += 1
        if not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
            errors.append(rule.failure(path, activation))
