"""Feed the seed study's published table (Nova 2.0 Lite, seven datasets) into the summary and check that
the conclusions it draws are the study's key findings. Scores are fractions; the table gave percents."""

from __future__ import annotations

import pytest

from lora_ablation.api.trial import TrialResult
from lora_ablation.summary.build import summarize

# Seed 000, "Ablation study for target module selection": dataset -> (baseline, {config: score}).
SEED_TABLE: dict[str, tuple[float, dict[str, float]]] = {
    "fincot": (72.12, {"qkv": 67.09, "o_proj": 68.30, "fc1": 75.35, "fc2": 60.24, "o_proj+fc1": 61.38,
                       "qkv+fc2": 60.31, "o_proj+fc2": 62.79, "qkv+fc1": 68.37, "all": 66.15}),
    "cocohd": (45.14, {"qkv": 19.64, "o_proj": 65.88, "fc1": 41.96, "fc2": 17.62, "o_proj+fc1": 76.83,
                       "qkv+fc2": 66.47, "o_proj+fc2": 79.14, "qkv+fc1": 45.45, "all": 82.75}),
    "govreport": (38.90, {"o_proj": 41.25, "fc1": 39.69, "o_proj+fc1": 41.74, "o_proj+fc2": 42.16,
                          "qkv+fc1": 41.66, "qkv+fc2": 39.02, "all": 41.95}),
    "llava-cot": (16.22, {"qkv": 64.26, "o_proj": 64.26, "fc1": 65.92, "fc2": 65.02, "o_proj+fc1": 63.21,
                          "qkv+fc2": 62.76, "o_proj+fc2": 66.37, "qkv+fc1": 66.52, "all": 63.96}),
    "invoice-ocr": (14.10, {"o_proj": 89.07, "o_proj+fc1": 90.03, "qkv+fc2": 87.84, "o_proj+fc2": 89.47,
                            "qkv+fc1": 88.55, "all": 90.11}),
    "medreason": (1.68, {"o_proj": 24.55, "o_proj+fc1": 20.88, "qkv+fc2": 8.39, "o_proj+fc2": 20.36,
                         "qkv+fc1": 4.32, "all": 26.72}),
    "medmcqa": (1.68, {"qkv": 62.18, "o_proj": 63.10, "fc1": 12.90, "fc2": 59.98, "o_proj+fc1": 61.39,
                       "qkv+fc2": 65.63, "o_proj+fc2": 64.95, "qkv+fc1": 57.21, "all": 66.11}),
}  # fmt: skip
SEED_TPOT_P95_MS = {"o_proj": 7.803, "o_proj+fc2": 10.085}  # the only latencies the study published
ASSUMED_BASE_TPOT_MS = 7.0  # not published; any value works, the comparison is relative
SINGLE = ["qkv", "o_proj", "fc1", "fc2"]


def _result(dataset: str, config: str | None, percent: float) -> TrialResult:
    modules = config.split("+") if config else []
    latency = None
    if config in SEED_TPOT_P95_MS:
        stats = dict.fromkeys(("ttftP50Ms", "ttftP95Ms", "tpotP50Ms"), 1.0)
        adapter, base = stats | {"tpotP95Ms": SEED_TPOT_P95_MS[config]}, stats | {"tpotP95Ms": ASSUMED_BASE_TPOT_MS}
        overhead = (SEED_TPOT_P95_MS[config] / ASSUMED_BASE_TPOT_MS - 1) * 100
        latency = {"device": "seed", "dtype": "bf16", "promptTokens": 1, "outputTokens": 2, "batchSize": 1,
                   "repeats": 1, "base": base, "adapter": adapter, "tpotOverheadPct": overhead}  # fmt: skip
    return TrialResult.model_validate(
        {
            "ablation": "seed",
            "trial": f"{dataset}-{config or 'base'}",
            "dataset": dataset,
            "modules": modules,
            "rank": 16 if config else 0,
            "variant": "lora" if config else "none",
            "latency": latency,
            "eval": {"metric": "accuracy", "score": percent / 100, "samples": 100},
        }
    )


def seed_results() -> list[TrialResult]:
    out = []
    for dataset, (baseline, scores) in SEED_TABLE.items():
        out.append(_result(dataset, None, baseline))
        out.extend(_result(dataset, config, score) for config, score in scores.items())
    return out


def planned() -> list[tuple[str, str]]:
    every = {c for _, scores in SEED_TABLE.values() for c in scores}
    return [(d, f"{c} r16 lora") for d in SEED_TABLE for c in sorted(every)]


@pytest.fixture(scope="module")
def summary():
    return summarize(seed_results(), "seed", tolerance=0.02, planned=planned())


def by_config(summary, name):
    return next(c for c in summary.configs if c.config == f"{name} r16 lora")


def test_o_proj_is_the_most_robust_single_target(summary):
    """Finding 1: of the single modules, o_proj has the smallest worst-case gap and the best mean rank."""
    singles = [by_config(summary, n) for n in SINGLE]
    assert min(singles, key=lambda c: c.worst_gap).config == "o_proj r16 lora"
    assert min(singles, key=lambda c: c.mean_rank).config == "o_proj r16 lora"
    # ...and it is the only single module measured on every dataset.
    assert [c.config for c in singles if c.complete] == ["o_proj r16 lora"]


def test_qkv_only_is_unstable(summary):
    """Finding 2: qkv-only falls below the baseline on CoCoHD, and its worst gap dwarfs o_proj's."""
    cocohd = next(t for t in summary.datasets if t.name == "cocohd")
    qkv_cell = next(c for c in cocohd.cells if c.config == "qkv r16 lora")
    assert qkv_cell.delta_vs_baseline < 0
    assert by_config(summary, "qkv").worst_gap > 3 * by_config(summary, "o_proj").worst_gap


def test_combinations_give_modest_gains(summary):
    """Finding 3: the best configuration's mean beats o_proj-only by a few points, not tens."""
    best = summary.configs[0]
    assert (best.config != "o_proj r16 lora" and "+" in best.config) or best.config.startswith("all")
    assert 0 < best.mean_score - by_config(summary, "o_proj").mean_score < 0.05


def test_lora_beats_the_base_model_except_on_fincot(summary):
    """Finding 5: on every dataset but FinCOT most configurations beat the base; on FinCOT only fc1 does."""
    for table in summary.datasets:
        above = [c.config for c in table.cells if c.delta_vs_baseline > 0]
        if table.name == "fincot":
            assert above == ["fc1 r16 lora"]
        else:
            assert len(above) > len(table.cells) / 2, table.name


def test_o_proj_within_two_points_of_o_proj_fc2_and_22_6_percent_faster(summary):
    """The conclusion: o_proj is within 2% of o_proj+fc2 on average with 22.6% lower TPOT p95."""
    o_proj, o_proj_fc2 = by_config(summary, "o_proj"), by_config(summary, "o_proj+fc2")
    assert 0 < o_proj_fc2.mean_score - o_proj.mean_score <= 0.02
    assert 1 - o_proj.tpot_p95_ms / o_proj_fc2.tpot_p95_ms == pytest.approx(0.226, abs=0.0005)


def test_recommendations_match_the_study():
    """Accuracy-first picks the best mean; balanced picks o_proj once the tolerance admits its ~3-point gap
    to the best (the study's 'excellent default'), and o_proj+fc2 under a tighter 2-point tolerance."""
    loose = summarize(seed_results(), "seed", tolerance=0.035, planned=planned())
    assert loose.recommendation.accuracy_first == "all r16 lora"
    assert loose.recommendation.balanced == "o_proj r16 lora"
    assert "o_proj r16 lora" in loose.recommendation.rationale
    tight = summarize(seed_results(), "seed", tolerance=0.02, planned=planned())
    assert tight.recommendation.balanced == "o_proj+fc2 r16 lora"
    budget = summarize(seed_results(), "seed", tolerance=0.035, latency_budget_ms=5.0, planned=planned())
    assert budget.recommendation.balanced is None and "latencyBudgetMs" in budget.recommendation.rationale


def test_missing_configurations_are_named(summary):
    govreport = next(t for t in summary.datasets if t.name == "govreport")
    assert govreport.missing == ["fc2 r16 lora", "qkv r16 lora"]
    fc1 = by_config(summary, "fc1")
    assert not fc1.complete and fc1.missing_datasets == ["invoice-ocr", "medreason"]
    assert any("lack results on some datasets" in note for note in summary.notes)
    assert all(c.complete for c in summary.configs[:6]) and not any(c.complete for c in summary.configs[6:])


def test_pareto_front_of_timed_configurations(summary):
    assert set(summary.pareto_front) == {"o_proj r16 lora", "o_proj+fc2 r16 lora"}
