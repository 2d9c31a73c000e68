"""A 4-bit base (QLoRA): bitsandbytes' nf4 runs on CPU since 0.45, so the whole trial runs here for real."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from lora_ablation_trainer.adapters import load_model, quantization_config
from lora_ablation_trainer.errors import PermanentTrialError
from lora_ablation_trainer.run import run_trial
from support.trainer_data import run_ablation_cli, trial_spec

pytestmark = pytest.mark.trainer
bitsandbytes = pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def nf4_llama(tmp_path_factory):
    """A tiny Llama whose every linear layer has a multiple of 32 outputs: on CPUs with AVX512-BF16, bitsandbytes
    packs 4-bit weights for inference in blocks of 32 output features (real models' widths all are multiples)."""
    from lora_ablation_demo.tiny import build_tiny_model
    from support.trainer_data import corpus

    return build_tiny_model("llama", tmp_path_factory.mktemp("nf4") / "llama", corpus(), intermediate=128)


def test_the_qlora_recipe_is_what_gets_built():
    config = quantization_config("nf4", torch.bfloat16)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_config("none", torch.float32) is None


def test_the_base_loads_with_4_bit_linear_layers(tiny_models):
    model = load_model(tiny_models["llama"], torch.float32, torch.device("cpu"), "nf4")
    layer = model.model.layers[0].self_attn.o_proj
    assert isinstance(layer, bitsandbytes.nn.Linear4bit) and layer.weight.dtype == torch.uint8
    assert layer.weight.quant_state.quant_type == "nf4"


def test_without_bitsandbytes_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if the package were absent: import raises
    with pytest.raises(PermanentTrialError, match=r"^baseModel.quantization nf4: bitsandbytes is not installed"):
        quantization_config("nf4", torch.float32)


def test_a_4_bit_trial_trains_evaluates_times_and_publishes_a_plain_peft_adapter(nf4_llama, choice_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    spec = trial_spec(nf4_llama, choice_data["train"], choice_data["eval"], f"file://{tmp_path}/out",
                      training={"maxSteps": 6, "gradientCheckpointing": True}, latency={"repeats": 1})  # fmt: skip
    spec.base_model.quantization = "nf4"
    result = run_trial(spec)
    assert result.train.steps == 6 and result.train.loss_last < result.train.loss_first, result.train.curve.loss
    assert result.latency.dtype == "nf4 (compute float32)" and result.latency.adapter.tpot_p50_ms > 0
    assert result.eval.samples == 24
    adapter = tmp_path / "out" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 8 and {name.rsplit(".", 1)[1] for name in config["target_modules"]} == {"o_proj", "down_proj"}
    # Standard PEFT format: it loads onto the unquantized base as well.
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(nf4_llama), adapter)


@pytest.mark.slow
def test_a_4_bit_ablation_runs_end_to_end_through_the_cli(nf4_llama, choice_data, tmp_path):
    spec = {
        "baseModel": {"uri": f"file://{nf4_llama}", "dtype": "float32", "quantization": "nf4"},
        "datasets": [{"name": "choice", "train": f"file://{choice_data['train']}",
                      "eval": f"file://{choice_data['eval']}", "format": "prompt-completion",
                      "metric": "accuracy", "maxEvalSamples": 8}],
        "search": {"moduleSets": [["o_proj"]], "ranks": [4]},
        "training": {"maxSteps": 3, "batchSize": 4, "gradientAccumulation": 1, "maxSeqLength": 48},
        "latency": {"promptTokens": 8, "outputTokens": 4, "warmup": 0, "repeats": 1},
    }  # fmt: skip
    results = run_ablation_cli("qlora", spec, tmp_path)
    assert len(results) == 2  # the baseline is timed and scored on the 4-bit base too
    assert {r["latency"]["dtype"] for r in results} == {"nf4 (compute float32)"}


def _nf4_bf16(nf4_llama, choice_data, tmp_path, name, **overrides):
    spec = trial_spec(nf4_llama, choice_data["train"], choice_data["eval"], f"file://{tmp_path}/{name}", name=name,
                      training={"maxSteps": 2}, latency={"enabled": False}, **overrides)  # fmt: skip
    spec.base_model.quantization, spec.base_model.dtype = "nf4", "bfloat16"
    return spec


def test_every_trial_of_a_batch_sees_the_same_prepared_4_bit_base(nf4_llama, choice_data, tmp_path):
    """The QLoRA preparation (norms and embeddings to float32) changes the shared base in place: it happens once, at
    load, so the first trial sees the base every later one does."""
    from lora_ablation.storage.open import open_store
    from lora_ablation_trainer.base import Base
    from lora_ablation_trainer.train import Distributed
    from lora_ablation_trainer.trial import Clock, run_on_base

    specs = [_nf4_bf16(nf4_llama, choice_data, tmp_path, name) for name in ("first", "second")]
    base = Base(specs[0], tmp_path / "cache", Distributed(), shared=True)

    def weights() -> dict[str, tuple[torch.dtype, torch.Tensor]]:
        return {name: (p.dtype, p.detach().clone()) for name, p in base.model().named_parameters()}

    seen = []
    for spec in specs:
        seen.append(weights())
        result = run_on_base(spec, open_store(spec.storage.uri), base, base.targets(spec), base.data(spec),
                             tmp_path / spec.name, Clock())  # fmt: skip
        assert result.train.steps == 2
    first, second = seen
    assert list(first) == list(second)
    assert {n: d for n, (d, _) in first.items()} == {n: d for n, (d, _) in second.items()}
    assert all(torch.equal(first[n][1], second[n][1]) for n in first), "the base's values changed"
    assert first["model.norm.weight"][0] == torch.float32  # the QLoRA recipe, for the first trial too


def test_the_baseline_scores_the_same_before_and_after_a_4_bit_trial(nf4_llama, choice_data, tmp_path):
    from lora_ablation.api.trial import TrialBatch
    from lora_ablation_trainer.run import run_batch

    def batch(*names):
        return TrialBatch(trials=[_nf4_bf16(nf4_llama, choice_data, tmp_path, n, **({"variant": "none"} if
                                                                                     n.startswith("base") else {}))
                                  for n in names])  # fmt: skip

    base_first, lora_second = run_batch(batch("base-a", "lora-a"))
    lora_first, base_second = run_batch(batch("lora-b", "base-b"))
    assert base_first.eval.eval_loss == base_second.eval.eval_loss
    assert lora_first.eval.eval_loss == lora_second.eval.eval_loss
