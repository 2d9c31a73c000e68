"""A pod's batch trained fused, through the trainer's own entry point (run_batch): each trial is published as its
sequential run publishes it, a diverging adapter fails alone, stage one's survivors resume fused from their own
checkpoints, and dropout draws from each adapter's own stream (issue 25). Real tiny models, float32."""

from __future__ import annotations

import logging

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from lora_ablation.api.stages import StageOneResult, TrialFailure
from lora_ablation.api.trial import TrialBatch, TrialResult
from lora_ablation_trainer.run import run_batch
from support.trainer_data import trial_spec

pytestmark = pytest.mark.trainer
CONFIGS = {
    "oproj": {"modules": ["o_proj"], "rank": 4, "alpha": 8},
    "qkv": {"modules": ["qkv", "fc2"], "rank": 8, "alpha": 16, "variant": "rslora"},
    "mlp": {"modules": ["fc1"], "rank": 2, "alpha": 4, "variant": "loraplus", "layers": "lastHalf"},
    "wild": {"modules": ["o_proj"], "rank": 4, "alpha": 1e30},  # its gradient overflows at once
    "base": {"variant": "none"},
    "dora": {"modules": ["o_proj"], "rank": 4, "alpha": 8, "variant": "dora"},
}


def _batch(tiny_models, choice_data, root, names, fused, training=None, **extra):
    trials = []
    for name in names:
        config = CONFIGS[name.split("-")[0]]
        trials.append(trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"],
                                 f"file://{root}/{name}", name=name, latency={"enabled": False}, **config,
                                 training={"maxSteps": 6, "batchSize": 4, "gradientAccumulation": 2,
                                           "loraDropout": 0.0, **(training or {})}, **extra))  # fmt: skip
    return TrialBatch(trials=trials, fused_group_size=fused)


def _adapter(root, name) -> dict[str, torch.Tensor]:
    return load_file(str(root / name / "adapter" / "adapter_model.safetensors"))


def _difference(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_a_fused_batch_publishes_each_trial_as_its_sequential_run(tiny_models, choice_data, tmp_path, caplog):
    names = ["oproj", "base", "qkv", "dora", "mlp"]
    with caplog.at_level(logging.INFO, logger="lora_ablation_trainer"):
        fused = run_batch(_batch(tiny_models, choice_data, tmp_path / "fused", names, fused=8))
    assert "training 3 trials together: oproj, qkv, mlp" in caplog.text  # the baseline and DoRA train alone
    sequential = run_batch(_batch(tiny_models, choice_data, tmp_path / "sequential", names, fused=1))
    for one, other in zip(fused, sequential, strict=True):
        assert isinstance(one, TrialResult) and isinstance(other, TrialResult), (one, other)
        assert one.eval.score == other.eval.score and one.eval.eval_loss == pytest.approx(other.eval.eval_loss,
                                                                                          abs=1e-5)  # fmt: skip
        assert one.train is None or one.train.tokens == other.train.tokens
        if one.variant != "none":
            assert _difference(_adapter(tmp_path / "fused", one.trial), _adapter(tmp_path / "sequential",
                                                                                 one.trial)) < 1e-5  # fmt: skip
    results = {r.trial: r for r in fused}
    # The group's training time is shared: each fused trial is charged a part of it, none the whole.
    assert all(results[n].compute_seconds > 0 for n in names)
    base = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    loaded = PeftModel.from_pretrained(base, tmp_path / "fused" / "qkv" / "adapter")
    assert sorted(loaded.peft_config["default"].target_modules) == sorted(results["qkv"].targeted_module_names)


def test_a_diverging_adapter_fails_alone_and_the_others_go_on(tiny_models, choice_data, tmp_path):
    fused = run_batch(_batch(tiny_models, choice_data, tmp_path / "fused", ["oproj", "wild", "qkv"], fused=8))
    sequential = run_batch(_batch(tiny_models, choice_data, tmp_path / "sequential", ["oproj", "qkv"], fused=1))
    assert isinstance(fused[1], TrialFailure) and fused[1].message.startswith("diverged at step 1 of 6: the gradi")
    # The hint blames the trial's own scale, not the base model the other adapters trained on without trouble.
    assert "this trial's own settings are at fault" in fused[1].message and "alphaOverRank" in fused[1].message
    assert "the base model gives a non-finite loss" not in fused[1].message
    assert (tmp_path / "fused" / "wild" / "failure.json").exists()
    assert not (tmp_path / "fused" / "wild" / "result.json").exists()
    for one, other in zip([fused[0], fused[2]], sequential, strict=True):
        assert one.eval.score == other.eval.score
        assert _difference(_adapter(tmp_path / "fused", one.trial), _adapter(tmp_path / "sequential",
                                                                             one.trial)) < 1e-5  # fmt: skip


def test_stage_one_survivors_resume_fused_from_their_own_checkpoints(tiny_models, choice_data, tmp_path):
    names = ["oproj", "qkv", "mlp"]
    first = run_batch(_batch(tiny_models, choice_data, tmp_path / "two", names, fused=8,
                             stage_one={"fraction": 0.5}))  # fmt: skip
    assert all(isinstance(o, StageOneResult) and o.step == 3 and o.steps == 6 for o in first), first
    assert all((tmp_path / "two" / n / "checkpoints" / "latest.pt").exists() for n in names)
    survivors = ["oproj", "mlp"]  # qkv eliminated: it leaves the group
    second = run_batch(_batch(tiny_models, choice_data, tmp_path / "two", survivors, fused=8))
    whole = run_batch(_batch(tiny_models, choice_data, tmp_path / "whole", survivors, fused=1))
    for one, other in zip(second, whole, strict=True):
        assert isinstance(one, TrialResult) and one.train.resumed_from_step == 3 and one.train.steps == 6
        assert [p.stage for p in one.train.eval_points] == ["stage-one", "final"]
        assert one.eval.score == other.eval.score
        assert _difference(_adapter(tmp_path / "two", one.trial), _adapter(tmp_path / "whole", one.trial)) < 1e-5


def test_dropout_draws_from_each_adapters_own_stream(tiny_models, choice_data, tmp_path):
    """With dropout, a fused adapter does not depend on which other trials share its group, nor on gradient
    checkpointing recomputing its layers."""
    dropout = {"loraDropout": 0.2}
    run_batch(_batch(tiny_models, choice_data, tmp_path / "a", ["oproj", "qkv"], fused=8, training=dropout))
    run_batch(_batch(tiny_models, choice_data, tmp_path / "b", ["mlp", "oproj"], fused=8, training=dropout))
    run_batch(_batch(tiny_models, choice_data, tmp_path / "c", ["oproj", "qkv"], fused=8))
    checkpointed = {**dropout, "gradientCheckpointing": True}  # backward recomputes each layer: the same masks
    run_batch(_batch(tiny_models, choice_data, tmp_path / "d", ["oproj", "qkv"], fused=8, training=checkpointed))
    assert _difference(_adapter(tmp_path / "a", "qkv"), _adapter(tmp_path / "d", "qkv")) < 1e-6
    assert _difference(_adapter(tmp_path / "a", "oproj"), _adapter(tmp_path / "b", "oproj")) == 0.0
    assert _difference(_adapter(tmp_path / "a", "oproj"), _adapter(tmp_path / "c", "oproj")) > 1e-4, "it drops"
