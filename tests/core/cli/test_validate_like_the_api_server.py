"""`lora-ablation validate` refuses what the API server refuses (strict types, the CRD's schema) and what `plan`
would fail on (module names, layer ranges), and says when it could not check the model. The API server here is
the emulated one (support.kube), with the generated CRD installed, reached with the official client over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from conftest import ROOT, minimal_manifest
from lora_ablation.api.base import GROUP, PLURAL, VERSION
from lora_ablation.api.crdgen import build_crd
from support.kube import serve_api


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lora_ablation.cli", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def custom() -> Iterator[kubernetes.client.CustomObjectsApi]:
    with serve_api() as api:
        config = kubernetes.client.Configuration()
        config.host = api.url
        with kubernetes.client.ApiClient(config) as client:
            kubernetes.client.ApiextensionsV1Api(client).create_custom_resource_definition(build_crd())
            yield kubernetes.client.CustomObjectsApi(client)


def _with(section: str, field: str, value, name: str) -> dict:
    manifest = minimal_manifest(**{section: {field: value}})
    manifest["metadata"]["name"] = name
    return manifest


QUOTED = [
    ("execution", "parallelism", "8", "spec.execution.parallelism"),
    ("training", "learningRate", "2e-4", "spec.training.learningRate"),
    ("training", "gradientCheckpointing", "yes", "spec.training.gradientCheckpointing"),
]


@pytest.mark.parametrize(("section", "field", "value", "path"), QUOTED, ids=[q[1] for q in QUOTED])
def test_a_quoted_scalar_the_api_server_refuses_is_refused_by_validate(custom, tmp_path, section, field, value, path):
    manifest = _with(section, field, value, f"quoted-{field.lower()}")
    with pytest.raises(ApiException) as refused:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, manifest)
    assert refused.value.status == 422 and path in json.loads(refused.value.body)["message"]
    file = tmp_path / "quoted.yaml"
    file.write_text(json.dumps(manifest))  # JSON is YAML, with every string quoted (safe_dump leaves 2e-4 bare)
    result = run("validate", str(file))
    assert result.returncode == 2, result.stdout
    assert f"error: {file}: {path}: " in result.stderr
    assert "write it without quotes" in result.stderr
    assert "is valid" not in result.stdout


def test_a_quoted_rank_in_a_list_is_refused_naming_its_index(custom, tmp_path):
    manifest = minimal_manifest(search={"moduleSets": [["o_proj"]], "ranks": ["8"]})
    manifest["metadata"]["name"] = "quoted-rank"
    with pytest.raises(ApiException) as refused:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, manifest)
    assert refused.value.status == 422
    file = tmp_path / "rank.yaml"
    file.write_text(json.dumps(manifest))
    result = run("validate", str(file))
    assert result.returncode == 2
    assert "spec.search.ranks[0]: Input should be a valid integer (got '8')" in result.stderr


def test_unquoted_exponent_numbers_are_numbers_as_kubectl_reads_them(custom, tmp_path):
    """PyYAML's YAML 1.1 reads `2e-4` as a string; kubectl (and so the API server) gets a number."""
    text = yaml.safe_dump(minimal_manifest(training={"learningRate": 0.5})).replace("0.5", "2e-4")
    assert "learningRate: 2e-4" in text
    file = tmp_path / "exponent.yaml"
    file.write_text(text)
    result = run("validate", str(file))
    assert result.returncode == 0, result.stderr
    planned = json.loads(run("plan", str(file), "-o", "json").stdout)
    assert planned["trials"][1]["name"]  # planned with the rate as a number
    from lora_ablation.api.manifest import load_ablation

    assert load_ablation(file).spec.training.learning_rate == 2e-4
    manifest = minimal_manifest(training={"learningRate": 2e-4})
    manifest["metadata"]["name"] = "exponent"
    assert custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, manifest)


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        ({"moduleSets": [["o_prj"]]}, "spec.search.moduleSets: "),
        ({"moduleSets": [["o_proj"]], "layers": ["40-50"]}, "spec.search.layers[0]: '40-50': layer 40 does not exist"),
    ],
    ids=["module-name", "layer-range"],
)
def test_validate_checks_modules_and_layers_against_a_known_model(tmp_path, search, expected):
    file = tmp_path / "model-misfit.yaml"
    file.write_text(yaml.safe_dump(minimal_manifest(search=search)))  # Llama-3.1-8B: in the built-in table
    result = run("validate", str(file))
    assert result.returncode == 2, result.stdout
    assert f"error: {file}: {expected}" in result.stderr
    assert "is valid" not in result.stdout


def test_an_unknown_model_offline_is_valid_with_a_note_and_plan_names_model_config(tmp_path):
    manifest = minimal_manifest(baseModel={"uri": "hf://someone/not-in-the-table"}, search={"moduleSets": [["o_prj"]]})
    file = tmp_path / "unknown-model.yaml"
    file.write_text(yaml.safe_dump(manifest))
    offline = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = run("validate", str(file), env=offline)
    assert result.returncode == 0, result.stderr
    assert f"note: {file}: demo: module names and layer ranges not checked" in result.stdout
    assert "--model-config" in result.stdout
    planned = run("plan", str(file), env=offline)
    assert planned.returncode == 0, planned.stderr
    assert f"lora-ablation plan {file} --model-config config.json" in planned.stdout


def test_validate_warnings_name_their_file(tmp_path):
    first, second = tmp_path / "attention-only.yaml", tmp_path / "fine.yaml"
    first.write_text(yaml.safe_dump(minimal_manifest(search={"moduleSets": [["qkv"]]})))
    second.write_text(yaml.safe_dump(minimal_manifest()))
    result = run("validate", str(first), str(second))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    assert warnings and all(line.startswith(f"warning: {first}: ") for line in warnings), warnings
    assert any("spec.search.moduleSets: every module set adapts attention only" in line for line in warnings)


def test_every_example_still_validates_and_is_checked_against_its_model():
    examples = sorted(str(p.relative_to(ROOT)) for p in Path(ROOT, "examples").glob("*.yaml"))
    result = run("validate", *examples)
    assert result.returncode == 0, result.stderr
    unchecked = {line.split(":")[1].strip() for line in result.stdout.splitlines() if "not checked" in line}
    # The hub models are in the built-in table; the quickstarts' tiny model is built by the quickstart itself.
    assert unchecked <= {e for e in examples if "quickstart" in e}, unchecked
    assert "examples/module-study.yaml: module-study is valid" in result.stdout


# One case table for the CRD's CEL rules (x-kubernetes-validations, which cel-python evaluates in the emulated API
# server) and `validate`: each refused case breaks exactly one rule, and names what both messages must name; each
# accepted case is its rule's boundary, which both must let through.
NAMES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SETS = [[n for i, n in enumerate(NAMES) if mask >> i & 1] for mask in range(1, 51)]  # 50 distinct module sets
GRID = {"moduleSets": SETS, "ranks": [2, 4, 8, 12, 16, 24, 32, 48, 64, 128], "variants": ["lora", "rslora"],
        "seeds": [1, 2, 3, 4, 5]}  # 50 x 10 x 2 x 5 = 5,000 trials and the baseline
CEL_CASES = [
    # (id, spec overrides, name, refused?, what both messages name)
    ("name-64", {}, "n" * 64, True, "at most 63 characters"),
    ("name-63", {}, "n" * 63, False, ""),
    ("epochs-and-max-steps", {"training": {"epochs": 1, "maxSteps": 10}}, "steps", True, "maxSteps"),
    ("max-steps-alone", {"training": {"maxSteps": 10}}, "steps", False, ""),
    ("trials-per-pod-multinode", {"execution": {"trialsPerPod": 2, "nodes": 2}}, "tpp", True, "trialsPerPod"),
    ("trials-per-pod-one-node", {"execution": {"trialsPerPod": 2, "nodes": 1}}, "tpp", False, ""),
    ("fsdp-one-gpu", {"execution": {"sharding": "fsdp", "resources": {"gpus": 1}}}, "fsdp", True, "gpus >= 2"),
    ("fsdp-two-gpus", {"execution": {"sharding": "fsdp", "resources": {"gpus": 2}}}, "fsdp", False, ""),
    ("fsdp-nf4", {"execution": {"sharding": "fsdp", "resources": {"gpus": 2}},
                  "baseModel": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct", "quantization": "nf4"}}, "nf4", True,
     "quantization"),
    ("budget-without-latency", {"selection": {"latencyBudgetMs": 5}, "latency": {"enabled": False}}, "lat", True,
     "latencyBudgetMs"),
    ("budget-with-latency", {"selection": {"latencyBudgetMs": 5}, "latency": {"enabled": True}}, "lat", False, ""),
    ("cache-claim-file-model", {"execution": {"modelCacheClaim": "models"}, "baseModel": {"uri": "file:///m"}},
     "claim", True, "modelCacheClaim"),
    ("cache-claim-hub-model", {"execution": {"modelCacheClaim": "models"}}, "claim", False, ""),
    ("grid-5001", {"search": GRID}, "grid", True, "5000"),
    ("grid-5000", {"search": {**GRID, "includeBaseline": False}}, "grid", False, ""),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "name", "refused", "named"), [c[1:] for c in CEL_CASES],
                         ids=[c[0] for c in CEL_CASES])  # fmt: skip
def test_validate_and_the_crds_cel_rules_agree_on_one_case_table(custom, tmp_path, spec, name, refused, named):
    manifest = minimal_manifest(**spec)
    manifest["metadata"]["name"] = name
    file = tmp_path / "case.yaml"
    file.write_text(json.dumps(manifest))
    result = run("validate", str(file))
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, manifest)
        server = None
    except ApiException as error:
        server = json.loads(error.body)["message"]
        assert error.status == 422, server
    finally:
        with contextlib.suppress(ApiException):
            custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, name)
    if not refused:
        assert server is None and result.returncode == 0, (server, result.stderr)
        return
    assert server is not None and named in server, server
    assert result.returncode == 2, result.stdout
    assert named in result.stderr and f"error: {file}: " in result.stderr, result.stderr


def test_the_case_table_breaks_every_cel_rule_of_the_crd():
    def rules(node):
        if isinstance(node, dict):
            yield from node.get("x-kubernetes-validations", [])
            for value in node.values():
                yield from rules(value)
        elif isinstance(node, list):
            for value in node:
                yield from rules(value)

    messages = [rule["message"] for rule in rules(build_crd())]
    named = [c[4] for c in CEL_CASES if c[3]]
    assert len(messages) == 8 and all(any(n in m for n in named) for m in messages), messages
