"""The `lora-ablation` command as a user runs it: a real subprocess, real files, real exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, minimal_manifest
from tiny_models import OUTSIDE_CATALOG


def run(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lora_ablation.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_plan_json_lists_every_trial_with_modules_and_params():
    result = run("plan", "examples/module-study.yaml", "-o", "json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert len(plan["trials"]) == 40
    for trial in plan["trials"]:
        if trial["variant"] == "none":
            assert trial["estimatedParams"] == 0
            continue
        assert trial["targetModules"], trial["name"]
        assert trial["estimatedParams"] > 0
        assert trial["resultsUri"].endswith("/ml-research/module-study/" + trial["name"])
    by_config = {t["config"]: t for t in plan["trials"] if t["dataset"] == "medmcqa"}
    assert by_config["o_proj+fc2 r16 lora"]["estimatedParams"] == 13_631_488
    assert len(by_config["all r16 lora"]["targetModules"]) == 32 * 7


def test_plan_table_is_readable():
    result = run("plan", "examples/quickstart.yaml")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["TRIAL", "DATASET", "MODULES", "RANK", "VARIANT", "PARAMS", "TARGETS", "MEMORY"]
    assert "12 trials for default/quickstart" in result.stdout


def test_invalid_file_exits_2_naming_the_field(tmp_path):
    manifest = minimal_manifest(search={"moduleSets": [["o_proj"]], "ranks": [-4]})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(manifest))
    result = run("plan", str(path))
    assert result.returncode == 2
    assert "spec.search.ranks[0]" in result.stderr
    assert result.stdout == ""


def test_group_missing_from_model_exits_2_listing_the_models_weights(tmp_path):
    manifest = minimal_manifest(search={"moduleSets": [["attn.c_attn"]]})
    path = tmp_path / "gpt2-names-on-llama.yaml"
    path.write_text(yaml.safe_dump(manifest))
    result = run("plan", str(path))
    assert result.returncode == 2
    assert "spec.search.moduleSets" in result.stderr and "model.layers.{0..31}.self_attn.o_proj" in result.stderr


def test_missing_file_exits_2():
    result = run("plan", "does-not-exist.yaml")
    assert result.returncode == 2 and "does-not-exist.yaml: cannot read" in result.stderr


def test_crd_command_prints_the_checked_in_crd():
    result = run("crd")
    assert result.returncode == 0
    assert result.stdout == (ROOT / "crds" / "lora.ablation.dev_loraablations.yaml").read_text()


def test_validate_accepts_all_examples():
    examples = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "examples").glob("*.yaml"))
    result = run("validate", *examples)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("is valid") == len(examples) >= 4


TINY_LLAMA = dict(model_type="llama", hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=512)  # fmt: skip


@pytest.fixture
def tiny_llama_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA))
    return str(tmp_path)


@pytest.mark.parametrize("source", ["catalog", "tree"])
def test_inspect_model_reports_groups_and_sizes(source, tiny_llama_dir):
    if source == "tree":
        pytest.importorskip("torch", reason="needs the trainer extra")
    result = run("inspect-model", tiny_llama_dir, "--rank", "8", "-o", "json", "--source", source)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["source"] == ("module tree" if source == "tree" else "catalog")
    assert report["family"] == "llama" and report["layers"] == 2
    groups = {g["group"]: g for g in report["groups"]}
    assert groups["o_proj"]["names"] == ["model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.o_proj"]
    assert groups["o_proj"]["loraParams"] == 2 * 8 * (64 + 64)
    assert groups["fc2"]["loraParams"] == 2 * 8 * (176 + 64)
    assert {"name": "model.layers.{0..1}.mlp.down_proj", "count": 2} in report["linearModules"]


def test_inspect_model_table_says_which_source(tiny_llama_dir):
    """--source catalog with the trainer extra installed (this environment has it): the way to the real module
    tree is the flag, not an install."""
    result = run("inspect-model", tiny_llama_dir, "--source", "catalog")
    assert result.returncode == 0, result.stderr
    assert "source:  catalog (--source tree checks the real module tree)" in result.stdout
    assert "install the trainer extra" not in result.stdout
    assert "o_proj" in result.stdout


def test_inspect_model_unknown_path_exits_2(tmp_path):
    result = run("inspect-model", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "config.json does not exist" in result.stderr


def test_plan_uses_the_module_tree_for_architectures_outside_the_catalog(tmp_path):
    pytest.importorskip("torch", reason="needs the trainer extra")
    model = tmp_path / "starcoder2"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(OUTSIDE_CATALOG))
    manifest = minimal_manifest(search={"moduleSets": [["o_proj"], ["c_fc"]]})
    manifest["spec"]["baseModel"]["uri"] = f"file://{model}"
    path = tmp_path / "sc2.yaml"
    path.write_text(yaml.safe_dump(manifest))
    result = run("plan", str(path), "-o", "json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert "module tree" in plan["resolution"]
    assert plan["trials"][2]["targetModules"] == ["model.layers.0.mlp.c_fc", "model.layers.1.mlp.c_fc"]


# Issue 17: the smaller defects a new user met following the README.


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "--model-config /dev/null: not valid JSON"),
        ("{broken", "not valid JSON"),
        ("[1, 2]", "expected a JSON object (a model's config.json), got list"),
        ("{}", 'no "model_type" field'),
    ],
    ids=["dev-null", "broken", "list", "no-model-type"],
)
def test_plan_with_an_unusable_model_config_exits_2_naming_it(tmp_path, content, expected):
    path = "/dev/null"
    if content is not None:
        path = str(tmp_path / "config.json")
        (tmp_path / "config.json").write_text(content)
    result = run("plan", "examples/quickstart.yaml", "--model-config", path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"--model-config {path}" in result.stderr and expected in result.stderr
    assert result.stdout == ""


def test_plan_with_a_missing_model_config_exits_2(tmp_path):
    result = run("plan", "examples/quickstart.yaml", "--model-config", str(tmp_path / "nowhere.json"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "nowhere.json: cannot read (No such file or directory)" in result.stderr


def test_a_base_model_config_that_is_not_json_exits_2(tmp_path):
    (tmp_path / "config.json").write_text("not json")
    manifest = minimal_manifest()
    manifest["spec"]["baseModel"]["uri"] = f"file://{tmp_path}"
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(manifest))
    result = run("plan", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{path}: spec.baseModel.uri file://{tmp_path}: config.json is not valid JSON" in result.stderr


def _documents(path, *documents) -> str:
    path.write_text(yaml.safe_dump_all(documents))
    return str(path)


def test_a_misspelt_kind_is_an_error_naming_file_document_and_kind(tmp_path):
    misspelt = minimal_manifest()
    misspelt["kind"] = "LoraAblaton"
    misspelt["metadata"]["name"] = "second"
    path = _documents(tmp_path / "two.yaml", minimal_manifest(), misspelt)
    result = run("validate", path)
    assert result.returncode == 2
    assert f"{path} (document 2): kind 'LoraAblaton' is not LoraAblation; expected `kind: LoraAblation`" in (
        result.stderr
    )
    assert "demo is valid" not in result.stdout  # a file with an error is not reported as valid


def test_other_kinds_are_skipped_with_a_note(tmp_path):
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3"}, "stringData": {"k": "v"}}
    path = _documents(tmp_path / "with-secret.yaml", secret, minimal_manifest())
    result = run("validate", path)
    assert result.returncode == 0, result.stderr
    assert f"{path}: demo is valid" in result.stdout
    assert f"note: {path} (document 1): kind Secret, not a LoraAblation: skipped" in result.stdout
    only_secret = _documents(tmp_path / "only-secret.yaml", secret)
    result = run("validate", only_secret)
    assert result.returncode == 2
    assert "no LoraAblation found (it holds 1 document(s) of other kinds)" in result.stderr


@pytest.mark.parametrize("list_kind", ["List", "LoraAblationList"])
def test_a_list_is_read_item_by_item(tmp_path, list_kind):
    second = minimal_manifest()
    second["metadata"]["name"] = "second"
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    items = [minimal_manifest(), second, config_map]
    path = _documents(tmp_path / "list.yaml", {"apiVersion": "v1", "kind": list_kind, "items": items})
    result = run("validate", path)
    assert result.returncode == 0, result.stderr
    assert f"{path}: demo is valid" in result.stdout and f"{path}: second is valid" in result.stdout
    assert f"note: {path} (items[2]): kind ConfigMap, not a LoraAblation: skipped" in result.stdout

    second["spec"]["search"]["ranks"] = [0]
    path = _documents(tmp_path / "bad-list.yaml", {"apiVersion": "v1", "kind": list_kind, "items": items})
    result = run("validate", path)
    assert result.returncode == 2
    assert f"{path} (items[1]): spec.search.ranks[0]" in result.stderr


def test_validate_reports_every_file(tmp_path):
    bad_rank = minimal_manifest(search={"moduleSets": [["o_proj"]], "ranks": [-4]})
    first = _documents(tmp_path / "first-bad.yaml", bad_rank)
    (tmp_path / "broken.yaml").write_text("spec: [unclosed\n")
    result = run("validate", first, "examples/quickstart.yaml", str(tmp_path / "broken.yaml"), "missing.yaml")
    assert result.returncode == 2
    assert "examples/quickstart.yaml: quickstart is valid" in result.stdout
    assert f"{first}: spec.search.ranks[0]" in result.stderr
    assert "broken.yaml: not valid YAML" in result.stderr
    assert "missing.yaml: cannot read" in result.stderr
    assert "3 of 4 file(s) invalid" in result.stderr


def test_report_on_a_location_that_does_not_exist_says_so(tmp_path):
    result = run("report", f"file://{tmp_path}/does/not/exist")
    assert result.returncode == 2
    assert f"{tmp_path}/does/not/exist does not exist" in result.stderr
    assert "<storage.uri>/<namespace>/<name>" in result.stderr


def test_report_one_level_too_high_names_the_ablation_folders(tmp_path):
    trial = tmp_path / "results" / "default" / "demo" / "demo-med-base-0123456789"
    trial.mkdir(parents=True)
    (trial / "result.json").write_text("{}")
    result = run("report", f"file://{tmp_path}/results")
    assert result.returncode == 2
    assert f"below: file://{tmp_path}/results/default/demo; pass one of those" in result.stderr


def test_report_on_a_missing_bucket_says_so(s3_endpoint):
    result = run("report", "s3://no-such-bucket-here/ablations/default/demo", "--endpoint", s3_endpoint)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "bucket 'no-such-bucket-here' does not exist" in result.stderr


def test_version_and_help_describe_every_command():
    from lora_ablation.cli import build_parser

    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("lora-ablation ")
    top = run("--help").stdout
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        help_text = run(name, "--help").stdout
        assert sub.description and sub.description in " ".join(help_text.split()), name
        assert name in top
        for action in sub._actions:
            if not action.option_strings:  # positional arguments
                assert action.help, f"{name} {action.dest}"
                assert action.help.split()[0] in help_text, f"{name} {action.dest}"


def test_run_store_that_is_no_store_uri_exits_2_naming_the_flag(tmp_path):
    path = _documents(tmp_path / "m.yaml", minimal_manifest())
    result = run("run", path, "--store", "gs://bucket/prefix")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--store gs://bucket/prefix: expected s3://bucket/prefix" in result.stderr


def test_the_store_override_moves_every_trial_but_keeps_names():
    from lora_ablation.api.manifest import load_ablation
    from lora_ablation.local.runner import with_storage
    from lora_ablation.planning.plan import plan_trials

    ablation = load_ablation(ROOT / "examples" / "quickstart.yaml")
    moved = with_storage(ablation, "s3://other-bucket/prefix", "http://127.0.0.1:9000")
    assert ablation.spec.storage.uri == "file://ablation-results"  # the original is not changed
    before = plan_trials("quickstart", "default", ablation.spec)
    after = plan_trials("quickstart", "default", moved.spec)
    assert [t.name for t in before.trials] == [t.name for t in after.trials]  # storage is not part of the identity
    for trial in after.trials:
        assert trial.spec.storage.uri == f"s3://other-bucket/prefix/default/quickstart/{trial.name}"
        assert trial.spec.storage.endpoint == "http://127.0.0.1:9000"
    local = with_storage(ablation, "some/dir")
    assert local.spec.storage.uri == f"file://{Path.cwd() / 'some' / 'dir'}"


def test_run_store_in_a_missing_bucket_exits_2_before_any_trial(tmp_path, s3_endpoint):
    path = _documents(tmp_path / "m.yaml", minimal_manifest())
    store = "s3://no-such-bucket-for-run/prefix"
    result = run("run", path, "--store", store, "--endpoint", s3_endpoint, "--logs", str(tmp_path / "logs"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"--store {store}: bucket 'no-such-bucket-for-run' does not exist" in result.stderr
    assert not (tmp_path / "logs").exists()  # no trial was started
