"""Trial files are evidence, not authority: result.json, stage-one.json and failure.json are written by trial images,
so a result is credited to the configuration the plan ran, every figure is bounded, and whatever a file says is
shown escaped (summary.md) or as bounded plain text (status, events, plots)."""

from __future__ import annotations

import json
import logging
import math

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import minimal_manifest
from lora_ablation.api.bounds import MAX_SCORE, MAX_SECONDS
from lora_ablation.api.resource import parse_spec
from lora_ablation.api.trial import TrialResult
from lora_ablation.planning.plan import plan_trials
from lora_ablation.run.budget import costs
from lora_ablation.run.schedule import eliminate
from lora_ablation.storage.open import open_store
from lora_ablation.storage.results import (
    labelled,
    read_all_results,
    read_failure,
    read_result,
    read_stage_one,
)
from lora_ablation.summary.build import leaderboard, result_label, summarize
from lora_ablation.summary.report import render_markdown, render_text

STATS = {"ttftP50Ms": 10.0, "ttftP95Ms": 12.0, "tpotP50Ms": 5.0, "tpotP95Ms": 6.0, "tpotCvPct": 2.0}
MODULES = [["o_proj"], ["fc2"], ["qkv"]]


def result_doc(trial: str, index: int = 0) -> dict:
    return {
        "ablation": "demo", "namespace": "ns", "trial": trial, "dataset": "med", "modules": MODULES[index % 3],
        "rank": 16, "alpha": 32.0, "variant": "lora", "seed": 1, "layers": "all",
        "eval": {"metric": "eval_loss", "score": 0.5 + index / 10, "samples": 10, "evalLoss": 1.2, "details": {"k": 1}},
        "train": {"steps": 4, "tokens": 100, "seconds": 2.0, "tokensPerSecond": 50.0, "lossCurve": [1.0, 0.9]},
        "latency": {"device": "cpu", "dtype": "float32", "promptTokens": 8, "outputTokens": 8, "batchSize": 1,
                    "repeats": 3, "base": STATS, "adapter": STATS | {"tpotP95Ms": 6.0 + index},
                    "tpotOverheadPct": 5.0 + index, "tpotOverheadCiPct": 1.0},
        "adapterEffect": {"prompts": 4, "maxLogitDelta": 0.5, "unchanged": False},
        "environment": {"torch": "2.5.1"}, "computeSeconds": 3.0, "gpuSeconds": 3.0, "cpuSeconds": 2.0,
        "targetedModuleNames": ["model.layers.0.self_attn.o_proj"], "finishedAt": "2026-01-01T00:00:00Z",
    }  # fmt: skip


def stage_one_doc(trial: str, **figures) -> dict:
    valid = {"trial": trial, "dataset": "med", "step": 1, "steps": 4, "metric": "eval_loss", "score": -1.5,
             "samples": 5, "evalLoss": 1.5, "lossLast": 1.4, "computeSeconds": 1.0, "gpuSeconds": 1.0}  # fmt: skip
    return valid | figures


def failure_doc(trial: str) -> dict:
    return {"trial": trial, "message": "CUDA out of memory", "exitCode": 42, "finishedAt": "2026-01-01T00:00:00Z"}


def planned(**search):
    spec = parse_spec(minimal_manifest(search={"moduleSets": [["o_proj"], ["o_proj", "fc2"]], **search})["spec"])
    plan = plan_trials("demo", "ns", spec)
    return spec, plan, {t.name: t for t in plan.trials}


def store_at(path):
    return open_store(f"file://{path}")


def test_a_result_claiming_another_configuration_is_credited_to_the_planned_one(tmp_path):
    _, plan, by_name = planned()
    store = store_at(tmp_path)
    ran = next(t for t in plan.trials if t.label == "o_proj r16 lora")
    claim = result_doc(ran.name) | {"modules": ["o_proj", "fc2"], "rank": 64, "alpha": 1.0, "variant": "dora",
                                    "dataset": "other", "seed": 99, "layers": "lastHalf"}  # fmt: skip
    claim["eval"] |= {"metric": "accuracy", "score": 0.9}
    store.write_json(f"{ran.name}/result.json", claim)

    result = read_result(store, ran.name, planned=by_name).result
    assert result is not None and result.eval.score == 0.9  # the score is the evidence, and is kept
    identity = (result.dataset, result.modules, result.rank, result.alpha, result.variant, result.layers, result.seed)
    assert identity == ("med", ["o_proj"], 16, 32.0, "lora", "all", ran.seed)
    assert result.eval.metric == "eval_loss"  # the dataset spec's metric
    summary = summarize([result], "demo", "ns", planned=[(t.spec.dataset.name, t.label) for t in plan.trials])
    assert [c.config for c in summary.configs] == ["o_proj r16 lora"]
    assert summary.datasets[0].missing == ["o_proj+fc2 r16 lora"]
    # Without the plan the file's own claim stands: what `planned` is for.
    assert result_label(read_result(store, ran.name).result) == "o_proj+fc2 r64 dora layers=lastHalf"
    assert [r.modules for r in read_all_results(store, planned=by_name)] == [["o_proj"]]


def test_files_of_trials_the_plan_does_not_have_are_not_read(tmp_path, caplog):
    _, _, by_name = planned()
    store = store_at(tmp_path)
    store.write_json("stranger/result.json", result_doc("stranger"))
    store.write_json("stranger/stage-one.json", stage_one_doc("stranger"))
    store.write_json("stranger/failure.json", failure_doc("stranger"))
    read = read_result(store, "stranger", planned=by_name)
    assert read.result is None and "not a result of a planned trial" in read.problem
    with caplog.at_level(logging.WARNING):
        assert read_stage_one(store, "stranger", planned=by_name) is None
        assert read_failure(store, "stranger", planned=by_name) is None
    assert read_all_results(store, planned=by_name) == [] and len(read_all_results(store)) == 1


def test_labelled_refuses_another_trials_result():
    _, plan, _ = planned()
    result = TrialResult.model_validate(result_doc("someone-else"))
    with pytest.raises(ValueError, match="is not trial"):
        labelled(result, plan.trials[1])


def test_stage_one_is_relabelled_and_failure_messages_come_back_as_one_plain_line(tmp_path):
    _, plan, by_name = planned()
    store = store_at(tmp_path)
    trial = plan.trials[1]
    store.write_json(f"{trial.name}/stage-one.json", stage_one_doc(trial.name, dataset="other", metric="accuracy"))
    store.write_json(f"{trial.name}/failure.json", failure_doc(trial.name) | {"message": "oom\n\x1b[2Jgone\u202e"})
    stage_one = read_stage_one(store, trial.name, planned=by_name)
    assert (stage_one.dataset, stage_one.metric) == ("med", "eval_loss")
    assert read_failure(store, trial.name).message == "oom [2Jgone"


def test_a_stage_one_score_of_1e308_reads_as_none_and_nothing_downstream_overflows(tmp_path, caplog):
    spec, plan, by_name = planned(seeds=[1, 2], earlyStopping={"minConfigurations": 2})
    store = store_at(tmp_path)
    trained = [t for t in plan.trials if not t.spec.is_baseline]
    store.write_json(f"{trained[0].name}/stage-one.json", stage_one_doc(trained[0].name, score=1e308))
    store.write_json(f"{trained[1].name}/failure.json", failure_doc(trained[1].name) | {"exitCode": 10**400})
    with caplog.at_level(logging.WARNING):
        assert read_stage_one(store, trained[0].name) is None
        assert read_failure(store, trained[1].name) is None
    assert "stage-one.json" in caplog.text and "failure.json" in caplog.text
    # At the bounds themselves, the elimination's means (fsum) and the budget's sums stay finite.
    for trial in trained:
        extreme = stage_one_doc(trial.name, score=MAX_SCORE, evalLoss=MAX_SCORE, computeSeconds=MAX_SECONDS)
        store.write_json(f"{trial.name}/stage-one.json", extreme)
    stage_ones = {t.name: read_stage_one(store, t.name, planned=by_name) for t in trained}
    assert all(stage_ones.values())
    out = eliminate(plan, spec, stage_ones)
    assert out.decided == {"med"} and all(math.isfinite(s) for s in out.scores["med"].values())
    spent = costs({}, stage_ones)
    assert math.isfinite(spent.spent) and math.isfinite(spent.stage_one)


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    "field, raw",
    [("trainableParams", str(10**400)), ("extra", str(-(10**400))), ("extra", _deep(600)),
     ("dataset", '"\\ud800"'), ("modules", json.dumps(["m" * 129])), ("computeSeconds", "1e10"),
     ("rank", "1e400")],
)  # fmt: skip
def test_hostile_figures_in_result_json_are_a_problem_never_an_exception(tmp_path, field, raw):
    store = store_at(tmp_path)
    text = json.dumps(result_doc("t") | {field: "__RAW__"}).replace('"__RAW__"', raw)
    store.write_text("t/result.json", text)
    read = read_result(store, "t")
    assert read.result is None and read.problem


def test_the_status_parts_of_a_summary_of_big_results_stay_under_a_mebibyte():
    results = []
    for i in range(100):  # 100 configurations (the largest leaderboard), each with the biggest module set allowed
        doc = result_doc(f"t{i}", i) | {"modules": [f"{i:03d}{j:02d}" + "m" * 123 for j in range(32)]}
        doc["eval"]["score"] = i / 1000
        results.append(TrialResult.model_validate(doc))
    summary = summarize(results, "demo", "ns")
    status = {"bestConfig": summary.configs[0].config, "paretoFront": summary.pareto_front,
              "leaderboard": [e.to_wire() for e in leaderboard(summary, 100)],
              "recommendation": summary.recommendation.to_wire()}  # fmt: skip
    assert len(json.dumps(status).encode()) < 1024 * 1024
    assert max(len(c.config) for c in summary.configs) <= 256


HOSTILE_TEXT = st.sampled_from(
    ["<img src=x onerror=alert(1)>", "<script>alert(1)</script>", "<IMG SRC=x>", "x" * 5000, "a\nb\x1b[2J",
     "\u202e", "\ud800", "[x](javascript:alert(1))", "![i](http://e/p.png)", "a|b`c`", "$\\frac{$", "base"]
)  # fmt: skip
HUGE = st.sampled_from([1e308, -1e308, 10**400, -(10**30), 1e16, MAX_SCORE * 1.01, MAX_SECONDS * 2, -1.0, 0, 2**63])
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20), HOSTILE_TEXT, HUGE)
JUNK = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)  # fmt: skip
DEEP = "__DEEP__"


def _paths(node, prefix=()):
    """Every place in a document a value can be replaced, and a new key under each mapping."""
    if isinstance(node, dict):
        yield (*prefix, "unknownField")
        for key, value in node.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield (*prefix, index)
            yield from _paths(value, (*prefix, index))


SHORT_HOSTILE = HOSTILE_TEXT.filter(lambda text: len(text) < 64)


def plausible(current) -> st.SearchStrategy:
    """A value of the same kind as `current` that the bounds may still admit: hostile text where text goes, numbers
    in the bounds (now and then just past them) where numbers go."""
    if isinstance(current, str):
        return SHORT_HOSTILE
    if isinstance(current, bool) or current is None:
        return st.just(current)
    if isinstance(current, (int, float)):
        return st.one_of(st.integers(0, 1000), st.floats(0, 1000), st.floats(-MAX_SCORE, MAX_SCORE), HUGE)
    if isinstance(current, list):
        return st.lists(plausible(current[0]) if current else SHORT_HOSTILE, max_size=3)
    return st.just(current)  # a section (eval, latency...): its own values are replaced instead


@st.composite
def documents(draw, valid: dict, wild: bool = True) -> str:
    """A trial file's text: a valid document with a few values replaced by values of their kind (hostile text,
    numbers near the bounds) that may still read as valid; `wild`, also any JSON, and replacements by huge numbers,
    long strings, nested junk or nesting deeper than the checks go."""
    if wild and draw(st.integers(0, 4)) == 0:
        return json.dumps(draw(JUNK))
    doc = json.loads(json.dumps(valid))
    paths = list(_paths(doc))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(paths))
        node = doc
        try:
            for key in path[:-1]:
                node = node[key]
            current = node[path[-1]] if not isinstance(node, dict) or path[-1] in node else None
            anything = st.one_of(HOSTILE_TEXT, HUGE, JUNK, st.just(DEEP))
            node[path[-1]] = draw(st.one_of(plausible(current), anything) if wild else plausible(current))
        except (KeyError, IndexError, TypeError):  # an earlier replacement took this path away
            continue
    return json.dumps(doc).replace(f'"{DEEP}"', _deep(draw(st.sampled_from([50, 400, 900, 3000]))))


def any_document(valid: dict) -> st.SearchStrategy:
    return st.one_of(documents(valid), documents(valid, wild=False))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(any_document(result_doc("t0")), min_size=1, max_size=3), any_document(stage_one_doc("t0")),
       any_document(failure_doc("t0")))  # fmt: skip
def test_any_trial_file_reads_without_raising_and_renders_escaped(tmp_path_factory, results, stage_one, failure):
    store = store_at(tmp_path_factory.mktemp("store"))
    for index, text in enumerate(results):  # each in its own trial folder, named as the document names it
        store.write_text(f"t{index}/result.json", text.replace('"t0"', f'"t{index}"'))
    store.write_text("t0/stage-one.json", stage_one)
    store.write_text("t0/failure.json", failure)
    read_stage_one(store, "t0")
    read_failure(store, "t0")
    reads = [read_result(store, f"t{index}") for index in range(len(results))]
    assert all((r.result is None) == bool(r.problem) for r in reads)
    valid = [r.result for r in reads if r.result is not None]
    event(f"{len(valid)} valid")
    if not valid:
        return
    summary = summarize(valid, valid[0].ablation, valid[0].namespace)  # as `report` does: no plan at hand
    markdown = render_markdown(summary).lower()
    assert "<img" not in markdown and "<script" not in markdown
    render_text(summary).encode("utf-8")
    json.dumps(summary.to_wire(), ensure_ascii=False, allow_nan=False).encode("utf-8")  # summary.json is writable


@pytest.mark.filterwarnings("ignore:Tight layout not applied")
def test_plots_draw_labels_from_trial_files_as_plain_text(tmp_path):
    pytest.importorskip("matplotlib")
    from lora_ablation.summary.plots import heatmap_plot, pareto_figure

    hostile = ["$\\frac{$", "a\nb\x1b[2J" + "x" * 100, "$x$"]  # mathtext that cannot parse, a control sequence
    docs = [result_doc(f"t{i}", i) | {"modules": [name], "dataset": "$d", "ablation": "$a"} for i, name in
            enumerate(hostile)]  # fmt: skip
    summary = summarize([TrialResult.model_validate(d) for d in docs], "$a$", "ns")
    figure = pareto_figure(summary)
    figure.canvas.draw()  # mathtext is parsed when text is drawn
    texts = [t.get_text() for t in figure.findobj(lambda a: hasattr(a, "get_text"))]
    assert all("\n" not in t and "\x1b" not in t and len(t) < 200 for t in texts)
    assert heatmap_plot(summary, tmp_path / "heatmap.png").is_file()
