"""The chart as tests see it: the real helm binary (scripts/helm.sh), rendered documents, and the chart's
ValidatingAdmissionPolicy evaluated with cel-python as the API server would (variables, matchConditions)."""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from support.policy_cases import CONTEXT

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "lora-ablation-operator"


def helm(*args: str, input_text: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "helm.sh"), *args], capture_output=True, text=True,
                          timeout=300, input=input_text, cwd=ROOT)  # fmt: skip


def of_kind(docs: Any, kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


@functools.cache
def rendered(values_json: str) -> tuple[dict, ...]:
    done = helm("template", "release", str(CHART), "--namespace", "lora-system", "--values", "-",
                input_text=values_json)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def chart(policy: dict[str, Any], **extra: Any) -> tuple[dict, ...]:
    """The chart rendered with support.policy_cases.CONTEXT, this policy and any other values."""
    return rendered(json.dumps({**CONTEXT, "policy": policy, **extra}, sort_keys=True))


@functools.cache
def _program(expression: str) -> Any:
    import celpy

    environment = celpy.Environment()
    return environment.program(environment.compile(expression))


def _absent_nulls(value: Any) -> Any:
    """Kubernetes' CEL treats a null-valued field as absent (has() is false; kubernetes/kubernetes#106051), while
    cel-python's has() sees it: drop nulls so the harness reads an object as the API server does."""
    if isinstance(value, dict):
        return {k: _absent_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_absent_nulls(v) for v in value]
    return value


def admit(docs: tuple[dict, ...], obj: dict, old: dict | None = None, user: str = "jane") -> list[str] | None:
    """The failed validations' messages, as the API server would evaluate the policy; None when it does not
    apply (a matchCondition is false). A CEL error fails the test: in the API it would refuse everything."""
    import celpy

    (policy,) = of_kind(docs, "ValidatingAdmissionPolicy")
    obj, old = _absent_nulls(obj), _absent_nulls(old)
    request = {"operation": "UPDATE" if old else "CREATE", "userInfo": {"username": user}}
    activation: dict[str, Any] = {"object": celpy.json_to_cel(obj), "oldObject": celpy.json_to_cel(old),
                                  "request": celpy.json_to_cel(request)}  # fmt: skip
    for condition in policy["spec"].get("matchConditions", []):
        if not bool(_program(condition["expression"]).evaluate(activation)):
            return None
    variables: dict[Any, Any] = {}
    for variable in policy["spec"]["variables"]:
        activation["variables"] = celpy.celtypes.MapType(variables)
        value = _program(variable["expression"]).evaluate(activation)
        assert not isinstance(value, Exception), (variable, value)
        variables[celpy.celtypes.StringType(variable["name"])] = value
    activation["variables"] = celpy.celtypes.MapType(variables)
    failed = []
    for validation in policy["spec"]["validations"]:
        result = _program(validation["expression"]).evaluate(activation)
        assert isinstance(result, celpy.celtypes.BoolType), (validation["expression"], result)
        if not result:
            assert validation["reason"] == "Forbidden"
            failed.append(validation["message"])
    return failed
