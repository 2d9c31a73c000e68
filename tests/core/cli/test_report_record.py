"""`lora-ablation report` rebuilds the leaderboard from the result files, and takes what only the ablation knew
from the summary.json it recorded: stage-one eliminations, the budget's skipped trials, the compute, and the
eliminated trials' curves (drawn dashed by --plots)."""

from __future__ import annotations

import json

import pytest
from test_run_without_matplotlib import _finished_ablation

from lora_ablation import cli
from lora_ablation.api.curves import EvalPoint, LossCurve
from lora_ablation.summary.models import Compute, EliminatedConfig, StageOneEntry, Summary, TrialCurve


def _recorded(folder) -> Summary:
    """What the operator (or the local runner) wrote when fc1 lost at stage one on `med`."""
    trial = "demo-med-fc1-r16-lora-0123456789"
    return Summary(
        ablation="demo", tolerance=0.02,
        eliminated=[EliminatedConfig(dataset="med", config="fc1 r16 lora", stage_one_score=-9.0, cutoff=-3.0,
                                     step=2, steps=4, trials=[trial])],
        stage_one=[StageOneEntry(dataset="med", config="o_proj r16 lora", score=-1.5, survived=True),
                   StageOneEntry(dataset="med", config="fc1 r16 lora", score=-9.0, survived=False)],
        compute=Compute(gpu_hours=0.25, stage_one_gpu_hours=0.1, eliminated_gpu_hours=0.05),
        curves=[TrialCurve(dataset="med", config="fc1 r16 lora", trial=trial, seed=42, eliminated=True,
                           curve=LossCurve(steps=[1, 2], loss=[3.0, 2.9]),
                           eval_points=[EvalPoint(stage="stage-one", step=2, score=-9.0)])],
    )  # fmt: skip


def _report(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["report", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_report_keeps_the_recorded_eliminations_costs_and_curves(tmp_path, capsys):
    _, folder = _finished_ablation(tmp_path)
    (folder / "summary.json").write_text(json.dumps(_recorded(folder).to_wire()))
    code, out, _ = _report(capsys, str(folder), "-o", "json")
    assert code == 0
    summary = Summary.model_validate(json.loads(out))
    assert [(e.config, e.stage_one_score) for e in summary.eliminated] == [("fc1 r16 lora", -9.0)]
    assert summary.compute.gpu_hours == 0.25 and len(summary.stage_one) == 2
    assert [c.trial for c in summary.curves if c.eliminated] == ["demo-med-fc1-r16-lora-0123456789"]
    assert {c.config for c in summary.datasets[0].cells} >= {"o_proj r16 lora", "fc2 r16 lora"}  # from the results
    assert any("eliminated after stage one" in n for n in summary.notes)
    code, markdown, _ = _report(capsys, str(folder), "-o", "markdown")
    assert code == 0 and "fc1 r16 lora" in markdown


@pytest.mark.parametrize("body", ['{"ablation": "demo", "tolerance": "loose"}', "[1, 2]", "not json"])
def test_a_summary_json_that_is_not_one_is_said_and_left_out(tmp_path, capsys, body):
    _, folder = _finished_ablation(tmp_path)
    (folder / "summary.json").write_text(body)
    code, out, err = _report(capsys, str(folder), "-o", "json")
    assert code == 0, err
    assert Summary.model_validate(json.loads(out)).eliminated == []
    assert "summary.json is not a valid summary" in err and "Traceback" not in err
