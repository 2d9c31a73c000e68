"""Image+text records on a tiny real LLaVA built in code: parsing, image references, preflight, training with the
vision tower and projector frozen, eval on generated text, latency with an image in the prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_ablation.api.trial import PreflightSpec
from lora_ablation_trainer.data import load_examples
from lora_ablation_trainer.errors import DataError
from lora_ablation_trainer.preflight import check
from lora_ablation_trainer.run import run_trial
from lora_ablation_trainer.vision import image_uri
from support.trainer_data import corpus, image_records, run_ablation_cli, trial_spec, write_jsonl

pytestmark = pytest.mark.trainer
QUESTION = "which colour? options A=red B=green C=blue D=yellow answer"


@pytest.fixture(scope="module")
def vlm(tmp_path_factory) -> Path:
    from lora_ablation_demo.tiny import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("vlm") / "llava", [*corpus(), QUESTION])


@pytest.fixture(scope="module")
def image_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("image-data")
    return {
        "train": write_jsonl(root / "train.jsonl", image_records(64, 1, root / "images", root)),
        "eval": write_jsonl(root / "eval.jsonl", image_records(8, 2, root / "images", root)),
    }


def test_image_parts_are_read_in_prompt_order_and_bad_parts_named(vlm, tmp_path):
    from transformers import AutoProcessor

    path = tmp_path / "c.jsonl"
    image, text = {"type": "image", "image": "a.png"}, {"type": "text", "text": "and"}
    content = [image, text, {"type": "image", "image": "b.png"}]
    write_jsonl(path, [{"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": "A"}]},
                       {"messages": [{"role": "user", "content": [{"type": "video"}]},
                                     {"role": "assistant", "content": "A"}]}])  # fmt: skip
    processor = AutoProcessor.from_pretrained(vlm)
    with pytest.raises(DataError, match=r"c\.jsonl:2: messages\[0\]\.content\[0\]: expected \{'type': 'text'"):
        load_examples(path, "chat", processor)
    (example,) = load_examples(path, "chat", processor, limit=1)
    assert example.images == ("a.png", "b.png") and example.prompt.count("<image>") == 2


def test_image_references_resolve_next_to_the_dataset_file():
    assert image_uri("img/1.png", "s3://bucket/sets/train.jsonl") == "s3://bucket/sets/img/1.png"
    assert image_uri("img/1.png", "pvc://claim/data/train.jsonl") == "pvc://claim/data/img/1.png"
    assert image_uri("s3://other/x.png", "file:///d/train.jsonl") == "s3://other/x.png"
    with pytest.raises(DataError, match="only paths relative to the dataset file, s3://, pvc:// or file://"):
        image_uri("https://example.com/x.png", "s3://bucket/train.jsonl")


def test_an_image_text_trial_trains_only_the_language_model_and_times_with_an_image(vlm, image_data, tmp_path):
    latency = {"promptTokens": 12, "outputTokens": 3, "repeats": 1}
    spec = trial_spec(vlm, image_data["train"], image_data["eval"], f"file://{tmp_path}/out", format="chat",
                      training={"maxSteps": 8}, latency=latency)  # fmt: skip
    result = run_trial(spec)
    assert result.train.loss_last < result.train.loss_first, result.train.curve.loss
    assert result.eval.samples == 8 and result.eval.metric == "accuracy"  # scored on generated text
    assert all(name.startswith("model.language_model.layers.") for name in result.targeted_module_names)
    adapter = tmp_path / "out" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert all("vision" not in m and "projector" not in m for m in config["target_modules"])
    from safetensors import safe_open

    with safe_open(adapter / "adapter_model.safetensors", "pt") as saved:  # nothing of the tower or projector
        assert all("lora_" in key and "language_model" in key for key in saved.keys())  # noqa: SIM118 (not a dict)
    # 4 image tokens (32x32 pixels, 16-pixel patches) and ordinary tokens up to the 12 asked for
    assert result.latency.prompt_tokens == 12 and result.latency.adapter.ttft_p50_ms > 0


def test_a_gemma3_trial_trains_with_its_token_type_ids(image_data, tmp_path):
    """Gemma 3 needs token type ids (image tokens attend bidirectionally) padded like the input ids."""
    from lora_ablation_demo.tiny import build_tiny_vlm

    gemma3 = build_tiny_vlm(tmp_path / "gemma3", [*corpus(), QUESTION], family="gemma3")
    latency = {"promptTokens": 12, "outputTokens": 3, "repeats": 1}
    spec = trial_spec(gemma3, image_data["train"], image_data["eval"], f"file://{tmp_path}/out", format="chat",
                      training={"maxSteps": 6}, latency=latency)  # fmt: skip
    result = run_trial(spec)
    assert result.train.loss_last < result.train.loss_first, result.train.curve.loss
    assert result.eval.samples == 8 and result.latency.adapter.tpot_p50_ms > 0
    assert all(name.startswith("model.language_model.layers.") for name in result.targeted_module_names)


def test_the_vision_tower_and_projector_stay_frozen(vlm, tmp_path):
    from transformers import AutoModelForImageTextToText

    from lora_ablation_trainer.adapters import attach_adapter, resolve_targets

    spec = trial_spec(vlm, tmp_path / "t.jsonl", tmp_path / "e.jsonl", f"file://{tmp_path}", modules=["qkv", "fc1"])
    model = attach_adapter(spec, resolve_targets(spec, vlm), AutoModelForImageTextToText.from_pretrained(vlm))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".language_model." in n and "lora_" in n for n in trainable)


def test_preflight_names_every_missing_or_broken_image(vlm, image_data, tmp_path):
    records = image_records(3, 7, tmp_path / "images", tmp_path)
    (tmp_path / records[1]["messages"][0]["content"][0]["image"]).write_bytes(b"not a png")
    records[2]["messages"][0]["content"][0]["image"] = "images/missing.png"
    bad = write_jsonl(tmp_path / "bad.jsonl", records)
    spec = PreflightSpec.model_validate({
        "ablation": "pre", "baseModel": {"uri": f"file://{vlm}"}, "moduleSets": [["o_proj"]],
        "datasets": [{"name": "pics", "train": f"file://{bad}", "eval": f"file://{image_data['eval']}"}],
        "storage": {"uri": f"file://{tmp_path}/out"},
    })  # fmt: skip
    report = check(spec, tmp_path / "work")
    assert not report.ok and len(report.problems) == 2, report.problems
    assert report.problems[0].startswith(f"spec.datasets[0].train: {bad}:2: image file://{tmp_path}/images/7-1.png: ")
    assert "cannot open as an image" in report.problems[0]
    assert report.problems[1].startswith(f"spec.datasets[0].train: {bad}:3: image file://{tmp_path}/images/missing")
    assert "does not exist" in report.problems[1]
    assert report.records == {"pics/train": 3, "pics/eval": 8}


def test_images_on_a_text_only_base_model_are_a_data_error(tiny_models, image_data, tmp_path):
    spec = trial_spec(tiny_models["llama"], image_data["train"], image_data["eval"], f"file://{tmp_path}/out",
                      format="chat")  # fmt: skip
    text_only = r"^dataset .choice.: .*train\.jsonl:1 has images, but the base model file://.* is text-only"
    with pytest.raises(DataError, match=text_only):
        run_trial(spec)


@pytest.mark.slow
def test_an_image_text_ablation_runs_end_to_end_through_the_cli(vlm, image_data, tmp_path):
    spec = {
        "baseModel": {"uri": f"file://{vlm}", "dtype": "float32"},
        "datasets": [{"name": "colours", "train": f"file://{image_data['train']}",
                      "eval": f"file://{image_data['eval']}", "format": "chat", "metric": "accuracy"}],
        "search": {"moduleSets": [["o_proj"]], "ranks": [4]},
        "training": {"maxSteps": 3, "batchSize": 4, "gradientAccumulation": 1, "maxSeqLength": 64},
        "latency": {"promptTokens": 12, "outputTokens": 3, "warmup": 0, "repeats": 1},
    }  # fmt: skip
    results = run_ablation_cli("pics", spec, tmp_path)
    assert len(results) == 2 and all(r["eval"]["samples"] == 8 for r in results)  # baseline and adapter
