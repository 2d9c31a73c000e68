"""What the plots show: never a negative latency axis, a visible legend entry for a one-point front, eliminated
cells labelled as such (in the heatmap and the score table)."""

from __future__ import annotations

import pytest

from lora_ablation.api.trial import TrialResult
from lora_ablation.summary.build import summarize
from lora_ablation.summary.plots import pareto_figure  # imports matplotlib only when a figure is drawn

pytest.importorskip("matplotlib")


def timed(config: str | None, score: float, tpot_ms: float, ci_pct: float | None = None) -> TrialResult:
    stats = dict.fromkeys(("ttftP50Ms", "ttftP95Ms", "tpotP50Ms"), 1.0)
    overhead = (tpot_ms / 10.0 - 1) * 100
    latency = {"device": "cpu", "dtype": "float32", "promptTokens": 8, "outputTokens": 8, "batchSize": 1,
               "repeats": 20, "base": stats | {"tpotP95Ms": 10.0}, "adapter": stats | {"tpotP95Ms": tpot_ms},
               "tpotOverheadPct": overhead, "tpotOverheadCiPct": ci_pct}  # fmt: skip
    return TrialResult.model_validate(
        {"ablation": "s", "trial": f"d-{config or 'base'}", "dataset": "d", "modules": config.split("+") if config
         else [], "rank": 8 if config else 0, "variant": "lora" if config else "none", "seed": 1 if config else None,
         "trainableParams": 1000 if config else 0, "latency": latency,
         "eval": {"metric": "exact_match", "score": score, "samples": 100}}
    )  # fmt: skip


def test_latency_noise_bars_never_take_the_x_axis_below_zero():
    results = [timed(None, 0.1, 10.0), timed("o_proj", 0.5, 11.0, ci_pct=400.0), timed("fc2", 0.4, 12.0, 300.0)]
    summary = summarize(results, "s", tolerance=0.0)
    (ax,) = pareto_figure(summary).axes
    errorbar_lows = [seg[0][0] for c in ax.containers for seg in c.lines[2][0].get_segments()]
    assert min(errorbar_lows) < 0, "the case under test: an interval that crosses zero"
    assert ax.get_xlim()[0] == 0


def test_a_one_point_front_has_a_legend_entry_that_shows_a_marker():
    results = [timed(None, 0.1, 10.0), timed("o_proj", 0.6, 11.0), timed("fc2", 0.4, 12.0)]
    summary = summarize(results, "s", tolerance=0.0)
    assert summary.pareto_front == ["o_proj r8 lora"]
    (ax,) = pareto_figure(summary).axes
    legend = ax.get_legend()
    (entry,) = [h for h, t in zip(legend.legend_handles, legend.get_texts(), strict=True)
                if t.get_text().startswith("Pareto front")]  # fmt: skip
    assert entry.get_marker() == "o" and entry.get_linestyle() == "None"


def test_an_eliminated_cell_reads_eliminated_in_the_score_table_not_missing():
    from lora_ablation.summary.models import EliminatedConfig
    from lora_ablation.summary.report import dataset_matrix

    results = [timed(None, 0.1, 10.0), timed("o_proj", 0.6, 11.0), timed("fc2", 0.4, 12.0)]
    other = [r.model_copy(update={"dataset": "e", "trial": r.trial.replace("d-", "e-")}) for r in results[:2]]
    summary = summarize(results + other, "s", tolerance=0.0)
    gone = EliminatedConfig(dataset="e", config="fc2 r8 lora", stage_one_score=0.2, cutoff=0.3, step=2, steps=8)
    summary = summary.model_copy(update={"eliminated": [gone]})
    headers, rows = dataset_matrix(summary)
    fc2 = next(row for row in rows if row[0] == "fc2 r8 lora")
    assert fc2[headers.index("e")] == "eliminated"
    missing = summary.model_copy(update={"eliminated": []})
    assert next(row for row in dataset_matrix(missing)[1] if row[0] == "fc2 r8 lora")[headers.index("e")] == "missing"


def test_an_eliminated_cell_is_labelled_in_the_heatmap_on_a_visible_background():
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    from lora_ablation.summary.models import EliminatedConfig
    from lora_ablation.summary.plots import heatmap_figure

    results = [timed(None, 0.1, 10.0), timed("o_proj", 0.6, 11.0), timed("fc2", 0.4, 12.0)]
    other = [r.model_copy(update={"dataset": "e", "trial": r.trial.replace("d-", "e-")}) for r in results[:2]]
    summary = summarize(results + other, "s", tolerance=0.0)
    gone = EliminatedConfig(dataset="e", config="fc2 r8 lora", stage_one_score=0.2, cutoff=0.3, step=2, steps=8)
    for eliminated, label in [([gone], "eliminated\nstage 1: 0.200"), ([], "missing")]:
        fig = heatmap_figure(summary.model_copy(update={"eliminated": eliminated}))
        (ax, _colorbar) = fig.axes
        row = [t.get_text() for t in ax.get_yticklabels()].index("e (exact_match)")
        column = [t.get_text() for t in ax.get_xticklabels()].index("fc2 r8 lora")
        (cell,) = [t for t in ax.texts if t.get_position() == (column, row)]
        assert cell.get_text() == label
        background = ax.images[0].get_cmap().get_bad()
        assert background[3] == 1 and min(background[:3]) < 0.95, "a blank (white or transparent) cell"
        assert to_rgba(cell.get_color()) != to_rgba("white")
        plt.close(fig)
