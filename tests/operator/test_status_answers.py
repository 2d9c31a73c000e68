"""Issue 14 in the operator status: guardrails as a Warnings condition beside the others and one Warning event per
rule, once per generation (the Jobs are created all the same: never blocking); each seeded trial's seed."""

from __future__ import annotations

from conftest import minimal_manifest
from lora_ablation_operator import conditions as c
from lora_ablation_operator.policy import Policy
from lora_ablation_operator.reconcile import reconcile
from lora_ablation_operator.settings import Settings
from support.reconcile_cases import observed

SETTINGS = Settings(trainer_image="trainer:test", preflight=False, policy=Policy.open())


def observe(raw, status=None, generation=1):
    return observed(raw, status=status, generation=generation, now="2026-11-23T12:00:00Z")


def warnings_condition(decision):
    return next(x for x in decision.status["conditions"] if x["type"] == c.WARNINGS)


def test_a_spec_breaking_guardrails_gets_a_warnings_condition_and_events_but_still_runs():
    raw = minimal_manifest(search={"moduleSets": [["qkv"], ["o_proj"]], "ranks": [8, 64]})["spec"]
    first = reconcile(observe(raw), SETTINGS)
    assert first.create, "guardrails never block: the trial Jobs are created"
    condition = warnings_condition(first)
    assert condition["status"] == "True" and condition["reason"] == c.GUARDRAILS
    assert condition["message"] == (
        "spec.search.moduleSets: attention only; qkv alone fell below the base model on 2 of 7 datasets; add "
        "[o_proj, fc2] (seed 000, seed 002); spec.training.learningRate: one rate (0.0002) for ranks [8, 64] with "
        "alpha = 2 x r; add rslora (seed 002)"
    )
    (event,) = [e for e in first.events if e[1] == c.GUARDRAILS]
    assert event == ("Warning", c.GUARDRAILS, "2 guardrail warning(s): " + condition["message"])
    again = reconcile(observe(raw, status=first.status), SETTINGS)
    assert warnings_condition(again) == condition and not [e for e in again.events if e[1] == c.GUARDRAILS]
    later = reconcile(observe(raw, status=first.status, generation=2), SETTINGS)
    assert len([e for e in later.events if e[1] == c.GUARDRAILS]) == 1, "a new generation is a new spec to warn on"


def test_every_guardrail_at_once_fits_the_condition_message():
    raw = minimal_manifest(search={"moduleSets": [["qkv"], ["o_proj"]], "ranks": [8, 64], "variants": ["lora", "dora"]},
                           training={"learningRate": 0.05})["spec"]  # fmt: skip
    condition = warnings_condition(reconcile(observe(raw), SETTINGS))
    assert condition["message"].count("(seed 00") + condition["message"].count("(issue #14)") == 4
    assert len(condition["message"]) < 1024, "nothing is cut off"


def test_a_sound_spec_has_the_condition_false():
    raw = minimal_manifest(search={"moduleSets": [["o_proj"], ["o_proj", "fc2"]]})["spec"]
    decision = reconcile(observe(raw), SETTINGS)
    condition = warnings_condition(decision)
    assert (condition["status"], condition["reason"], condition["message"]) == ("False", c.NO_WARNINGS, "")
    assert not [e for e in decision.events if e[1] == c.GUARDRAILS]


def test_seeded_trials_show_their_seed_in_status():
    raw = minimal_manifest(search={"moduleSets": [["o_proj"], ["o_proj", "fc2"]], "seeds": [1, 2]})["spec"]
    decision = reconcile(observe(raw), SETTINGS)
    seeds = [t.get("seed") for t in decision.status["trialStatuses"]]
    assert seeds == [None, 1, 2, 1, 2]
