"""Whole trials on tiny real models: every variant trains, evaluates, times and publishes a valid result."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from pydantic import ValidationError
from transformers import AutoModelForCausalLM

from lora_ablation.api.trial import TrialResult
from lora_ablation_trainer.errors import PermanentTrialError
from lora_ablation_trainer.run import run_trial
from support.trainer_data import trial_spec

pytestmark = pytest.mark.trainer


@pytest.mark.parametrize("family", ["llama", "phi3", "gpt_neox"])
@pytest.mark.parametrize("variant", ["lora", "rslora", "dora", "loraplus"])
def test_every_family_and_variant_trains_and_publishes(family, variant, tiny_models, choice_data, tmp_path):
    spec = trial_spec(tiny_models[family], choice_data["train"], choice_data["eval"], f"file://{tmp_path}/out",
                      variant=variant)  # fmt: skip
    result = run_trial(spec)
    assert result.train.steps == 30
    assert result.train.loss_last < result.train.loss_first, result.train.curve.loss
    assert result.train.curve.steps == list(range(1, 31)) and result.train.loss_curve == []
    (final,) = result.train.eval_points
    assert (final.stage, final.step, final.score) == ("final", 30, result.eval.score)
    assert result.train.tokens > 0 and result.train.tokens_per_second > 0
    assert result.eval.samples == 24 and result.eval.metric == "accuracy"
    assert 0.0 <= result.eval.score <= 1.0 and result.eval.eval_loss > 0
    assert result.latency.adapter.tpot_p95_ms > 0 and result.latency.base.ttft_p50_ms > 0
    assert result.latency.output_tokens == 8
    assert result.targeted_module_names and len(result.targeted_module_names) == 4  # o_proj + fc2 x 2 layers
    assert 0 < result.trainable_params < result.total_params
    on_disk = json.loads((tmp_path / "out" / "result.json").read_text())
    assert TrialResult.model_validate(on_disk) == result
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").stat().st_size == result.adapter_bytes
    assert not (tmp_path / "out" / "checkpoints").exists() or not list((tmp_path / "out" / "checkpoints").iterdir())


def test_variants_change_what_peft_builds(tiny_models, choice_data, tmp_path):
    def config(variant):
        spec = trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"], f"file://{tmp_path}/{variant}",
                          variant=variant, training={"maxSteps": 2}, latency={"repeats": 1})  # fmt: skip
        run_trial(spec)
        return json.loads((tmp_path / variant / "adapter" / "adapter_config.json").read_text())

    assert config("rslora")["use_rslora"] is True
    assert config("dora")["use_dora"] is True
    plain = config("lora")
    assert plain["use_rslora"] is False and plain["use_dora"] is False
    assert plain["r"] == 8 and plain["lora_alpha"] == 16


def test_published_adapter_reloads_to_the_same_eval_loss(tiny_models, choice_data, tmp_path):
    from lora_ablation_trainer.data import load_examples
    from lora_ablation_trainer.evaluate import completion_loss

    spec = trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"], f"file://{tmp_path}/out")
    result = run_trial(spec)
    base = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    model = PeftModel.from_pretrained(base, tmp_path / "out" / "adapter")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    examples = load_examples(choice_data["eval"], "prompt-completion", tokenizer, limit=24)
    loss = completion_loss(model, tokenizer, examples, 64, torch.device("cpu"))
    assert loss == pytest.approx(result.eval.eval_loss, rel=1e-4)


def test_gpt2_conv1d_trains(tiny_models, choice_data, tmp_path):
    spec = trial_spec(tiny_models["gpt2"], choice_data["train"], choice_data["eval"], f"file://{tmp_path}/out",
                      modules=["qkv", "fc2"])  # fmt: skip
    result = run_trial(spec)
    assert result.targeted_module_names == [
        f"transformer.h.{layer}.{name}" for layer in (0, 1) for name in ("attn.c_attn", "mlp.c_proj")
    ]
    assert result.train.loss_last < result.train.loss_first


def test_baseline_skips_training_but_is_evaluated_and_timed(tiny_models, choice_data, tmp_path):
    spec = trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"], f"file://{tmp_path}/out",
                      variant="none")  # fmt: skip
    result = run_trial(spec)
    assert result.train is None and result.trainable_params == 0 and result.adapter_bytes == 0
    assert result.latency.adapter is None and result.latency.base.tpot_p50_ms > 0
    assert result.eval.samples == 24
    assert not (tmp_path / "out" / "adapter").exists()


def test_chat_format_and_exact_match(tiny_models, choice_data, tmp_path):
    spec = trial_spec(tiny_models["phi3"], choice_data["chat_train"], choice_data["chat_eval"], f"file://{tmp_path}/out",
                      format="chat", metric="exact_match")  # fmt: skip
    result = run_trial(spec)
    assert result.eval.metric == "exact_match" and result.eval.samples == 12
    assert result.train.loss_last < result.train.loss_first


def test_eval_loss_metric_scores_negative_loss(tiny_models, choice_data, tmp_path):
    spec = trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"], f"file://{tmp_path}/out",
                      metric="eval_loss", latency={"repeats": 1})  # fmt: skip
    result = run_trial(spec)
    assert result.eval.score == pytest.approx(-result.eval.eval_loss)
    assert result.eval.perplexity == pytest.approx(2.718281828**result.eval.eval_loss, rel=1e-3)


def test_rerun_of_a_finished_trial_returns_at_once(tiny_models, choice_data, tmp_path):
    spec = trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"], f"file://{tmp_path}/out")
    first = run_trial(spec)
    result_file = tmp_path / "out" / "result.json"
    stamp = result_file.stat().st_mtime_ns
    again = run_trial(spec)
    assert again == first and result_file.stat().st_mtime_ns == stamp


def test_invalid_previous_result_is_not_taken_as_done(tiny_models, choice_data, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "result.json").write_text('{"trial": "test-trial"}')  # a truncated, invalid result
    spec = trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"], f"file://{tmp_path}/out",
                      training={"maxSteps": 3}, latency={"repeats": 1})  # fmt: skip
    result = run_trial(spec)
    assert result.train.steps == 3
    assert TrialResult.model_validate_json((tmp_path / "out" / "result.json").read_text()).train.steps == 3


def test_packing_trains_on_fewer_longer_sequences(tiny_models, choice_data, tmp_path):
    def run(packing):
        training = {"packing": packing, "maxSteps": 6, "maxSeqLength": 64}
        spec = trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"], f"file://{tmp_path}/{packing}",
                          training=training, latency={"enabled": False})  # fmt: skip
        return run_trial(spec)

    plain, packed = run(False), run(True)
    assert packed.latency is None and plain.latency is None
    # Same number of steps and sequences per step, but packed sequences hold several examples each.
    assert packed.train.tokens > 2 * plain.train.tokens
    assert packed.train.loss_last < packed.train.loss_first


def test_a_base_model_that_gives_nan_diverges_at_step_1(nan_model, choice_data, tmp_path):
    spec = trial_spec(nan_model, choice_data["train"], choice_data["eval"], f"file://{tmp_path}/out")
    with pytest.raises(PermanentTrialError, match=r"^diverged at step 1 of 30: the training loss is nan; that is befo"):
        run_trial(spec)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["failure.json"]  # recorded, and nothing published
    assert "diverged at step 1" in (tmp_path / "out" / "failure.json").read_text()


def test_a_nan_eval_is_a_permanent_error_naming_the_field(nan_model, choice_data, tmp_path):
    spec = trial_spec(nan_model, choice_data["train"], choice_data["eval"], f"file://{tmp_path}/out",
                      variant="none", metric="eval_loss")  # fmt: skip
    with pytest.raises(PermanentTrialError) as caught:
        run_trial(spec)
    message = str(caught.value)
    assert message.startswith("eval.score = nan, eval.evalLoss = nan, eval.perplexity = nan and 2 more: not a finite")
    assert "load it in bfloat16 or float32 (baseModel.dtype)" in message and "no result was published" in message
    assert not (tmp_path / "out" / "result.json").exists()


def _strict(text: str):
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in result.json"))


def test_non_finite_figures_are_never_published_nor_taken_as_done(tiny_models, choice_data, tmp_path):
    spec = trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"], f"file://{tmp_path}/out",
                      training={"maxSteps": 2}, latency={"repeats": 1})  # fmt: skip
    wire = run_trial(spec).to_wire()
    wire["latency"]["base"]["tpotP95Ms"] = float("inf")
    with pytest.raises(ValidationError, match=r"latency\.base\.tpotP95Ms\n  Input should be a finite number"):
        TrialResult.model_validate(wire)  # so publish() can never be handed one

    # A result an older trainer published with NaN in it is not taken as done: the trial runs again.
    wire["latency"]["base"]["tpotP95Ms"], wire["eval"]["score"] = 1.0, float("nan")
    (tmp_path / "out" / "result.json").write_text(json.dumps(wire))
    again = run_trial(spec)
    assert _strict((tmp_path / "out" / "result.json").read_text())["eval"]["score"] == again.eval.score
