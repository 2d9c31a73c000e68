"""Learning curves in trial files: bounded and checked like every trial-file figure, optional for older results,
downsampled evenly by the trainer; the summary carries them and curves.png draws them."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from lora_ablation.api.curves import CURVE_POINTS, LossCurve, downsample
from lora_ablation.api.stages import StageOneResult
from lora_ablation.api.trial import TrialResult
from lora_ablation.summary.build import summarize

TRAIN = {"steps": 4, "tokens": 100, "seconds": 2.0, "tokensPerSecond": 50.0}


def result(train: dict, modules=("o_proj",), dataset="d", trial="t1", score=0.5) -> TrialResult:
    return TrialResult.model_validate({"ablation": "a", "trial": trial, "dataset": dataset, "modules": list(modules),
                                       "rank": 4, "variant": "lora", "train": train,
                                       "eval": {"metric": "accuracy", "score": score, "samples": 10}})  # fmt: skip


def test_a_result_written_before_curves_still_loads_with_an_empty_one():
    old = result(TRAIN | {"lossCurve": [1.0, 0.9]})
    assert old.train.curve == LossCurve() and old.train.eval_points == []
    assert summarize([old], "a").curves == []  # nothing to draw


@pytest.mark.parametrize(
    ("curve", "problem"),
    [
        ({"steps": [1, 2], "loss": [1.0]}, "one entry each"),
        ({"steps": [2, 2], "loss": [1.0, 0.9]}, "steps must increase"),
        ({"steps": [1, 2], "loss": [1.0, 1e7]}, "less than or equal to 1000000"),
        ({"steps": [1, 2], "loss": [1.0, math.nan]}, "finite"),
        ({"steps": [-1, 2], "loss": [1.0, 0.9]}, "greater than or equal to 0"),
        ({"steps": list(range(1, 300)), "loss": [1.0] * 299}, "at most 200"),
    ],
)
def test_a_hostile_curve_makes_the_file_invalid(curve, problem):
    with pytest.raises(ValidationError, match=problem):
        result(TRAIN | {"curve": curve})
    with pytest.raises(ValidationError, match=problem):
        StageOneResult.model_validate({"trial": "t", "dataset": "d", "step": 2, "steps": 8, "metric": "accuracy",
                                       "score": 0.5, "samples": 4, "curve": curve})  # fmt: skip


def test_eval_points_are_bounded_too():
    point = {"stage": "final", "step": 4, "score": 0.5}
    assert result(TRAIN | {"evalPoints": [point]}).train.eval_points[0].step == 4
    with pytest.raises(ValidationError, match="stage"):
        result(TRAIN | {"evalPoints": [point | {"stage": "halfway"}]})
    with pytest.raises(ValidationError, match="at most 16"):
        result(TRAIN | {"evalPoints": [point] * 17})


def test_downsampling_keeps_the_first_and_last_step_evenly_spaced():
    losses = [10.0 / (i + 1) for i in range(1000)]
    curve = downsample(losses)
    assert len(curve.steps) == CURVE_POINTS and curve.steps[0] == 1 and curve.steps[-1] == 1000
    gaps = {b - a for a, b in zip(curve.steps, curve.steps[1:], strict=False)}
    assert gaps <= {5, 6}  # 999 / 199 = 5.02
    assert curve.loss[-1] == round(losses[-1], 5)
    assert downsample([2.0, 1.0]).steps == [1, 2]  # short runs are kept whole


def test_the_curves_plot_has_a_panel_per_dataset_colours_like_pareto_and_dashes_the_eliminated():
    pytest.importorskip("matplotlib")
    from lora_ablation.summary.models import TrialCurve
    from lora_ablation.summary.plots import config_color, curves_figure

    curve = {"steps": [1, 2, 3], "loss": [2.0, 1.5, 1.2]}
    results = [result(TRAIN | {"curve": curve}, modules, dataset, f"{dataset}-{'+'.join(modules)}", score)
               for dataset in ("d", "e") for modules, score in ((("o_proj",), 0.6), (("fc2",), 0.4))]  # fmt: skip
    summary = summarize(results, "a")
    gone = TrialCurve(dataset="e", config="qkv r4 lora", trial="e-qkv", eliminated=True,
                      curve=LossCurve(steps=[1], loss=[2.0]))  # fmt: skip
    summary = summary.model_copy(update={"curves": [*summary.curves, gone]})
    figure = curves_figure(summary)
    panels = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["d", "e"]
    best = summary.recommendation.accuracy_first
    assert config_color(summary, best)[0] == "tab:red"
    lines = panels[1].get_lines()
    assert [line.get_linestyle() for line in lines] == ["-", "-", "--"]
    assert lines[2].get_color() == "tab:gray"
