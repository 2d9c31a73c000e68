"""progress.json while a trial trains: written on the first step, at most every interval, and at the end; bounded
like every trial file; and never able to fail the trial it reports on."""

from __future__ import annotations

import json
import logging

import pytest

from lora_ablation.api.contract import PROGRESS_SECONDS_ENV
from lora_ablation.api.progress import TrialProgress
from lora_ablation.run.live import interval_from_env
from lora_ablation.storage.open import open_store
from lora_ablation.storage.results import MAX_PROGRESS_BYTES, read_progress
from lora_ablation_trainer.progress import ProgressReporter
from lora_ablation_trainer.run import run_trial
from support.trainer_data import trial_spec

pytestmark = pytest.mark.trainer


def test_a_trial_leaves_its_final_progress_bounded_and_readable(tiny_models, choice_data, tmp_path, monkeypatch):
    monkeypatch.setenv(PROGRESS_SECONDS_ENV, "3600")  # the first step, the last and the eval point only
    spec = trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"], f"file://{tmp_path}/out",
                      latency={"repeats": 1})  # fmt: skip
    result = run_trial(spec)
    path = tmp_path / "out" / "progress.json"
    assert path.stat().st_size < MAX_PROGRESS_BYTES
    progress = TrialProgress.model_validate(json.loads(path.read_text()))
    assert progress.trial == "test-trial" and (progress.step, progress.total_steps) == (30, 30)
    assert progress.eta_seconds == 0 and progress.elapsed_seconds > 0 and progress.tokens_per_second > 0
    assert progress.train_loss == pytest.approx(result.train.curve.loss[-1], abs=1e-4)
    assert progress.eval is not None and progress.eval.score == result.eval.score and progress.eval.step == 30
    # The reader the operator and the runner use takes it as it is.
    assert read_progress(open_store(f"file://{tmp_path}"), "out") is None  # the folder is not the trial's name


def test_a_failing_progress_write_leaves_the_trial_alone(tiny_models, choice_data, tmp_path, caplog):
    (tmp_path / "out" / "progress.json").mkdir(parents=True)  # every write of the file fails
    spec = trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"], f"file://{tmp_path}/out",
                      training={"maxSteps": 4}, latency={"repeats": 1})  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="lora_ablation_trainer.progress"):
        result = run_trial(spec)
    assert result.train.steps == 4 and (tmp_path / "out" / "result.json").exists()
    assert "could not write progress.json (training goes on)" in caplog.text


def test_writes_are_bounded_by_the_interval(tmp_path):
    ticks = iter(float(t) for t in range(1000))
    store = open_store(f"file://{tmp_path}/trial")
    reporter = ProgressReporter(store, "trial", interval=30.0, clock=lambda: next(ticks))
    for step in range(1, 101):  # one step a second
        reporter.step(step, 100, 2.0 - step / 100, tokens=step * 512, seconds=step * 1.0)
    reporter.close()
    assert reporter.sent == 5  # steps 1, 31, 61, 91 and the last
    assert reporter.writes >= 1 and reporter.failures == 0
    written = read_progress(open_store(f"file://{tmp_path}"), "trial")
    assert written is not None and written.step == 100 and written.eta_seconds == 0
    assert written.tokens_per_second == 512.0 and written.elapsed_seconds == 100.0


def test_figures_out_of_range_are_clamped_or_left_out(tmp_path):
    store = open_store(f"file://{tmp_path}/t")
    reporter = ProgressReporter(store, "t", interval=30.0)
    reporter.step(1, 10, float("nan"), tokens=10**18, seconds=1e-6)
    reporter.close()
    written = read_progress(open_store(f"file://{tmp_path}"), "t")
    assert written is not None and written.train_loss is None and written.tokens_per_second == 1e9


@pytest.mark.parametrize(("raw", "seconds"), [("", 30.0), ("5", 5.0), ("0", 0.0), ("nan", 30.0), ("-1", 30.0),
                                              ("soon", 30.0)])  # fmt: skip
def test_the_interval_comes_from_the_environment(raw, seconds):
    assert interval_from_env({PROGRESS_SECONDS_ENV: raw}) == seconds


def test_a_stage_one_run_reports_its_checkpoint_and_its_eval_point(tiny_models, choice_data, tmp_path):
    from lora_ablation.api.stages import StageOneSpec

    spec = trial_spec(tiny_models["llama"], choice_data["train"], choice_data["eval"], f"file://{tmp_path}/out",
                      training={"maxSteps": 8})  # fmt: skip
    stage_one = run_trial(spec.model_copy(update={"stage_one": StageOneSpec(fraction=0.5)}))
    progress = TrialProgress.model_validate(json.loads((tmp_path / "out" / "progress.json").read_text()))
    assert (progress.step, progress.total_steps) == (4, 4)  # this run trains to its checkpoint
    assert progress.eval is not None and (progress.eval.step, progress.eval.score) == (4, stage_one.score)
