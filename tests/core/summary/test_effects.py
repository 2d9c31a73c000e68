"""Factorial effects: the seed study's table through the summary, checked against a statsmodels formula fit of the
same model; what the grid cannot separate is said, not numbered; the status, summary.md and the plot show them."""

from __future__ import annotations

import pytest
from test_summary_seed import SEED_TABLE, planned, seed_results

from lora_ablation.api.status import LoraAblationStatus
from lora_ablation.api.trial import TrialResult
from lora_ablation.summary.build import summarize
from lora_ablation.summary.effects import MAX_FACTOR_COLUMNS, Observation, factorial_effects
from lora_ablation.summary.effects_view import beyond_noise, effects_table
from lora_ablation.summary.models import Summary
from lora_ablation.summary.report import render_markdown, render_text

GROUPS = ("qkv", "o_proj", "fc1", "fc2")


@pytest.fixture(scope="module")
def seed_summary() -> Summary:
    return summarize(seed_results(), "seed", tolerance=0.02, planned=planned())


def effect(summary: Summary, term: str):
    return next(e for e in summary.effects.effects if e.term == term)


def _seed_frame():
    pandas = pytest.importorskip("pandas")
    rows = []
    for dataset, (_, scores) in SEED_TABLE.items():
        for config, percent in scores.items():
            present = set(GROUPS) if config == "all" else set(config.split("+"))
            rows.append({"dataset": dataset, "score": percent / 100, **{g: float(g in present) for g in GROUPS}})
    return pandas.DataFrame(rows)


def test_main_effects_match_a_statsmodels_formula_fit_of_the_seed_table(seed_summary):
    smf = pytest.importorskip("statsmodels.formula.api")
    fit = smf.ols("score ~ C(dataset) + qkv + o_proj + fc1 + fc2", data=_seed_frame()).fit()
    low_high = fit.conf_int(alpha=0.05)
    assert seed_summary.effects.observations == 55 and seed_summary.effects.residual_df == int(fit.df_resid) == 44
    for group in GROUPS:
        mine = effect(seed_summary, group)
        assert mine.kind == "main" and mine.separable
        assert mine.estimate == pytest.approx(fit.params[group], abs=1e-9)
        assert mine.std_error == pytest.approx(fit.bse[group], abs=1e-9)
        assert (mine.ci_low, mine.ci_high) == pytest.approx(tuple(low_high.loc[group]), abs=1e-9)
        assert mine.p_value == pytest.approx(fit.pvalues[group], abs=1e-9)


def test_interactions_and_holm_match_statsmodels(seed_summary):
    """The interaction model keeps the four best-supported pairs (qkv x o_proj and fc1 x fc2 are aliased); its
    figures and the Holm adjustment over all eight tests are statsmodels' to 1e-9."""
    smf = pytest.importorskip("statsmodels.formula.api")
    from statsmodels.stats.multitest import multipletests

    pairs = {"qkv x fc1": "qkv:fc1", "qkv x fc2": "qkv:fc2", "o_proj x fc1": "o_proj:fc1", "o_proj x fc2": "o_proj:fc2"}
    formula = "score ~ C(dataset) + qkv + o_proj + fc1 + fc2 + " + " + ".join(pairs.values())
    fit = smf.ols(formula, data=_seed_frame()).fit()
    assert seed_summary.effects.interaction_residual_df == int(fit.df_resid) == 40
    for term, name in pairs.items():
        mine = effect(seed_summary, term)
        assert mine.estimate == pytest.approx(fit.params[name], abs=1e-9)
        assert mine.std_error == pytest.approx(fit.bse[name], abs=1e-9)
        assert (mine.ci_low, mine.ci_high) == pytest.approx(tuple(fit.conf_int(alpha=0.05).loc[name]), abs=1e-9)
        assert mine.p_value == pytest.approx(fit.pvalues[name], abs=1e-9)
    tested = [e for e in seed_summary.effects.effects if e.p_value is not None]
    reject, adjusted, _, _ = multipletests([e.p_value for e in tested], alpha=0.05, method="holm")
    assert [e.p_holm for e in tested] == pytest.approx(list(adjusted), abs=1e-12)
    assert [e.beyond_noise for e in tested] == list(reject)


def test_the_seed_table_says_o_proj_is_the_effect_beyond_noise(seed_summary):
    """The study's finding 1 as a test: o_proj is the one module whose presence helps beyond noise (Holm)."""
    o_proj = effect(seed_summary, "o_proj")
    assert o_proj.estimate > 0.1 and o_proj.ci_low > 0 and o_proj.p_holm < 0.05 and o_proj.beyond_noise
    assert [e.term for e in seed_summary.effects.effects if e.beyond_noise] == ["o_proj"]
    # Holm over every tested effect: each adjusted p is at least its raw p.
    tested = [e for e in seed_summary.effects.effects if e.p_value is not None]
    assert len(tested) == 8 and all(e.p_holm >= e.p_value for e in tested)


def test_interactions_the_grid_cannot_separate_are_named_not_numbered(seed_summary):
    """qkv+o_proj and fc1+fc2 occur only together (in 'all'): those two interactions are aliased, no number."""
    for term in ("qkv x o_proj", "fc1 x fc2"):
        aliased = effect(seed_summary, term)
        assert not aliased.separable and aliased.estimate is None and aliased.ci_low is None
        assert "cannot separate" in aliased.reason and aliased.aliased_with
    kept = effect(seed_summary, "o_proj x fc2")
    assert kept.separable and kept.ci_low < kept.estimate < kept.ci_high
    assert set(kept.aliased_with) == {"qkv x o_proj", "fc1 x fc2"}  # estimated assuming those are 0
    notes = " ".join(seed_summary.effects.notes)
    assert "rank: one level only" in notes and "variant: one level only" in notes


def _obs(dataset, modules, score, rank=16, variant="lora", layers="all"):
    return Observation(dataset, tuple(modules), rank, variant, layers, score)


def test_single_module_sets_only_confound_presence_with_the_dataset_means():
    """[qkv], [o_proj], [fc1], [fc2]: every configuration has exactly one group, so 'present vs absent' is the
    dataset mean minus the others; no main effect is estimable and the summary says why."""
    observations = tuple(_obs(d, [g], 0.1 * i + 0.01 * j) for j, d in enumerate("ab") for i, g in enumerate(GROUPS))
    effects = factorial_effects(observations)
    assert [e.estimate for e in effects.effects] == [None] * 4
    assert all("the dataset means" in e.reason for e in effects.effects)


def test_rank_and_variant_levels_and_a_zero_df_grid():
    cells = ((16, "lora", 0.001), (32, "lora", -0.002), (16, "dora", 0.0), (32, "dora", 0.003))
    observations = tuple(
        _obs(d, ["o_proj"], base + 0.05 * (rank == 32) + 0.02 * (variant == "dora") + noise, rank, variant)
        for d, base in (("a", 0.5), ("b", 0.3))
        for rank, variant, noise in cells
    )
    effects = factorial_effects(observations)
    rank = next(e for e in effects.effects if e.term == "rank r32 (vs r16)")
    variant = next(e for e in effects.effects if e.term == "variant dora (vs lora)")
    assert rank.estimate == pytest.approx(0.05, abs=0.005) and variant.estimate == pytest.approx(0.02, abs=0.005)
    assert "o_proj: in every module set" in " ".join(effects.notes)
    one_dataset = tuple(o for o in observations if o.dataset == "a")  # 4 scores, 1 + 2 + 1 parameters
    pair = next(e for e in factorial_effects(one_dataset).effects if e.kind == "interaction")
    assert pair.estimate is not None and pair.ci_low is None and "no residual degrees of freedom" in pair.reason


def test_a_grid_of_more_factor_levels_than_one_fit_takes_says_so_and_estimates_nothing():
    """Module sets of many distinct names (what a trial's planned configuration can hold: 32 names each) give more
    levels than the fit takes; the effects are left out with the reason, and the fit is never attempted."""
    names = MAX_FACTOR_COLUMNS + 1
    observations = tuple(_obs("a", [f"m{i}", f"m{(i + 1) % names}"], i / 100) for i in range(names))
    effects = factorial_effects(observations)
    assert effects.effects == [] and effects.observations == names
    assert f"the grid has {names} factor levels" in " ".join(effects.notes)
    fewer = tuple(o for o in observations if "m0" not in o.modules)  # one name fewer: within the cap, fitted
    assert factorial_effects(fewer).effects


def test_effects_are_cached_by_the_results_identity():
    both = ["o_proj", "fc2"]
    scores = (("a", ["o_proj"], 0.5), ("a", both, 0.6), ("b", ["o_proj"], 0.4), ("b", both, 0.45))
    observations = tuple(_obs(d, m, s) for d, m, s in scores)
    assert factorial_effects(observations) is factorial_effects(tuple(observations))
    changed = (*observations[:-1], _obs("b", ["o_proj", "fc2"], 0.46))
    assert factorial_effects(changed) is not factorial_effects(observations)


def test_status_markdown_and_text_show_the_effects(seed_summary):
    lines = beyond_noise(seed_summary.effects)
    assert lines == ["o_proj +0.1235 [+0.0474, +0.1997] Holm p=0.0168"]
    assert len(lines) <= 10
    status = LoraAblationStatus.model_validate({"effects": lines})
    assert status.effects == lines
    markdown = render_markdown(seed_summary)
    assert "## Factorial effects" in markdown and "| o_proj | main | +0.1235 | [+0.0474, +0.1997] |" in markdown
    assert "qkv x o_proj | interaction | - | - |" in markdown
    assert "Effects beyond noise (Holm): o_proj +0.1235" in render_text(seed_summary)
    headers, rows = effects_table(seed_summary.effects, str)
    assert len(rows) == len(seed_summary.effects.effects) and headers[0] == "Effect"
    # summary.json round trip: the effects survive being written and read back.
    again = Summary.model_validate(seed_summary.to_wire())
    assert again.effects == seed_summary.effects


def test_untrusted_terms_are_bounded_in_the_status():
    hostile = "x" * 400
    results = [
        TrialResult.model_validate({"ablation": "s", "trial": f"t{i}", "dataset": d, "modules": m, "rank": 8,
                                    "variant": "lora", "eval": {"metric": "accuracy", "score": s, "samples": 10}})
        for i, (d, m, s) in enumerate((("a", ["o_proj"], 0.1), ("a", ["o_proj", hostile[:128]], 0.9),
                                       ("b", ["o_proj"], 0.1), ("b", ["o_proj", hostile[:128]], 0.91),
                                       ("c", ["o_proj"], 0.12), ("c", ["o_proj", hostile[:128]], 0.9)))
    ]  # fmt: skip
    lines = beyond_noise(summarize(results, "s").effects)
    assert lines and all(len(line) <= 256 for line in lines)
    LoraAblationStatus.model_validate({"effects": lines})


def test_the_effects_plot_shows_each_estimate_and_lists_the_unseparable(seed_summary):
    pytest.importorskip("matplotlib")
    from lora_ablation.summary.plots import effects_figure

    (ax,) = effects_figure(seed_summary).axes
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[-1] == "qkv" and "o_proj x fc2" in labels and "qkv x o_proj" not in labels
    assert "not separable on this grid: qkv x o_proj, fc1 x fc2" in ax.get_xlabel()


def test_datasets_scored_by_different_metrics_are_said_to_pool_units(seed_summary):
    """One coefficient per factor level is fitted over every dataset: with accuracy on some and eval_loss (negative
    nats) on others its size mixes units, and the summary says so where the effects are shown."""
    assert not [n for n in seed_summary.effects.notes if "different metrics" in n]
    results = seed_results()
    first = results[0].dataset
    mixed = [r.model_copy(update={"eval": r.eval.model_copy(update={"metric": "eval_loss"})}) if r.dataset == first
             else r for r in results]  # fmt: skip
    summary = summarize(mixed, "seed", tolerance=0.02, planned=planned())
    (note,) = [n for n in summary.effects.notes if "different metrics" in n]
    assert "accuracy, eval_loss" in note
    assert note in render_markdown(summary)
