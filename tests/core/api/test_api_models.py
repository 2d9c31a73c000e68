"""The API models accept the examples and reject bad specs with messages that name the field."""

from __future__ import annotations

import pytest

from conftest import EXAMPLES, minimal_manifest
from lora_ablation.api import LoraAblation, SpecError, TrialResult, TrialSpec, parse_ablation, parse_spec
from lora_ablation.api.manifest import load_ablation


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_parse(path):
    ablation = load_ablation(path)
    assert isinstance(ablation, LoraAblation)
    assert ablation.spec.search.module_sets


def test_defaults_are_applied_when_read_not_required_in_yaml():
    spec = parse_ablation(minimal_manifest()).spec
    assert spec.search.ranks == [16]
    assert spec.search.alpha_over_rank == 2.0
    assert spec.search.variants == ["lora"]
    assert spec.execution.parallelism == 4
    assert spec.selection.tolerance == 0.02
    assert spec.execution.resources.gpu_resource_name == "nvidia.com/gpu"


def test_wire_form_round_trips_with_camel_case():
    ablation = parse_ablation(minimal_manifest(training={"learningRate": 1e-4, "maxSteps": 10}))
    wire = ablation.spec.to_wire()
    assert wire["training"]["learningRate"] == 1e-4
    assert "learning_rate" not in wire["training"]
    assert parse_spec(wire) == ablation.spec


def _problems(manifest: dict) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_ablation(manifest)
    return caught.value.problems


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        ({"storage": {"uri": "gs://bucket/x"}}, "spec.storage.uri", "s3://bucket/prefix"),
        ({"storage": {"uri": "s3://bucket/../x"}}, "spec.storage.uri", "not empty, '.' or '..'"),
        ({"storage": {"uri": "s3://b-1/a//b"}}, "spec.storage.uri", "not empty, '.' or '..'"),
        ({"execution": {"queueName": "Team_A"}}, "spec.execution.queueName", "DNS-1123 label"),
        ({"execution": {"priorityClassName": "high priority"}}, "spec.execution.priorityClassName", "object name"),
        ({"execution": {"serviceAccountName": "x" * 254}}, "spec.execution.serviceAccountName", "at most 253"),
        ({"execution": {"modelCacheClaim": "-cache"}}, "spec.execution.modelCacheClaim", "object name"),
        ({"execution": {"nodeSelector": {"gpu": "a" * 64}}}, "spec.execution.nodeSelector.gpu", "label value"),
        ({"execution": {"nodeSelector": {"bad key!": "x"}}}, "spec.execution.nodeSelector.bad key! (key)",
         "qualified name"),
        ({"execution": {"tolerations": [{"operator": "Maybe"}]}}, "spec.execution.tolerations[0].operator", "Exists"),
        ({"execution": {"resources": {"gpuResourceName": "gpu/"}}}, "spec.execution.resources.gpuResourceName",
         "qualified name"),
        ({"execution": {"image": "trainer: latest"}}, "spec.execution.image", "without whitespace"),
        ({"storage": {"uri": "s3://b-1/x", "credentialsSecretRef": {"name": "Creds"}}},
         "spec.storage.credentialsSecretRef.name", "object name"),
        ({"baseModel": {"uri": "hf://org/m", "tokenSecretRef": {"name": "t", "key": "a key"}}},
         "spec.baseModel.tokenSecretRef.key", "Secret key"),
        ({"training": {"learningRate": float("nan")}}, "spec.training.learningRate", "finite"),
        ({"search": {"alphaOverRank": float("inf"), "moduleSets": [["o_proj"]]}}, "spec.search.alphaOverRank",
         "finite"),
        ({"baseModel": {"uri": "ftp://host/model"}}, "spec.baseModel.uri", "hf://org/name"),
        ({"search": {"moduleSets": [["o_proj"]], "ranks": [0]}}, "spec.search.ranks[0]", "greater than or equal to 1"),
        ({"search": {"moduleSets": [["o_proj"]], "ranks": [8, 8]}}, "spec.search.ranks", "repeat"),
        ({"search": {"moduleSets": []}}, "spec.search.moduleSets", "at least 1"),
        ({"search": {"moduleSets": [[]]}}, "spec.search.moduleSets[0]", "at least 1"),
        ({"search": {"moduleSets": [["o-proj"]]}}, "spec.search.moduleSets", "'o-proj' is neither a module group"),
        ({"search": {"moduleSets": [["o_proj", "fc2"], ["fc2", "o_proj"]]}}, "spec.search.moduleSets", "same modules"),
        ({"search": {"moduleSets": [["attn"], ["qkv", "o_proj"]]}}, "spec.search.moduleSets", "same modules"),
        ({"search": {"moduleSets": [["all", "fc2"]]}}, "spec.search.moduleSets", "list it alone"),
        ({"search": {"moduleSets": [["o_proj"]], "variants": ["qlora"]}}, "spec.search.variants[0]", "'dora'"),
        ({"execution": {"parallelism": 0}}, "spec.execution.parallelism", "greater than or equal to 1"),
        ({"execution": {"resources": {"memory": "lots"}}}, "spec.execution.resources.memory", "Kubernetes quantity"),
        ({"training": {"epochs": 1, "maxSteps": 5}}, "spec.training", "epochs or maxSteps, not both"),
        ({"training": {"learningRate": 0}}, "spec.training.learningRate", "greater than 0"),
        ({"selection": {"latencyBudgetMs": 5}, "latency": {"enabled": False}}, "spec", "latencyBudgetMs needs latency"),
        ({"storage": {"uri": "s3://results/x", "endpoint": "minio:9000"}}, "spec.storage.endpoint", "http://"),
        ({"tracking": {"mlflow": {"trackingUri": "mlflow:5000", "experimentName": "e"}}},
         "spec.tracking.mlflow.trackingUri", "http:// or https://"),
        ({"tracking": {"mlflow": {"trackingUri": "sqlite:///mlflow.db", "experimentName": "e"}}},
         "spec.tracking.mlflow.trackingUri", "MLflow tracking server"),
        ({"tracking": {"mlflow": {"trackingUri": "https://user:pw@mlflow.corp", "experimentName": "e"}}},
         "spec.tracking.mlflow.trackingUri", "credentialsSecretRef"),
        ({"tracking": {"mlflow": {"trackingUri": "http://mlflow:5000", "experimentName": " padded"}}},
         "spec.tracking.mlflow.experimentName", "printable"),
        ({"tracking": {"mlflow": {"trackingUri": "http://mlflow:5000", "experimentName": "a\nb"}}},
         "spec.tracking.mlflow.experimentName", "printable"),
        ({"tracking": {"mlflow": {"trackingUri": "http://mlflow:5000"}}}, "spec.tracking.mlflow.experimentName",
         "required"),
        ({"tracking": {"mlflow": {"trackingUri": "http://mlflow:5000", "experimentName": "e",
                                  "credentialsSecretRef": {"name": "m", "tokenKey": "a key"}}}},
         "spec.tracking.mlflow.credentialsSecretRef.tokenKey", "Secret key"),
    ],
)
def test_bad_specs_name_the_field(overrides, field, fragment):
    problems = _problems(minimal_manifest(**overrides))
    assert any(p.startswith(field + ":") and fragment in p for p in problems), problems


def test_dataset_problems_name_the_index():
    manifest = minimal_manifest()
    manifest["spec"]["datasets"].append(
        {"name": "med", "train": "s3://d/t.jsonl", "eval": "s3://d/e.jsonl", "metric": "acc", "trian": "x"}
    )
    problems = _problems(manifest)
    assert any(p.startswith("spec.datasets[1].metric:") and "'accuracy'" in p for p in problems), problems
    assert any(p.startswith("spec.datasets[1].trian:") and "unknown field" in p for p in problems), problems


def test_duplicate_dataset_names_rejected():
    manifest = minimal_manifest()
    manifest["spec"]["datasets"].append(dict(manifest["spec"]["datasets"][0]))
    problems = _problems(manifest)
    assert any(p.startswith("spec.datasets:") and "unique" in p and "med" in p for p in problems), problems


def test_dataset_name_must_be_dns_label():
    manifest = minimal_manifest()
    manifest["spec"]["datasets"][0]["name"] = "Med_QA"
    assert any(p.startswith("spec.datasets[0].name:") for p in _problems(manifest))


def test_ablation_name_is_at_most_a_label_value():
    manifest = minimal_manifest()
    manifest["metadata"]["name"] = "x" * 64
    assert any(p.startswith("metadata.name:") and "63" in p for p in _problems(manifest))
    manifest["metadata"]["name"] = "x" * 63
    parse_ablation(manifest)


def test_the_grid_is_bounded_before_anything_is_planned():
    manifest = minimal_manifest(
        datasets=[{"name": f"d{i}", "train": "s3://d/t.jsonl", "eval": "s3://d/e.jsonl"} for i in range(64)],
        search={"moduleSets": [[f"layers.{i}.q_proj"] for i in range(64)], "ranks": list(range(1, 17)),
                "variants": ["lora", "rslora", "dora", "loraplus"]},
    )  # fmt: skip
    (problem,) = _problems(manifest)
    assert problem.startswith("spec:") and "262208 trials" in problem and "at most 5000" in problem


def test_missing_required_fields_listed_together():
    manifest = minimal_manifest()
    del manifest["spec"]["storage"]
    del manifest["spec"]["search"]
    problems = _problems(manifest)
    assert "spec.search: required field is missing" in problems
    assert "spec.storage: required field is missing" in problems


def test_wrong_kind_and_api_version():
    manifest = minimal_manifest()
    manifest["kind"] = "LoraExperiment"
    manifest["apiVersion"] = "lora.ablation.dev/v1"
    problems = _problems(manifest)
    assert any(p.startswith("kind:") for p in problems)
    assert any(p.startswith("apiVersion:") for p in problems)


def test_unparseable_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed\n")
    with pytest.raises(SpecError) as caught:
        load_ablation(bad)
    assert str(bad) in caught.value.problems[0] and "YAML" in caught.value.problems[0]


def test_trial_spec_rejects_inconsistent_baseline():
    storage = {"uri": "s3://r/x"}
    base = {
        "ablation": "a",
        "name": "a-t",
        "baseModel": {"uri": "hf://o/m"},
        "storage": storage,
        "dataset": {"name": "d", "train": "s3://b/t", "eval": "s3://b/e"},
    }
    with pytest.raises(ValueError, match="baseline"):
        TrialSpec.model_validate({**base, "variant": "none", "modules": ["o_proj"], "rank": 8})
    with pytest.raises(ValueError, match="needs at least one module"):
        TrialSpec.model_validate({**base, "variant": "lora", "modules": [], "rank": 8})
    ok = TrialSpec.model_validate({**base, "variant": "none"})
    assert ok.is_baseline


def test_trial_result_round_trip_keeps_unknown_fields_from_newer_writers():
    raw = {
        "ablation": "a",
        "trial": "a-t",
        "dataset": "d",
        "variant": "lora",
        "rank": 8,
        "eval": {"metric": "accuracy", "score": 0.5, "samples": 10, "parseFailures": 1},
        "latency": {
            "device": "cpu",
            "dtype": "float32",
            "promptTokens": 8,
            "outputTokens": 4,
            "batchSize": 1,
            "repeats": 3,
            "base": {"ttftP50Ms": 1, "ttftP95Ms": 2, "tpotP50Ms": 0.5, "tpotP95Ms": 0.6},
        },
        "futureField": {"x": 1},
    }
    result = TrialResult.model_validate(raw)
    assert result.eval.parse_failures == 1
    assert result.latency.base.tpot_p95_ms == 0.6
    assert result.to_wire()["futureField"] == {"x": 1}
