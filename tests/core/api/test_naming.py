"""Names and label values the operator puts into Kubernetes: valid for every input, stable, readable."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from lora_ablation.api.naming import LABEL_VALUE, bounded_name, config_hash, label_value, trial_name

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def test_a_name_that_fits_is_the_one_earlier_releases_gave():
    # Existing results are found by trial name: short names must never change.
    identity = {"x": 1}
    assert trial_name("quickstart", "reverse", ["o_proj+fc2", "r8", "lora"], identity) == (
        f"quickstart-reverse-o-proj-fc2-r8-lora-{config_hash(identity)}"
    )


def test_long_parts_are_trimmed_ablation_first_and_the_config_stays_readable():
    name = trial_name("a" * 63, "d" * 24, ["q_proj+k_proj+v_proj", "r256", "loraplus"], {"i": 1})
    assert len(name) == 63 and DNS1123_LABEL.match(name)
    assert name.endswith("-q-proj-k-proj-v-proj-r256-loraplus-" + config_hash({"i": 1}))
    assert name.startswith("aaaaaa-dddddd")  # the ablation down to 6 first, then only as much dataset as needed


def test_trimmed_names_of_different_trials_never_collide():
    names = {trial_name("x" * 63, "d" * 24, ["all", f"r{r}", "lora"], {"rank": r}) for r in range(200)}
    assert len(names) == 200


def test_label_values_are_kept_when_valid_and_hashed_when_not():
    assert label_value("study") == "study"
    long = label_value("x" * 100)
    assert len(long) <= 63 and LABEL_VALUE.match(long) and long != label_value("x" * 101)
    assert LABEL_VALUE.match(label_value("-.-")) and label_value("a.b_c") == "a.b_c"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=80), max_size=6), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
def test_every_name_is_a_dns1123_label_of_at_most_63(parts, identity):
    name = bounded_name(parts, identity)
    assert len(name) <= 63 and DNS1123_LABEL.match(name), name


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_every_label_value_is_valid(text):
    value = label_value(text)
    assert len(value) <= 63 and LABEL_VALUE.match(value), value
