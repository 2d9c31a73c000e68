"""The shared schedule (#15): units, the elimination rule, layer subsets in the plan, and the budget's arithmetic."""

from __future__ import annotations

import pytest

from conftest import minimal_manifest
from lora_ablation.api.resource import parse_spec
from lora_ablation.api.stages import StageOneResult
from lora_ablation.modules import layers
from lora_ablation.modules.inventory import catalog_inventory
from lora_ablation.planning.plan import LayerSelectionError, plan_trials
from lora_ablation.run.budget import costs
from lora_ablation.run.schedule import ROUND_ONE, eliminate, round_one_units, schedule

SETS = [["o_proj"], ["fc2"], ["qkv"], ["fc1"], ["o_proj", "fc2"]]


def planned(execution=None, **search):
    spec = parse_spec(minimal_manifest(search={"moduleSets": SETS, **search}, execution=execution or {})["spec"])
    return spec, plan_trials("demo", "ns", spec)


def scored(plan, scores):
    trained = [t for t in plan.trials if not t.spec.is_baseline]
    return {
        t.name: StageOneResult(trial=t.name, dataset="med", step=1, steps=4, metric="accuracy", score=s, samples=5)
        for t, s in zip(trained, scores, strict=False)
    }


def test_above_median_keeps_the_upper_half_with_ties_and_never_touches_the_baseline():
    spec, plan = planned(earlyStopping={})
    out = eliminate(plan, spec, scored(plan, [0.1, 0.5, 0.3, 0.3, 0.9]))
    kept = sorted(t.label for t in plan.trials if t.name in out.survivors)
    assert kept == sorted(["fc2 r16 lora", "qkv r16 lora", "fc1 r16 lora", "o_proj+fc2 r16 lora"])
    assert len(out.eliminated) == 1 and out.cutoffs["med"] == 0.3
    assert not any(t.spec.is_baseline and t.name in out.eliminated for t in plan.trials)


def test_top_k_keeps_k_and_a_small_field_keeps_everyone():
    spec, plan = planned(earlyStopping={"rule": "topK", "keep": 2})
    out = eliminate(plan, spec, scored(plan, [0.1, 0.5, 0.3, 0.2, 0.9]))
    assert sorted(out.scores["med"][t.label] for t in plan.trials if t.name in out.survivors) == [0.5, 0.9]
    spec, plan = planned(moduleSets=SETS[:2], earlyStopping={"minConfigurations": 3})
    out = eliminate(plan, spec, scored(plan, [0.1, 0.9]))
    assert len(out.survivors) == 2 and not out.eliminated


def test_seeds_of_one_configuration_survive_or_go_together_on_their_mean():
    spec, plan = planned(moduleSets=SETS[:3], seeds=[1, 2], earlyStopping={})
    out = eliminate(plan, spec, scored(plan, [0.1, 0.9, 0.5, 0.5, 0.2, 0.3]))
    by_label: dict[str, set[bool]] = {}
    for trial in plan.trials[1:]:
        by_label.setdefault(trial.label, set()).add(trial.name in out.survivors)
    assert all(len(v) == 1 for v in by_label.values())
    assert by_label["o_proj r16 lora"] == {True} and by_label["qkv r16 lora"] == {False}


def test_undecided_until_every_trained_trial_is_scored_finished_or_dropped():
    spec, plan = planned(earlyStopping={})
    partial = scored(plan, [0.1, 0.5, 0.3, 0.3])
    assert eliminate(plan, spec, partial).decided == set()
    last = [t.name for t in plan.trials][-1]
    assert eliminate(plan, spec, partial, dropped=[last]).decided == {"med"}


def test_units_group_per_dataset_in_plan_order_and_keep_lone_trial_names():
    spec, plan = planned(execution={"trialsPerPod": 4})
    units = round_one_units("demo", plan, spec)
    assert [len(u.trials) for u in units] == [4, 2] and all(u.round == ROUND_ONE for u in units)
    assert [t.name for u in units for t in u.trials] == plan.names
    spec, plan = planned()
    assert [u.name for u in round_one_units("demo", plan, spec)] == plan.names
    spec, plan = planned(earlyStopping={}, execution={"trialsPerPod": 3})
    sched = schedule("demo", plan, spec, scored(plan, [0.1, 0.5, 0.3, 0.3, 0.9]))
    second = [u for u in sched.units if u.round == 2]
    assert [len(u.trials) for u in second] == [3, 1] and not any(u.stage_one for u in second)
    assert sched.current[second[0].trials[0].name] is second[0]


def test_layer_subsets_become_an_axis_of_the_plan_with_names_labels_and_estimates():
    spec, plan = planned(moduleSets=[["qkv"]], layers=["all", "lastHalf", "0,2"])
    labels = [t.label for t in plan.trials]
    assert labels == ["base", "qkv r16 lora", "qkv r16 lora layers=lastHalf", "qkv r16 lora layers=0,2"]
    assert "-lasthalf-" in plan.trials[2].name and "-l0-2-" in plan.trials[3].name
    assert plan.trials[1].name == planned(moduleSets=[["qkv"]])[1].trials[1].name  # 'all' keeps the old name
    config = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 4, "intermediate_size": 128, "vocab_size": 100}  # fmt: skip
    inventory = catalog_inventory(config)
    sized = plan_trials("demo", "ns", spec, inventory)
    full, half, two = (t.estimated_params for t in sized.trials[1:])
    assert half == full // 2 and two == full // 2
    spec, _ = planned(moduleSets=[["qkv"]], layers=["7"])
    with pytest.raises(LayerSelectionError, match=r"spec.search.layers\[0\]: '7': layer 7 does not exist; the "):
        plan_trials("demo", "ns", spec, inventory)


@pytest.mark.parametrize(
    ("selection", "count", "expected"),
    [("all", 5, None), ("firstHalf", 5, [0, 1, 2]), ("lastHalf", 5, [2, 3, 4]), ("everyOther", 5, [0, 2, 4]),
     ("3,0-1", 5, [0, 1, 3])],
)  # fmt: skip
def test_layer_selections_resolve_to_indices(selection, count, expected):
    assert layers.indices(selection, count) == expected


@pytest.mark.parametrize("bad", ["half", "3-1", "1,1", "", "0,", "-1"])
def test_bad_layer_selections_say_what_is_expected(bad):
    assert layers.check(bad)


def test_budget_counts_finished_trials_and_stage_ones():
    from lora_ablation.api.trial import TrialResult

    done = {"a": TrialResult.model_validate({"ablation": "x", "trial": "a", "dataset": "d", "variant": "lora",
                                             "eval": {"metric": "m", "score": 1, "samples": 1},
                                             "computeSeconds": 1800})}  # fmt: skip
    one = {"b": StageOneResult(trial="b", dataset="d", step=1, steps=4, metric="m", score=0, samples=1,
                               compute_seconds=600)}  # fmt: skip
    spent = costs(done, one)
    assert spent.spent == 2400 and spent.trial == 1800 and spent.stage_one == 600


def test_tied_stage_one_scores_are_ranked_by_eval_loss():
    spec, plan = planned(earlyStopping={"rule": "topK", "keep": 2})
    trained = [t for t in plan.trials if not t.spec.is_baseline]
    stage_ones = {
        t.name: StageOneResult(trial=t.name, dataset="med", step=1, steps=4, metric="exact_match", score=0.0,
                               samples=5, eval_loss=loss)
        for t, loss in zip(trained, [2.0, 1.5, 1.9, 1.2, 3.0], strict=True)
    }  # fmt: skip
    out = eliminate(plan, spec, stage_ones)
    assert sorted(t.label for t in trained if t.name in out.survivors) == ["fc1 r16 lora", "fc2 r16 lora"]
    message = out.eliminated[trained[0].name]
    assert "scored 0.0000" in message and "with eval loss 2.0000 against 1.5000" in message
