"""Fewer GPU-hours per answer (#15), trainer side: layer subsets, cost figures, stage one then stage two,
and several trials on one loaded base model, each checked against the same trial run alone."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lora_ablation.api.stages import StageOneResult, TrialFailure
from lora_ablation.api.trial import TrialBatch, TrialResult
from lora_ablation_trainer.errors import PermanentTrialError
from lora_ablation_trainer.run import run_batch, run_trial
from support.trainer_data import trial_spec

pytestmark = pytest.mark.trainer
QUICK = {"maxSteps": 12, "checkpointEverySteps": 5}


def _spec(models, data, storage: Path, family: str = "llama", **overrides):
    overrides.setdefault("latency", {"enabled": False})
    overrides["training"] = {**QUICK, **overrides.get("training", {})}
    return trial_spec(models[family], data["train"], data["eval"], f"file://{storage}", **overrides)


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter" / "adapter_model.safetensors")


def _same_training(a: TrialResult, b: TrialResult, a_dir: Path, b_dir: Path) -> None:
    assert a.eval == b.eval
    assert a.train.curve == b.train.curve
    weights_a, weights_b = _adapter(a_dir), _adapter(b_dir)
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


@pytest.mark.parametrize(("family", "layers", "chosen"), [("llama", "1", [1]), ("gpt2", "lastHalf", [1])])
def test_a_layer_subset_wraps_only_its_layers(family, layers, chosen, tiny_models, choice_data, tmp_path):
    modules = ["qkv", "fc2"] if family == "gpt2" else ["o_proj", "fc2"]
    every = run_trial(_spec(tiny_models, choice_data, tmp_path / "all", family, modules=modules,
                            training={"maxSteps": 2}))  # fmt: skip
    subset = run_trial(_spec(tiny_models, choice_data, tmp_path / "sub", family, modules=modules, layers=layers,
                             training={"maxSteps": 2}))  # fmt: skip
    container = "transformer.h" if family == "gpt2" else "model.layers"
    assert len(every.targeted_module_names) == 4
    assert subset.targeted_module_names == [n for n in every.targeted_module_names if n.startswith(f"{container}.1.")]
    assert subset.layers == layers and every.layers == "all"
    assert subset.trainable_params * 2 == every.trainable_params
    config = json.loads((tmp_path / "sub" / "adapter" / "adapter_config.json").read_text())
    assert config["layers_to_transform"] == chosen
    assert set(_adapter(tmp_path / "sub")) == {k for k in _adapter(tmp_path / "all") if f"{container}.1." in k}


def test_a_layer_the_model_lacks_is_a_permanent_error_naming_search_layers(tiny_models, choice_data, tmp_path):
    spec = _spec(tiny_models, choice_data, tmp_path / "out", layers="0,2")
    with pytest.raises(PermanentTrialError, match=r"search\.layers: '0,2': layer 2 does not exist; the model has 2"):
        run_trial(spec)
    # A single trial is a batch of one: its permanent failure is recorded like a batch's, and nothing else is.
    files = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert files == ["failure.json"]  # the trial's own prefix
    failure = TrialFailure.model_validate_json((tmp_path / "out" / files[0]).read_text())
    assert failure.exit_code == 42 and "layer 2 does not exist" in failure.message
    with pytest.raises(PermanentTrialError, match=r"already failed for good: search\.layers"):
        run_trial(spec)  # a retried pod does not train it again


def test_every_result_counts_its_compute(tiny_models, choice_data, tmp_path):
    result = run_trial(_spec(tiny_models, choice_data, tmp_path / "out", training={"maxSteps": 2}))
    assert result.gpu_seconds == 0.0  # CPU only: compute is wall-clock x 1
    assert result.compute_seconds > 0 and result.cpu_seconds > 0
    assert result.train.seconds <= result.compute_seconds


def _checkpoint_step(folder: Path) -> int:
    payload = (folder / "checkpoints" / "latest.pt").read_bytes()
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)["state"]["step"]


@pytest.mark.slow
def test_stage_one_then_stage_two_equals_one_run(tiny_models, choice_data, tmp_path):
    """12 steps, stage one at 25%: step 3, not a checkpointEverySteps multiple; dropout on, so the RNG state counts."""
    whole = run_trial(_spec(tiny_models, choice_data, tmp_path / "whole"))
    staged = tmp_path / "staged"
    first = run_trial(_spec(tiny_models, choice_data, staged, stage_one={"fraction": 0.25, "evalSamples": 8}))
    assert isinstance(first, StageOneResult)
    assert (first.step, first.steps, first.samples, first.metric) == (3, 12, 8, "accuracy")
    assert first.compute_seconds > 0 and first.cpu_seconds > 0
    assert StageOneResult.model_validate_json((staged / "stage-one.json").read_text()) == first
    assert not (staged / "result.json").exists() and not (staged / "adapter").exists()
    assert _checkpoint_step(staged) == 3
    again = run_trial(_spec(tiny_models, choice_data, staged, stage_one={"fraction": 0.25, "evalSamples": 8}))
    assert again == first, "a stage one that already has its score does nothing"

    second = run_trial(_spec(tiny_models, choice_data, staged))
    assert second.train.resumed_from_step == 3 and second.train.steps == 12
    _same_training(second, whole, staged, tmp_path / "whole")
    assert second.compute_seconds >= first.compute_seconds + 0.001
    assert not (staged / "checkpoints" / "latest.pt").exists()


@pytest.mark.slow
def test_a_batch_equals_each_trial_run_alone(tiny_models, choice_data, tmp_path):
    """Three trials on one loaded base: a plain LoRA, a DoRA on other modules and layers with another dataset
    format, the baseline; then a batch whose first trial fails for good. Each equals the trial run alone."""
    kinds = [
        {"name": "a"},
        {"name": "b", "variant": "dora", "modules": ["qkv"], "layers": "0", "format": "chat", "metric": "exact_match"},
        {"name": "c", "variant": "none"},
    ]

    def specs(root: Path):
        out = []
        for kind in kinds:
            kind = dict(kind)
            chat = kind.get("format") == "chat"
            data = {"train": choice_data["chat_train" if chat else "train"],
                    "eval": choice_data["chat_eval" if chat else "eval"]}  # fmt: skip
            out.append(_spec(tiny_models, data, root / kind["name"], **kind))
        return out

    alone = [run_trial(spec) for spec in specs(tmp_path / "alone")]
    together = run_batch(TrialBatch(trials=specs(tmp_path / "batch")))
    for one, many, name in zip(alone, together, "abc", strict=True):
        if name == "c":
            assert many.eval == one.eval and many.train is None
        else:
            _same_training(many, one, tmp_path / "batch" / name, tmp_path / "alone" / name)
            assert many.targeted_module_names == one.targeted_module_names
    assert together[1].targeted_module_names == ["model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.q_proj",
                                                 "model.layers.0.self_attn.v_proj"]  # fmt: skip
    rerun = run_batch(TrialBatch(trials=specs(tmp_path / "batch")))
    assert rerun == together, "finished trials are skipped"


def test_a_permanent_failure_leaves_failure_json_and_the_batch_goes_on(tiny_models, choice_data, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    good = _spec(tiny_models, choice_data, tmp_path / "good", name="good", training={"maxSteps": 2})
    broken = trial_spec(tiny_models["llama"], bad, choice_data["eval"], f"file://{tmp_path}/broken", name="broken")
    beyond = _spec(tiny_models, choice_data, tmp_path / "beyond", name="beyond", layers="5")
    outcomes = run_batch(TrialBatch(trials=[broken, beyond, good]))
    assert isinstance(outcomes[0], TrialFailure) and isinstance(outcomes[1], TrialFailure)
    failure = TrialFailure.model_validate_json((tmp_path / "broken" / "failure.json").read_text())
    assert failure.exit_code == 42 and "bad.jsonl:1: field 'completion' must be a string" in failure.message
    assert "search.layers" in (tmp_path / "beyond" / "failure.json").read_text()
    assert isinstance(outcomes[2], TrialResult) and (tmp_path / "good" / "result.json").exists()
    assert not (tmp_path / "broken" / "result.json").exists()
    assert run_batch(TrialBatch(trials=[broken, beyond, good])) == outcomes, "a failed trial is not retried"


def test_a_base_whose_weights_changed_is_loaded_again(tiny_models, choice_data, tmp_path):
    """The guard behind the batch: merging an adapter into the shared base would leak into the next trial."""
    from lora_ablation_trainer import adapters
    from lora_ablation_trainer.base import Base
    from lora_ablation_trainer.train import Distributed

    spec = _spec(tiny_models, choice_data, tmp_path / "out")
    base = Base(spec, tmp_path / "cache", Distributed(), shared=True)
    loaded = base.model()
    original = {k: v.clone() for k, v in loaded.state_dict().items()}
    model = adapters.attach_adapter(spec, base.targets(spec), loaded)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.fill_(0.1)
    model.merge_adapter()  # writes the adapter into the base weights in place
    base.release(model)
    fresh = base.model()
    assert fresh is not loaded
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in original.items())
    clean = adapters.attach_adapter(spec, base.targets(spec), fresh)
    base.release(clean)
    assert base.model() is fresh, "an adapter taken off cleanly leaves the base as loaded"
