"""The preflight check: every problem listed with its field, preflight.json written, exit 42, no weights read."""

from __future__ import annotations

import json
import subprocess
import sys

from lora_ablation.api.trial import PreflightReport, PreflightSpec
from lora_ablation_trainer.errors import EXIT_PERMANENT


def preflight_spec(model, datasets, module_sets, storage) -> PreflightSpec:
    return PreflightSpec.model_validate(
        {
            "ablation": "pre",
            "baseModel": {"uri": f"file://{model}"},
            "datasets": datasets,
            "moduleSets": module_sets,
            "storage": {"uri": storage},
        }
    )


def run(spec: PreflightSpec, tmp_path):
    path = tmp_path / "preflight-spec.json"
    path.write_text(spec.model_dump_json(by_alias=True))
    return subprocess.run([sys.executable, "-m", "lora_ablation_trainer", "--preflight", str(path)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def dataset(name, train, eval_, fmt="prompt-completion"):
    return {"name": name, "train": f"file://{train}", "eval": f"file://{eval_}", "format": fmt}


def test_preflight_passes_and_reports_what_it_resolved(tiny_models, choice_data, tmp_path):
    spec = preflight_spec(tiny_models["phi3"], [dataset("choice", choice_data["train"], choice_data["eval"])],
                          [["qkv"], ["o_proj", "fc2"]], f"file://{tmp_path}/out")  # fmt: skip
    done = run(spec, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    report = PreflightReport.model_validate_json((tmp_path / "out" / "preflight.json").read_text())
    assert report.ok and report.problems == []
    assert report.modules["qkv"] == ["model.layers.0.self_attn.qkv_proj", "model.layers.1.self_attn.qkv_proj"]
    assert report.records == {"choice/train": 256, "choice/eval": 24}


def test_preflight_lists_every_problem_and_exits_42(tiny_models, choice_data, tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": 1}\n')
    spec = preflight_spec(
        tiny_models["llama"],
        [dataset("good", choice_data["train"], choice_data["eval"]),
         dataset("bad", broken, tmp_path / "missing.jsonl")],
        [["o_proj"], ["attn.c_attn"], ["fc2"]],
        f"file://{tmp_path}/out",
    )  # fmt: skip
    done = run(spec, tmp_path)
    assert done.returncode == EXIT_PERMANENT
    report = json.loads((tmp_path / "out" / "preflight.json").read_text())
    assert report["ok"] is False
    problems = report["problems"]
    assert len(problems) == 3, problems
    assert problems[0].startswith("spec.search.moduleSets[1]: module 'attn.c_attn' matches no weight")
    assert problems[1].startswith("spec.datasets[1].train: ") and "broken.jsonl:2: field 'prompt'" in problems[1]
    assert problems[2].startswith("spec.datasets[1].eval: ") and "missing.jsonl" in problems[2]
    assert "preflight found 3 problem(s)" in done.stderr


def test_preflight_never_reads_weights(tiny_models, choice_data, tmp_path, s3_bucket):
    """Against S3 the preflight downloads config and tokenizer only: it must not need the weights."""
    from support.s3 import s3_client

    endpoint, bucket = s3_bucket
    client = s3_client(endpoint)
    for file in tiny_models["llama"].iterdir():
        if not file.name.endswith(".safetensors"):  # the weights are not even there
            client.upload_file(str(file), bucket, f"m/{file.name}")
    raw = preflight_spec(tiny_models["llama"], [dataset("c", choice_data["train"], choice_data["eval"])], [["all"]],
                         f"s3://{bucket}/out").model_dump(by_alias=True)  # fmt: skip
    raw["baseModel"]["uri"] = f"s3://{bucket}/m/"
    raw["storage"]["endpoint"] = endpoint
    done = run(PreflightSpec.model_validate(raw), tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(client.get_object(Bucket=bucket, Key="out/preflight.json")["Body"].read())
    assert report["ok"] and len(report["modules"]["all"]) == 14


def test_preflight_reports_a_chat_dataset_the_tokenizer_cannot_render(no_template_model, choice_data, tmp_path):
    broken = tmp_path / "broken-chat.jsonl"
    broken.write_text('{"messages": [{"role": "user", "content": "x"}]}\n')
    spec = preflight_spec(
        no_template_model,
        [dataset("plain", choice_data["train"], choice_data["eval"]),
         dataset("talk", choice_data["chat_train"], broken, fmt="chat")],
        [["o_proj"]],
        f"file://{tmp_path}/out",
    )  # fmt: skip
    done = run(spec, tmp_path)
    assert done.returncode == EXIT_PERMANENT, done.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "preflight.json").read_text())
    assert report["ok"] is False
    template, record = report["problems"]  # once for the dataset; its records are still checked
    assert template.startswith(
        f"spec.datasets[1]: dataset 'talk' (file://{choice_data['chat_train']}, file://{broken})"
    )
    assert "has no chat template" in template
    assert "set the dataset's format to 'prompt-completion' or 'text'" in template
    assert record.startswith("spec.datasets[1].eval: ") and "broken-chat.jsonl:1: the last message must be" in record
    assert report["records"] == {"plain/train": 256, "plain/eval": 24, "talk/train": 64}
