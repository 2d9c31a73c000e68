"""The chart's ValidatingAdmissionPolicy, rendered by helm and run by a real CEL implementation (cel-python, RE2
regexes as in Kubernetes) on the operator's own case table (support/policy_cases.py): the same values refuse the
same fields at apply time as the operator does in status. The rendered Deployment's environment, read back by
Settings.from_env, must give the operator the same answer, so chart values and operator settings cannot drift."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_ablation.api.resource import parse_spec
from lora_ablation_operator.planning import plan_for
from lora_ablation_operator.policy import Policy
from lora_ablation_operator.settings import Settings
from support.chart import CHART, admit, chart, helm, of_kind, rendered
from support.policy_cases import BASE_POLICY, CONTEXT, manifest, params, policy_values

celpy = pytest.importorskip("celpy", reason="cel-python evaluates the CEL")
OPERATOR_USER = "system:serviceaccount:lora-system:release-lora-ablation-operator"


def paths(messages: list[str]) -> set[str]:
    return {re.sub(r"\[\d+\]", "[*]", m.split(":", 1)[0]) for m in messages}


@pytest.mark.parametrize(("policy", "patch", "refused"), params())
def test_admission_policy_cases(policy, patch, refused):
    docs = chart(policy_values(policy))
    assert paths(admit(docs, manifest(**patch))) == refused


@pytest.mark.parametrize(("policy", "patch", "refused"), params())
def test_the_rendered_operator_settings_refuse_the_same_fields(policy, patch, refused, monkeypatch):
    (deployment,) = of_kind(list(chart(policy_values(policy))), "Deployment")
    for env in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        if env["name"].startswith("LORA_ABLATION_"):
            monkeypatch.setenv(env["name"], env["value"])
    planned = plan_for("demo", "team-a", manifest(**patch)["spec"], Settings.from_env())
    assert paths((planned.problem or "").split("; ") if planned.reason == "Forbidden" else []) == refused


def test_the_charts_default_policy_is_the_operators_and_the_tables(monkeypatch):
    """A fresh install, an operator started without the chart's environment and the case table's base agree."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())["policy"]
    assert {k: v for k, v in values.items() if k != "admission"} == {**BASE_POLICY, "allowedBuckets": []}
    (deployment,) = of_kind(list(rendered(json.dumps(CONTEXT, sort_keys=True))), "Deployment")
    for env in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        if env["name"].startswith("LORA_ABLATION_POLICY_"):
            monkeypatch.setenv(env["name"], env["value"])
    assert Settings.from_env().policy == Settings().policy == Policy()


def test_the_operator_and_status_writes_and_unchanged_specs_are_not_judged():
    docs = chart(policy_values({"allowedBuckets": []}))  # a policy tightened after objects were created
    old = manifest()
    assert admit(docs, old) is not None and admit(docs, old) != []
    touched = {**old, "metadata": {**old["metadata"], "annotations": {"kopf": "x"}}}
    assert admit(docs, touched, old) is None, "metadata-only updates (finalizers, annotations) pass"
    edited = manifest(storage={"uri": "s3://results/other"})
    assert admit(docs, edited, old) is not None, "a spec edit is judged"
    assert admit(docs, edited, old, user=OPERATOR_USER) is None, "the operator itself is never refused"
    (policy,) = of_kind(list(docs), "ValidatingAdmissionPolicy")
    assert policy["spec"]["matchConstraints"]["resourceRules"][0]["resources"] == ["loraablations"]  # not /status


def test_binding_actions_namespaces_and_switch():
    docs = chart(policy_values({}), watchNamespaces=["ml-a", "ml-b"])
    (binding,) = of_kind(list(docs), "ValidatingAdmissionPolicyBinding")
    (policy,) = of_kind(list(docs), "ValidatingAdmissionPolicy")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"][0]["values"] == ["ml-a", "ml-b"]
    trial = chart({**policy_values({}), "admission": {"enabled": True, "validationActions": ["Warn", "Audit"]}})
    (binding,) = of_kind(list(trial), "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["validationActions"] == ["Warn", "Audit"] and "matchResources" not in binding["spec"]
    off = chart({**policy_values({}), "admission": {"enabled": False}})
    assert not [d for d in off if d["kind"].startswith("ValidatingAdmissionPolicy")]


def test_a_trailing_newline_is_refused_by_cel_and_the_crd_pattern():
    image = "ghcr.io/lora-ablation/trainer:0.2.0\n"
    assert paths(admit(chart(policy_values({})), manifest(execution={"image": image}))) == {"spec.execution.image"}
    (crd,) = [d for d in chart(policy_values({})) if d["kind"] == "CustomResourceDefinition"]
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["execution"]
    pattern = schema["properties"]["image"]["pattern"]
    assert celpy.Environment().program(celpy.Environment().compile(f"i.matches({pattern!r})")).evaluate(
        {"i": celpy.celtypes.StringType(image)}) == celpy.celtypes.BoolType(False)


@pytest.mark.parametrize("values", [
    {"allowedImageRepositories": ["ghcr.io/x/trainer:1.0"]},  # a tag would match differently in CEL and Python
    {"allowedImageRepositories": ["ghcr.io/x/trainer@sha256:" + "a" * 64]},
    {"allowedImageDigests": ["latest"]}, {"allowedBuckets": ["Bad_Bucket"]},
    {"allowedStorageEndpoints": ["minio:9000"]}, {"allowedTrackingUris": ["mlflow:5000"]}, {"allowedSecrets": ["a,b"]},
    {"allowedClaims": ["Team_B"]}, {"allowedPriorityClasses": ["a,b"]}, {"allowedTolerationKeys": ["a b"]},
    {"allowedTolerationEffects": ["NoEvict"]}, {"allowedNodeSelectors": ["pool=a,b"]},
    {"allowedNodeSelectors": ["pool=bad value"]}, {"allowAffinity": "yes"},
])  # fmt: skip
def test_policy_values_the_two_checks_could_read_differently_are_refused(values):
    done = helm("template", "r", str(CHART), "--values", "-", input_text=json.dumps({"policy": values}))
    assert done.returncode != 0 and "policy" in done.stderr


# Images are where the two implementations differ most (a parser in Python, anchored RE2 patterns in CEL): random
# references built from pieces that sit near the allowed entries must get the same answer from both.
_IMAGE_POLICY = {"allowedImageRepositories": ["registry", "registry:5000/ml/trainer", "registry.corp/ml/",
                                              "ghcr.io/acme/t"],
                 "allowedImageDigests": ["sha256:" + "a" * 64, "sha256:" + "b" * 64]}  # fmt: skip
_hosts = st.sampled_from(["registry", "registry:5000", "registry.corp", "ghcr.io", "ghcr.io:443", "docker.io"])
_parts = st.lists(st.sampled_from(["ml", "ml-evil", "trainer", "acme", "t", "t2", "lora-ablation", "x.y", "_"]),
                  min_size=1, max_size=3)  # fmt: skip
_tags = st.sampled_from(["", ":1", ":v1.2-rc", ":latest", ":5000", ":_x", ":.bad", ":a/b"])
_digests = st.sampled_from(["", "@sha256:" + "a" * 64, "@sha256:" + "b" * 64, "@sha256:" + "c" * 64, "@sha256:ab"])


@pytest.fixture(scope="module")
def warm_cel():
    admit(chart(policy_values(_IMAGE_POLICY)), manifest())  # celpy raises the recursion limit on its first compile


@pytest.mark.slow
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(host=_hosts, parts=_parts, tag=_tags, digest=_digests, pinned=st.booleans())
def test_random_images_get_the_same_answer_from_cel_and_the_operator(warm_cel, host, parts, tag, digest, pinned):
    from lora_ablation_operator.policy import Policy, violations

    image = "/".join([host, *parts]) + tag + digest
    values = policy_values(_IMAGE_POLICY if pinned else {**_IMAGE_POLICY, "allowedImageDigests": []})
    refused = admit(chart(values), manifest(execution={"image": image}))
    cel = {m for m in refused if m.startswith("spec.execution.image")}
    policy = Policy(image_repositories=tuple(values["allowedImageRepositories"]),
                    image_digests=tuple(values["allowedImageDigests"]), buckets=("*",))  # fmt: skip
    spec = parse_spec(manifest(execution={"image": image})["spec"])
    python = violations(spec, policy, trainer_image=CONTEXT["trainerImage"])
    assert len(cel) == len(python), (image, cel, python)


def notes(*args: str) -> str:
    done = helm("install", "release", str(CHART), "--dry-run=client", "--namespace", "lora-system", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.split("NOTES:", 1)[1]


def test_the_notes_of_a_default_install_print_the_lines_that_admit_the_example(monkeypatch):
    """A fresh install refuses every bucket (safe); NOTES.txt says so and prints the --set lines the example needs,
    and those lines, given to helm as printed, make the chart's CEL and the operator's settings both admit it."""
    fresh = notes()
    assert "policy.allowedBuckets is empty" in fresh and "policy.allowedClaims is empty" in fresh
    block = fresh.split("is refused by this policy until:", 1)[1].split("\n\n", 1)[0]
    sets = [a for line in re.findall(r"--set '([^']+)'", block) for a in ("--set", line)]
    assert len(sets) == 8, block
    example = yaml.safe_load((CHART.parents[1] / "examples" / "module-study.yaml").read_text())
    assert len(admit(rendered(json.dumps({})), example)) == 6  # bucket (x3), Secrets (x2), endpoint
    out = helm("template", "release", str(CHART), "--namespace", "lora-system", *sets)
    assert out.returncode == 0, out.stderr
    docs = tuple(d for d in yaml.safe_load_all(out.stdout) if d)
    assert admit(docs, example) == []
    (deployment,) = of_kind(list(docs), "Deployment")
    for env in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        if env["name"].startswith("LORA_ABLATION_") and "value" in env:
            monkeypatch.setenv(env["name"], env["value"])
    planned = plan_for(example["metadata"]["name"], "ml-research", example["spec"], Settings.from_env())
    assert planned.problem is None, planned.problem
    assert "is refused by this policy" not in notes(*sets), "once set, the notes stop asking"


# Placement has the most shapes (absent keys and effects, "*", key=value entries): random tolerations, node labels
# and lists must get the same fields refused by CEL and by the operator.
_keys = st.sampled_from([None, "nvidia.com/gpu", "dedicated", "example.com/pool"])
_effects = st.sampled_from([None, "NoSchedule", "PreferNoSchedule", "NoExecute"])
_toleration = st.builds(lambda k, e: {"operator": "Exists", **({"key": k} if k else {}),
                                      **({"effect": e} if e else {})}, _keys, _effects)  # fmt: skip
_tolerations = st.lists(_toleration, max_size=3)
_labels = st.dictionaries(st.sampled_from(["pool", "dedicated", "nvidia.com/gpu.product"]),
                          st.sampled_from(["shared", "team-b", "H100"]), max_size=3)  # fmt: skip
_entries = st.lists(st.sampled_from(["*", "pool", "pool=shared", "dedicated=team-b", "nvidia.com/gpu.product"]),
                    unique=True, max_size=3)  # fmt: skip


@pytest.mark.slow
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tolerations=_tolerations, labels=_labels, entries=_entries,
       keys=st.lists(st.sampled_from(["*", "nvidia.com/gpu", "dedicated"]), unique=True, max_size=2),
       effects=st.lists(st.sampled_from(["*", "NoSchedule", "PreferNoSchedule", "NoExecute"]),
                        unique=True))  # fmt: skip
def test_random_placements_get_the_same_answer_from_cel_and_the_operator(warm_cel, tolerations, labels, entries,
                                                                          keys, effects):  # fmt: skip
    from lora_ablation_operator.policy import violations

    values = policy_values({"allowedTolerationKeys": keys, "allowedTolerationEffects": effects,
                            "allowedNodeSelectors": entries})  # fmt: skip
    body = manifest(execution={"tolerations": tolerations, "nodeSelector": labels})
    cel = paths(admit(chart(values), body) or [])
    policy = Policy(buckets=("*",), toleration_keys=tuple(keys), toleration_effects=tuple(effects),
                    node_selectors=tuple(entries))  # fmt: skip
    python = paths(violations(parse_spec(body["spec"]), policy, trainer_image=CONTEXT["trainerImage"]))
    assert cel == python, (tolerations, labels, values)
