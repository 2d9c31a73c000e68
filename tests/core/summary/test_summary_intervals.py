"""Seeds give intervals: the t quantile, ties where intervals overlap, 'no winner', latency within noise."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lora_ablation.api.trial import TrialResult
from lora_ablation.summary.build import summarize
from lora_ablation.summary.report import render_markdown, render_text
from lora_ablation.summary.stats import Interval, mean_interval, mean_of_means, separable, t_quantile, tie_positions

# Two-sided 95% critical values of Student's t, as printed in every statistics table.
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 19: 2.093, 30: 2.042, 120: 1.980}
PARAMS = {"o_proj": 1_000, "o_proj+fc2": 5_000, "all": 20_000, "qkv": 3_000}


@pytest.mark.parametrize("df", sorted(T_TABLE))
def test_t_quantile_matches_the_printed_table(df):
    assert t_quantile(0.975, df) == pytest.approx(T_TABLE[df], abs=5e-4)


def test_t_quantile_is_scipys():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2.5, 4, 17.3, 1000):  # Welch's degrees of freedom are fractional
        assert t_quantile(0.975, df) == pytest.approx(float(stats.t.ppf(0.975, df)), rel=1e-12)
    with pytest.raises(ValueError, match="df > 0"):
        t_quantile(0.975, 0)


def test_three_seeds_give_the_textbook_interval():
    interval = mean_interval([0.80, 0.82, 0.84])  # sd 0.02: 4.303 x 0.02 / sqrt(3)
    assert interval.mean == pytest.approx(0.82) and interval.half_width == pytest.approx(0.049687, abs=1e-5)
    assert mean_interval([0.5]).half_width is None  # one seed: no interval, never a fake zero


def trial(dataset, config, seed, score, overhead=None, overhead_ci=None):
    latency = None
    if overhead is not None:
        stats = dict.fromkeys(("ttftP50Ms", "ttftP95Ms", "tpotP50Ms"), 1.0)
        latency = {"device": "cpu", "dtype": "float32", "promptTokens": 8, "outputTokens": 8, "batchSize": 1,
                   "repeats": 20, "base": stats | {"tpotP95Ms": 10.0},
                   "adapter": stats | {"tpotP95Ms": 10.0 * (1 + overhead / 100)}, "tpotOverheadPct": overhead,
                   "tpotOverheadCiPct": overhead_ci}  # fmt: skip
    modules = config.split("+") if config else []
    return TrialResult.model_validate(
        {"ablation": "s", "trial": f"{dataset}-{config or 'base'}-{seed}", "dataset": dataset, "modules": modules,
         "rank": 8 if config else 0, "variant": "lora" if config else "none", "seed": seed if config else None,
         "trainableParams": PARAMS.get(config, 0), "latency": latency,
         "eval": {"metric": "exact_match", "score": score, "samples": 100}}
    )  # fmt: skip


def seeded(table: dict[str, dict[str, list[float]]], overheads: dict[str, list[float]] | None = None):
    results = []
    for dataset, configs in table.items():
        results.append(trial(dataset, None, None, 0.1, overhead=0.0 if overheads else None))
        for config, scores in configs.items():
            for seed, score in enumerate(scores, start=1):
                over = overheads[config][seed - 1] if overheads else None
                results.append(trial(dataset, config, seed, score, over))
    return results


def by(summary, name):
    return next(c for c in summary.configs if c.config == f"{name} r8 lora")


# o_proj and all overlap (their seeds spread over each other); qkv is clearly worse.
SPREAD = {
    "reverse": {"all": [0.80, 0.86, 0.83], "o_proj": [0.78, 0.85, 0.81], "qkv": [0.50, 0.52, 0.51]},
    "shift": {"all": [0.70, 0.75, 0.72], "o_proj": [0.69, 0.74, 0.73], "qkv": [0.40, 0.42, 0.44]},
}


def test_overlapping_intervals_tie_and_the_recommendation_says_no_winner():
    summary = summarize(seeded(SPREAD), "s", tolerance=0.0)
    assert summary.seeds == 3
    top, second, third = summary.configs
    assert (top.config, second.config, third.config) == ("all r8 lora", "o_proj r8 lora", "qkv r8 lora")
    assert (top.position, second.position, third.position) == (1, 1, 3)
    assert top.tied_with_next and not second.tied_with_next
    assert top.score_ci_low < second.mean_score < top.mean_score < second.score_ci_high
    rec = summary.recommendation
    assert rec.accuracy_first == "all r8 lora" and rec.tied == ["all r8 lora", "o_proj r8 lora"]
    assert rec.cheapest_tied == "o_proj r8 lora"  # 1K trainable parameters vs 20K, no latency measured
    assert rec.balanced == "o_proj r8 lora", "tolerance 0, yet the tie admits it"
    assert rec.rationale.startswith("No winner at 95% over 3+ seeds: all r8 lora, o_proj r8 lora")
    text = render_text(summary)
    assert "No winner: all r8 lora, o_proj r8 lora are tied with the best" in text
    assert "1=  all r8 lora" in text and "1=  o_proj r8 lora" in text and "\n3   qkv r8 lora" in text
    assert "0.830 ±0.075" in text  # reverse, all: sd 0.03 over 3 seeds
    assert "positions marked `=` are tied" in render_markdown(summary)


def test_separable_configurations_are_ranked_and_a_winner_is_named():
    tight = {d: {"all": [s + 0.2 for s in runs["o_proj"]], "o_proj": runs["o_proj"]} for d, runs in SPREAD.items()}
    summary = summarize(seeded(tight), "s", tolerance=0.0)
    assert [c.position for c in summary.configs] == [1, 2]
    assert summary.recommendation.tied == ["all r8 lora"] and summary.recommendation.cheapest_tied is None
    assert "is ahead of every other configuration beyond its 95% interval" in summary.recommendation.rationale


def test_one_seed_ranks_as_before_and_says_it_has_no_intervals():
    single = {d: {c: s[:1] for c, s in configs.items()} for d, configs in SPREAD.items()}
    summary = summarize(seeded(single), "s", tolerance=0.0)
    assert [c.position for c in summary.configs] == [1, 2, 3]
    assert all(c.score_ci_low is None and not c.tied_with_next for c in summary.configs)
    assert summary.recommendation.balanced == "all r8 lora" and summary.recommendation.tied == ["all r8 lora"]
    assert any("one seed per configuration" in note for note in summary.notes)


def test_a_latency_overhead_inside_its_noise_is_labelled_so_everywhere():
    overheads = {"all": [12.0, 14.0, 13.0], "o_proj": [2.0, -3.0, 4.0], "qkv": [5.0, 6.0, 5.5]}
    summary = summarize(seeded(SPREAD, overheads), "s", tolerance=0.0)
    o_proj, all_ = by(summary, "o_proj"), by(summary, "all")
    assert o_proj.latency_within_noise and not all_.latency_within_noise
    assert o_proj.tpot_ci_ms > 0
    assert "within noise" in next(line for line in render_text(summary).splitlines() if "o_proj r8 lora" in line)
    assert "within noise" in render_markdown(summary)
    assert summary.recommendation.balanced == "o_proj r8 lora"  # tied on score, faster beyond noise


def test_a_latency_gap_inside_the_noise_is_not_claimed_and_params_decide():
    table = {"d": {"o_proj": [0.80, 0.82, 0.81], "qkv": [0.79, 0.83, 0.80]}}
    overheads = {"o_proj": [3.0, 9.0, 6.0], "qkv": [2.0, 8.0, 5.0]}  # qkv 1 point faster, noise ~7 points
    rec = summarize(seeded(table, overheads), "s", tolerance=0.0).recommendation
    assert rec.balanced == "o_proj r8 lora" and "fewest trainable parameters (1000)" in rec.rationale


scores = st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(st.lists(scores, min_size=1, max_size=6))
def test_tie_positions_never_order_what_overlaps(groups):
    intervals = [mean_interval(g) for g in groups]
    positions = tie_positions(intervals)
    best = max(range(len(intervals)), key=lambda i: intervals[i].mean)
    assert positions[best] == 1 and all(1 <= p <= len(intervals) for p in positions)
    for i, a in enumerate(intervals):
        for j, b in enumerate(intervals):
            if separable(a, b):
                assert positions[i] < positions[j]
            if a.known and b.known and a.low <= b.high and b.low <= a.high:  # overlapping: neither is above
                assert not separable(a, b) and not separable(b, a)


@settings(max_examples=60, deadline=None)
@given(scores, st.floats(-0.5, 0.5, allow_nan=False))
def test_an_interval_holds_its_mean_and_moves_with_a_shift(values, shift):
    interval = mean_interval(values)
    assert interval.low <= interval.mean <= interval.high
    moved = mean_interval([v + shift for v in values])
    assert moved.mean == pytest.approx(interval.mean + shift, abs=1e-9)
    assert (moved.half_width is None) == (interval.half_width is None)
    if interval.half_width is not None:
        assert moved.half_width == pytest.approx(interval.half_width, abs=1e-7)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.floats(0, 1, allow_nan=False), min_size=2, max_size=5), min_size=1, max_size=5))
@example([[0.0, 1.8115723392202683e-111]])  # a variance whose square underflows to zero
def test_mean_of_means_is_no_wider_than_its_widest_part(parts):
    import statistics

    stats = [(statistics.fmean(p), statistics.stdev(p), len(p)) for p in parts]
    combined = mean_of_means(stats)
    widest = max(mean_interval(p).half_width for p in parts)
    assert combined.half_width <= widest + 1e-9
    assert Interval(combined.mean, combined.half_width, combined.n).known


def test_plots_draw_error_bars_and_label_latency_within_noise(tmp_path):
    pytest.importorskip("matplotlib")
    from lora_ablation.summary.plots import pareto_figure, write_plots

    overheads = {"all": [12.0, 14.0, 13.0], "o_proj": [2.0, -3.0, 4.0], "qkv": [5.0, 6.0, 5.5]}
    summary = summarize(seeded(SPREAD, overheads), "s", tolerance=0.0)
    ax = pareto_figure(summary).axes[0]
    labels = {text.get_text() for text in ax.texts}
    assert {"o_proj (overhead within noise)", "all", "qkv"} <= labels
    assert len(ax.containers) == 3, "one error bar (score and latency interval) per configuration"
    assert "95% intervals" in ax.get_xlabel()
    paths = write_plots(summary, tmp_path)
    # No result carries a curve, so no curves.png; in all, o_proj and qkv alone, qkv + o_proj - fc1 is 1 everywhere
    # (and fc1 is fc2): no effect is separable from the dataset means, so no effects.png.
    assert [p.name for p in paths] == ["pareto.png", "heatmap.png"]
    assert all(e.estimate is None for e in summary.effects.effects)
    assert all(p.stat().st_size > 0 for p in paths)


def test_merged_timing_serving_facts_and_latency_noise_are_reported():
    results = seeded({"d": {"o_proj": [0.8, 0.82, 0.81]}}, {"o_proj": [4.0, 6.0, 5.0]})
    dora = trial("d", "o_proj", 1, 0.7, overhead=30.0, overhead_ci=2.0)
    dora = dora.model_copy(update={"variant": "dora", "trial": "d-dora"})
    results.append(dora)
    for r in results:
        if r.latency:
            r.latency.base.tpot_cv_pct = 3.5
            if r.variant != "none":
                r.latency.merged_tpot_overhead_pct, r.latency.merged_tpot_overhead_ci_pct = 0.4, 1.5
    results[1].adapter_effect = {"prompts": 8, "maxLogitDelta": 0.0, "unchanged": True}
    results[1] = TrialResult.model_validate(results[1].to_wire())
    summary = summarize(results, "s")
    lora, dora_summary = by(summary, "o_proj"), next(c for c in summary.configs if c.variant == "dora")
    assert lora.merged_overhead_pct == pytest.approx(0.4) and lora.merged_within_noise
    assert "vllm-project/vllm#10849" in dora_summary.serving_notes[0]
    assert "leaves the outputs unchanged on the eval prompts in 1 of 3" in lora.serving_notes[0]
    assert summary.latency_cv_pct == 3.5
    text = render_text(summary)
    assert "MERGED" in text and "+0.4% ±1.5 within noise" in text
    assert "Latency noise: base-model TPOT varies 3.5%" in text
    assert "o_proj r8 dora: DoRA: vLLM cannot serve DoRA adapters unmerged" in text


def test_a_tie_among_hundreds_stays_within_the_status_limits():
    configs = {f"o_proj+x{i}": [0.80, 0.86, 0.83] for i in range(120)}
    summary = summarize(seeded({"d": configs}), "s", tolerance=0.0)
    rec = summary.recommendation
    assert len(rec.tied) == 100 and "and 110 more" in rec.rationale and len(rec.rationale) < 2000
