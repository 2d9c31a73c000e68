"""progress.json is evidence too, and only advisory: whatever a trial image writes there reads either as a
bounded TrialProgress for that very trial or as no progress (with a warning), never as an error."""

from __future__ import annotations

import json
import logging

import pytest

from conftest import minimal_manifest
from lora_ablation.api.resource import parse_spec
from lora_ablation.planning.plan import plan_trials
from lora_ablation.storage.open import open_store
from lora_ablation.storage.results import MAX_PROGRESS_BYTES, read_progress


def progress_doc(trial: str = "t1", **changes) -> dict:
    doc = {"trial": trial, "step": 40, "totalSteps": 100, "trainLoss": 1.25, "tokensPerSecond": 2048.0,
           "elapsedSeconds": 80.0, "etaSeconds": 120.0, "updatedAt": "2026-01-01T00:00:00Z",
           "eval": {"step": 25, "score": 0.5, "evalLoss": 1.1}}  # fmt: skip
    return doc | changes


def test_a_sound_file_reads_as_it_is(tmp_path):
    store = open_store(f"file://{tmp_path}")
    store.write_json("t1/progress.json", progress_doc())
    progress = read_progress(store, "t1")
    assert progress is not None and (progress.step, progress.total_steps, progress.fraction) == (40, 100, 0.4)
    assert progress.eta_seconds == 120.0 and progress.eval is not None and progress.eval.score == 0.5


def test_no_file_is_no_progress_without_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert read_progress(open_store(f"file://{tmp_path}"), "t1") is None
    assert not caplog.records


HOSTILE = {
    "huge number": json.dumps(progress_doc(etaSeconds=1e300)),
    "overflowing number": json.dumps(progress_doc()).replace("120.0", "1e999"),  # parses as inf
    "NaN": json.dumps(progress_doc()).replace("1.25", "NaN"),
    "Infinity": json.dumps(progress_doc()).replace("2048.0", "Infinity"),
    "negative speed": json.dumps(progress_doc(tokensPerSecond=-5.0)),
    "negative elapsed": json.dumps(progress_doc(elapsedSeconds=-1.0)),
    "step past the total": json.dumps(progress_doc(step=101)),
    "steps past any run": json.dumps(progress_doc(step=10**12, totalSteps=10**12)),
    "wrong trial": json.dumps(progress_doc(trial="t2")),
    "a string for a number": json.dumps(progress_doc(step="forty")),
    "huge file": json.dumps(progress_doc(padding="x" * (MAX_PROGRESS_BYTES + 1))),
    "deep nesting": json.dumps(progress_doc(extra=json.loads("[" * 40 + "]" * 40))),
    "not JSON": "{step: 40",
    "not an object": "[1, 2, 3]",
    "lone surrogate": json.dumps(progress_doc(updatedAt="\\ud800")).replace("\\\\ud800", "\\ud800"),
    "huge name": json.dumps(progress_doc(trial="t" * 10_000)),
}


@pytest.mark.parametrize("what", sorted(HOSTILE))
def test_hostile_content_reads_as_no_progress_with_a_warning(what, tmp_path, caplog):
    store = open_store(f"file://{tmp_path}")
    store.write_text("t1/progress.json", HOSTILE[what])
    with caplog.at_level(logging.WARNING, logger="lora_ablation.storage.results"):
        assert read_progress(store, "t1") is None
    assert "ignoring t1/progress.json" in caplog.text


def test_a_trial_the_plan_does_not_have_is_not_read(tmp_path, caplog):
    spec = parse_spec(minimal_manifest()["spec"])
    planned = {t.name: t for t in plan_trials("demo", "ns", spec).trials}
    store = open_store(f"file://{tmp_path}")
    store.write_json("t1/progress.json", progress_doc())
    name = next(iter(planned))
    store.write_json(f"{name}/progress.json", progress_doc(trial=name))
    with caplog.at_level(logging.WARNING, logger="lora_ablation.storage.results"):
        assert read_progress(store, "t1", planned=planned) is None
        assert read_progress(store, name, planned=planned) is not None
    assert "not a planned trial" in caplog.text
