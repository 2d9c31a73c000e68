"""The emulated API server refuses what kube-apiserver would refuse (validation of metadata, Job pod templates and
custom resources against their CRD schema and CEL rules, pruning, admission-style refusals via ApiServer.refuse),
with the API's messages, checked with the official client over HTTP. The kmock gaps: tests/test_kube_emulator.py."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator

import kubernetes
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from conftest import EXAMPLES, ROOT, minimal_manifest
from lora_ablation.api.base import GROUP, PLURAL, VERSION
from lora_ablation.api.crdgen import build_crd
from support.kube import ServedApi, serve_api
from support.kube_objects import job

CRD_YAML = "crds/lora.ablation.dev_loraablations.yaml"
SUBDOMAIN = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and "
             "must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
             r"'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")  # fmt: skip
NAME_PART = ("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
             "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
             "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")  # fmt: skip
LABEL_VALUE = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and "
               "must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', "
               "regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')")  # fmt: skip


def refusal(call, *args, **kwargs) -> dict:
    """The Status a refused call answered with (its HTTP code checked against the body's)."""
    with pytest.raises(ApiException) as caught:
        call(*args, **kwargs)
    status = json.loads(caught.value.body)
    assert status["kind"] == "Status" and status["status"] == "Failure" and status["code"] == caught.value.status
    return status


def ablation(name: str, **spec_overrides) -> dict:
    manifest = minimal_manifest(**spec_overrides)
    manifest["metadata"]["name"] = name
    return manifest


# -- one server for the module (the CRD installed once; every test uses its own names): what the API refuses -----
@pytest.fixture(scope="module")
def served() -> Iterator[tuple[ServedApi, kubernetes.client.ApiClient]]:
    with serve_api() as api:
        config = kubernetes.client.Configuration()
        config.host = api.url
        with kubernetes.client.ApiClient(config) as client:
            kubernetes.client.ApiextensionsV1Api(client).create_custom_resource_definition(build_crd())
            yield api, client


@pytest.fixture
def api(served) -> Iterator[ServedApi]:
    yield served[0]
    served[0].emulator.refusals.clear()


@pytest.fixture
def jobs(served) -> kubernetes.client.BatchV1Api:
    return kubernetes.client.BatchV1Api(served[1])


@pytest.fixture
def core(served) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(served[1])


@pytest.fixture
def custom(served) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(served[1])


def create_ablation(custom, manifest: dict) -> dict:
    return custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, manifest)


def test_a_job_name_longer_than_a_label_value_is_refused_as_the_api_does(api, jobs):
    name = "j" * 64
    status = refusal(jobs.create_namespaced_job, "default", job(name))
    assert status["reason"] == "Invalid" and status["code"] == 422
    detail = f'Invalid value: "{name}": must be no more than 63 characters'
    # The API puts the name in the pod template's job-name labels (two of them: one error in the message).
    assert status["message"] == f'Job.batch "{name}" is invalid: spec.template.labels: {detail}'
    assert status["details"]["kind"] == "Job" and status["details"]["group"] == "batch"
    assert status["details"]["causes"] == [{"reason": "FieldValueInvalid", "message": detail,
                                            "field": "spec.template.labels"}] * 2  # fmt: skip
    created = jobs.create_namespaced_job("default", job(name[:63]), _preload_content=False)
    stored = json.loads(created.data)
    labels, uid = stored["spec"]["template"]["metadata"]["labels"], stored["metadata"]["uid"]
    assert labels["batch.kubernetes.io/job-name"] == labels["job-name"] == name[:63]
    assert stored["spec"]["selector"] == {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}


def test_names_must_be_dns_subdomains_and_namespaces_dns_labels(api, core):
    body = {"metadata": {"name": "Bad_Name"}}
    status = refusal(core.create_namespaced_config_map, "default", body)
    assert status["message"] == (
        f'ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": {SUBDOMAIN}'
    )
    long_name = "c" * 254
    status = refusal(core.create_namespaced_config_map, "default", {"metadata": {"name": long_name}})
    assert status["details"]["causes"] == [{"reason": "FieldValueInvalid", "field": "metadata.name",
                                            "message": f'Invalid value: "{long_name}": must be no more than 253 '
                                                       "characters"}]  # fmt: skip
    assert core.create_namespaced_config_map("default", {"metadata": {"name": "c" * 253}})
    status = refusal(core.create_namespace, {"metadata": {"name": "team.a"}})
    assert status["message"] == (
        'Namespace "team.a" is invalid: metadata.name: Invalid value: "team.a": must not contain dots'
    )
    core.create_namespace({"metadata": {"name": "team-a"}})
    assert core.read_namespace("team-a").metadata.name == "team-a"
    assert "team-a" in [n.metadata.name for n in core.list_namespace().items]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"bad key": "v"}, f'Invalid value: "bad key": {NAME_PART}'),
        ({"k" * 64: "v"}, f'Invalid value: "{"k" * 64}": name part must be no more than 63 characters'),
        ({"Example.com/k": "v"}, f'Invalid value: "Example.com/k": prefix part {SUBDOMAIN}'),
        ({"k": "v" * 64}, f'Invalid value: "{"v" * 64}": must be no more than 63 characters'),
        ({"k": "-v"}, f'Invalid value: "-v": {LABEL_VALUE}'),
    ],
    ids=["key-chars", "key-length", "key-prefix", "value-length", "value-chars"],
)
def test_label_keys_and_values_are_validated_on_create_and_patch(api, core, labels, message, request):
    name = f"labels-{request.node.callspec.id}"
    status = refusal(core.create_namespaced_config_map, "default", {"metadata": {"name": name, "labels": labels}})
    assert status["message"] == f'ConfigMap "{name}" is invalid: metadata.labels: {message}'
    assert status["details"]["causes"] == [
        {"reason": "FieldValueInvalid", "message": message, "field": "metadata.labels"}
    ]
    core.create_namespaced_config_map("default", {"metadata": {"name": name, "labels": {"app": "x"}}})
    status = refusal(core.patch_namespaced_config_map, name, "default", {"metadata": {"labels": labels}})
    assert status["code"] == 422 and status["message"].endswith(f"metadata.labels: {message}")
    assert api.get("", "v1", "configmaps", name, "default")["metadata"]["labels"] == {"app": "x"}


def test_annotation_keys_and_total_size_are_validated(api, core):
    status = refusal(core.create_namespaced_config_map, "default",
                     {"metadata": {"name": "annotated", "annotations": {"a/b/c": "x"}}})  # fmt: skip
    assert status["details"]["causes"][0]["field"] == "metadata.annotations"
    assert status["details"]["causes"][0]["message"].startswith('Invalid value: "a/b/c": a qualified name must consist')
    big = {"note": "x" * (256 * 1024 - 4)}  # the limit counts keys and values: exactly 256 KiB passes
    core.create_namespaced_config_map("default", {"metadata": {"name": "annotated", "annotations": big}})
    more = {"metadata": {"annotations": {"n": "y"}}}
    status = refusal(core.patch_namespaced_config_map, "annotated", "default", more)
    assert status["message"] == (
        'ConfigMap "annotated" is invalid: metadata.annotations: Too long: must have at most 262144 bytes'
    )
    assert status["details"]["causes"] == [{"reason": "FieldValueTooLong", "field": "metadata.annotations",
                                            "message": "Too long: must have at most 262144 bytes"}]  # fmt: skip


def test_pod_template_labels_and_owner_references_of_a_job_are_validated(api, jobs):
    body = job("templated")
    body["spec"]["template"]["metadata"] = {"labels": {"ok": "-bad"}}
    body["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": ""}]
    status = refusal(jobs.create_namespaced_job, "default", body)
    assert [(c["field"], c["message"]) for c in status["details"]["causes"]] == [
        ("metadata.labels", f'Invalid value: "-bad": {LABEL_VALUE}'),  # a Job without labels gets its template's
        ("metadata.ownerReferences.uid", 'Invalid value: "": must not be empty'),
        ("spec.template.labels", f'Invalid value: "-bad": {LABEL_VALUE}'),
    ]
    assert status["message"].startswith('Job.batch "templated" is invalid: [metadata.labels: Invalid value: "-bad"')


def test_valid_objects_pass_every_example_included(api, custom, jobs):
    for path in EXAMPLES:
        manifest = yaml.safe_load(path.read_text())
        manifest["metadata"].pop("namespace", None)
        created = create_ablation(custom, manifest)
        assert created["spec"] == manifest["spec"], "a valid spec is stored as sent (nothing pruned)"
    labels = {"app.kubernetes.io/component": "trial", "lora.ablation.dev/ablation": "x", "empty": ""}
    jobs.create_namespaced_job("default", job("valid-job", **labels))


def test_custom_resources_failing_their_schema_are_refused_with_every_error(api, custom):
    manifest = ablation("bad-ranks", search={"moduleSets": [["o_proj"]], "ranks": [0, 8, 8]})
    manifest["spec"]["baseModel"]["dtype"] = "fp8"
    del manifest["spec"]["storage"]
    status = refusal(create_ablation, custom, manifest)
    assert status["code"] == 422 and status["reason"] == "Invalid"
    assert status["details"]["group"] == GROUP and status["details"]["kind"] == "LoraAblation"
    causes = {c["field"]: (c["reason"], c["message"]) for c in status["details"]["causes"]}
    dtypes = '"auto", "bfloat16", "float16", "float32"'
    assert causes == {
        "spec.storage": ("FieldValueRequired", "Required value"),
        "spec.baseModel.dtype": ("FieldValueNotSupported", f'Unsupported value: "fp8": supported values: {dtypes}'),
        "spec.search.ranks[0]": ("FieldValueInvalid",
                                 "Invalid value: 0: spec.search.ranks[0] in body should be greater than or equal to 1"),
        "spec.search.ranks[2]": ("FieldValueDuplicate", "Duplicate value: 8"),
        # As in the API: after a type/required/enum error, CEL rules are not run.
        "<nil>": ("FieldValueInvalid", 'Invalid value: "null": some validation rules were not checked because the '
                                       "object was invalid; correct the existing errors to complete validation"),
    }  # fmt: skip
    assert status["message"].startswith('LoraAblation.lora.ablation.dev "bad-ranks" is invalid: [')
    assert "spec.search.ranks[0]: Invalid value: 0: spec.search.ranks[0] in body should be greater than or equal to 1" \
        in status["message"]  # fmt: skip
    status = refusal(create_ablation, custom, ablation("wrong-type", search={"moduleSets": "o_proj"}))
    assert status["details"]["causes"][0] == {
        "reason": "FieldValueTypeInvalid", "field": "spec.search.moduleSets",
        "message": 'Invalid value: "string": spec.search.moduleSets in body must be of type array: "string"',
    }  # fmt: skip


def test_spec_patches_are_validated_and_unknown_spec_fields_pruned(api, custom):
    create_ablation(custom, ablation("patched", extra="dropped"))
    assert "extra" not in custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "patched")["spec"]
    status = refusal(custom.patch_namespaced_custom_object, GROUP, VERSION, "default", PLURAL, "patched",
                     {"spec": {"datasets": [{"name": "Upper", "train": "s3://b/t.jsonl", "eval": "s3://b/e.jsonl"}]}})
    assert status["details"]["causes"] == [{
        "reason": "FieldValueInvalid", "field": "spec.datasets[0].name",
        "message": 'Invalid value: "Upper": spec.datasets[0].name in body should match '
                   "'^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'",
    }]  # fmt: skip
    stored = api.get(GROUP, VERSION, PLURAL, "patched", "default")
    assert stored["spec"]["datasets"][0]["name"] == "med" and stored["metadata"]["generation"] == 1


def test_status_patches_are_validated_and_pruned_to_the_schema(api, custom):
    create_ablation(custom, ablation("with-status"))

    def patch_status(status: dict) -> dict:
        return custom.patch_namespaced_custom_object_status(GROUP, VERSION, "default", PLURAL, "with-status",
                                                            {"status": status})  # fmt: skip

    condition = {"type": "Ready", "status": "Maybe", "reason": "R", "lastTransitionTime": "2024-05-01T10:00:00Z"}
    status = refusal(patch_status, {"conditions": [condition]})
    assert status["details"]["causes"][0] == {
        "reason": "FieldValueNotSupported", "field": "status.conditions[0].status",
        "message": 'Unsupported value: "Maybe": supported values: "True", "False", "Unknown"'}  # fmt: skip
    assert status["details"]["causes"][1]["field"] == "<nil>", "the CRD's CEL rules were not run (as in the API)"
    status = refusal(patch_status, {"conditions": [{**condition, "status": "True", "lastTransitionTime": "today"}]})
    assert status["details"]["causes"][0]["message"] == (
        'Invalid value: "today": status.conditions[0].lastTransitionTime in body must be of type date-time: "today"'
    )
    stored = patch_status({"conditions": [{**condition, "status": "True", "note": "pruned"}], "progress": "1/2",
                           "trials": {"total": 2, "bogus": 1}, "undescribed": {"a": 1},
                           "kopf": {"anything": {"goes": True}}})  # fmt: skip
    assert stored["status"] == {  # status.kopf is x-kubernetes-preserve-unknown-fields
        "conditions": [{**condition, "status": "True"}], "progress": "1/2", "trials": {"total": 2},
        "kopf": {"anything": {"goes": True}},
    }
    assert api.get(GROUP, VERSION, PLURAL, "with-status", "default")["status"] == stored["status"]
    pruned = {"status.conditions[0].note", "status.trials.bogus", "status.undescribed"}
    assert pruned <= api.emulator.crd_schema(GROUP, VERSION, PLURAL).pruned


def test_the_crds_cel_rules_are_all_evaluated_and_refuse_with_their_messages(api, custom):
    schema = api.emulator.crd_schema(GROUP, VERSION, PLURAL)
    in_yaml = (ROOT / CRD_YAML).read_text().count("x-kubernetes-validations:")
    # 4 lists: root, training, execution (2 rules), spec (4 rules)
    assert len(schema.rules) == 8 and in_yaml == 4 and not schema.skipped
    before = {rule.rule: rule.evaluated for rule in schema.rules}
    file_model = {"uri": "file://models/tiny"}
    cases = [
        (ablation("both", training={"epochs": 1, "maxSteps": 10}),
         "spec.training", "set epochs or maxSteps, not both"),
        (ablation("budget", selection={"latencyBudgetMs": 50}, latency={"enabled": False}),
         "spec", "selection.latencyBudgetMs needs latency.enabled"),
        (ablation("cache", baseModel=file_model, execution={"modelCacheClaim": "cache"}),
         "spec", "execution.modelCacheClaim cannot be used with a file:// base model"),
        (ablation("grid", datasets=[{"name": f"d{i}", "train": "s3://b/t", "eval": "s3://b/e"} for i in range(40)],
                  search={"moduleSets": [["o_proj"]] * 64, "ranks": [8, 16]}),
         "spec", "the grid (datasets x (moduleSets x ranks x variants x seeds x layers + baseline)) exceeds 5000 "
         "trials: narrow it or split the study"),
        (ablation("batched", execution={"trialsPerPod": 4, "nodes": 2}),
         "spec.execution", "execution.trialsPerPod: several trials per pod run on one node; set it to 1 with "
         "execution.nodes > 1"),
        (ablation("sharded", execution={"sharding": "fsdp", "resources": {"gpus": 1}}),
         "spec.execution", "execution.sharding fsdp needs execution.resources.gpus >= 2"),
        (ablation("fourbit", baseModel={"uri": "hf://org/model", "quantization": "nf4"},
                  execution={"sharding": "fsdp", "resources": {"gpus": 4}}),
         "spec", "execution.sharding fsdp needs baseModel.quantization none: 4-bit weights are not sharded"),
        (ablation("seeded", datasets=[{"name": f"d{i}", "train": "s3://b/t", "eval": "s3://b/e"} for i in range(40)],
                  search={"moduleSets": [[m] for m in ("qkv", "o_proj", "fc1", "fc2")], "seeds": list(range(32))}),
         "spec", "the grid (datasets x (moduleSets x ranks x variants x seeds x layers + baseline)) exceeds 5000 "
         "trials: narrow it or split the study"),
    ]  # fmt: skip
    for manifest, field, message in cases:
        status = refusal(create_ablation, custom, manifest)
        name = manifest["metadata"]["name"]
        assert status["message"] == (
            f'LoraAblation.lora.ablation.dev "{name}" is invalid: {field}: Invalid value: "object": {message}'
        )
        assert status["details"]["causes"] == [
            {"reason": "FieldValueInvalid", "field": field, "message": f'Invalid value: "object": {message}'}
        ]
    long_name = ablation("x" * 64)
    status = refusal(create_ablation, custom, long_name)
    assert "metadata.name must be at most 63 characters" in status["message"]
    assert all(rule.evaluated > before[rule.rule] for rule in schema.rules)
    create_ablation(custom, ablation("one-of-them", training={"maxSteps": 10}))
    status = refusal(custom.patch_namespaced_custom_object, GROUP, VERSION, "default", PLURAL, "one-of-them",
                     {"spec": {"training": {"epochs": 2}}})  # fmt: skip
    assert status["message"].endswith('spec.training: Invalid value: "object": set epochs or maxSteps, not both')


ROOT_RULES_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com", "scope": "Namespaced",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
        "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}}, "schema": {
            "openAPIV3Schema": {
                "type": "object",
                "x-kubernetes-validations": [
                    {"rule": "self.metadata.name.startsWith('w-')", "message": "widget names start with w-"},
                    {"rule": "self.spec.colour.lowerAscii() == self.spec.colour"},  # Kubernetes' strings library
                    {"rule": "self.spec.size >"},  # not CEL at all: skipped rather than failing every write
                ],
                "properties": {
                    "spec": {
                        "type": "object",
                        "x-kubernetes-validations": [
                            {"rule": "!has(self.parts) || size(self.parts) <= 2", "fieldPath": ".parts",
                             "reason": "FieldValueForbidden", "message": "at most two parts"},
                            {"rule": "self.size > 0.5"},  # size is a number: 1 is the double 1.0 for CEL
                            {"rule": "self.fixed == oldSelf.fixed", "message": "fixed is immutable"},
                        ],
                        "properties": {
                            "colour": {"type": "string", "default": "red"},
                            "size": {"type": "number"},
                            "fixed": {"type": "string"},
                            "parts": {"type": "array", "items": {"type": "string"}},
                            "note": {"type": "string"},
                        },
                    },
                },
            }}}],
    },
}


def test_root_rules_see_the_name_and_rules_celpy_cannot_run_are_skipped(api, served, custom):
    kubernetes.client.ApiextensionsV1Api(served[1]).create_custom_resource_definition(copy.deepcopy(ROOT_RULES_CRD))
    schema = api.emulator.crd_schema("example.com", "v1", "widgets")

    def widget(name: str, **spec) -> dict:
        return {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name},
                "spec": {"size": 1, "fixed": "a", **spec}}  # fmt: skip

    def create(body: dict) -> dict:
        return custom.create_namespaced_custom_object("example.com", "v1", "default", "widgets", body)

    status = refusal(create, widget("gadget"))
    assert status["message"] == (
        'Widget.example.com "gadget" is invalid: <nil>: Invalid value: "object": widget names start with w-'
    )
    status = refusal(create, widget("w-parts", parts=["a", "b", "c"], note=None))
    assert status["message"] == 'Widget.example.com "w-parts" is invalid: spec.parts: Forbidden: at most two parts'
    status = refusal(create, widget("w-small", size=0.25))
    assert status["details"]["causes"][0]["message"] == 'Invalid value: "object": failed rule: self.size > 0.5'
    created = create(widget("w-ok", note=None))  # a null in a non-nullable field is dropped, a default applied
    assert created["spec"] == {"size": 1, "fixed": "a", "colour": "red"}
    status = refusal(custom.patch_namespaced_custom_object, "example.com", "v1", "default", "widgets", "w-ok",
                     {"spec": {"fixed": "b"}})  # fmt: skip
    assert status["message"].endswith('spec: Invalid value: "object": fixed is immutable')
    skipped = {rule.rule: rule.skipped for rule in schema.skipped}
    assert set(skipped) == {"self.spec.colour.lowerAscii() == self.spec.colour", "self.spec.size >"}
    assert "cannot run it" in skipped["self.spec.colour.lowerAscii() == self.spec.colour"]
    assert "cannot parse it" in skipped["self.spec.size >"]


def test_refuse_answers_as_admission_would_until_cancelled(api, jobs, custom):
    quota = 'jobs.batch "{}" is forbidden: exceeded quota: trials, requested: count/jobs.batch=1, used: ' \
            "count/jobs.batch=2, limited: count/jobs.batch=2"  # fmt: skip
    refused = api.refuse("jobs", when=lambda obj: obj["metadata"]["name"].startswith("quota-"),
                         message=lambda obj: quota.format(obj["metadata"]["name"]))  # fmt: skip
    status = refusal(jobs.create_namespaced_job, "default", job("quota-1"))
    assert (status["code"], status["reason"], status["message"]) == (403, "Forbidden", quota.format("quota-1"))
    assert status["details"] == {"name": "quota-1", "group": "batch", "kind": "jobs"}
    jobs.create_namespaced_job("default", job("other-1"))
    assert refused.refused == 1 and api.get("batch", "v1", "jobs", "quota-1", "default") is None
    status = refusal(jobs.create_namespaced_job, "default", job("quota-" + "j" * 60))
    assert status["code"] == 422 and refused.refused == 1, "validation comes before admission"
    refused.cancel()
    jobs.create_namespaced_job("default", job("quota-1"))
    create_ablation(custom, ablation("webhooked"))
    api.refuse("LoraAblation", code=400, reason="BadRequest", verbs={"update", "delete"},
               message='admission webhook "validate.example.com" denied the request: frozen')  # fmt: skip
    status = refusal(custom.patch_namespaced_custom_object, GROUP, VERSION, "default", PLURAL, "webhooked",
                     {"metadata": {"labels": {"a": "b"}}})  # fmt: skip
    assert (status["code"], status["reason"]) == (400, "BadRequest") and "denied the request" in status["message"]
    refusal(custom.delete_namespaced_custom_object, GROUP, VERSION, "default", PLURAL, "webhooked")
    assert api.get(GROUP, VERSION, PLURAL, "webhooked", "default") is not None
