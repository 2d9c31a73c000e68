"""For any content of any trial file (result.json, stage-one.json, failure.json, and a forged decision file), one
whole pass (gather from storage, then reconcile) never raises, and the status it writes stays far under etcd's
object limit with nothing from a file rendered as HTML. Files are evidence, not authority."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_ablation.storage.open import open_store
from lora_ablation_operator.collector import ResultCache
from lora_ablation_operator.gather import gather
from lora_ablation_operator.jobs import preflight_name
from lora_ablation_operator.planning import plan_for
from lora_ablation_operator.reconcile import reconcile
from support.reconcile_cases import SETTINGS, finished, observed, spec

HUGE = st.sampled_from([1e308, -1e308, 10**400, 2**63, 1e6 + 1, -0.0])
HOSTILE_TEXT = st.sampled_from(["<img src=x onerror=alert(1)>", "x" * 300_000, "![a](http://e/x.png)", "\x00\x1b[31m",
                                "| a | b |", "`code`", "\ud800"])  # fmt: skip
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12), HUGE, HOSTILE_TEXT)
VALUES = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=12)  # fmt: skip


def documents(trial: str, dataset: str) -> dict[str, dict]:
    return {
        "result.json": {"ablation": "demo", "trial": trial, "dataset": dataset, "variant": "lora",
                        "modules": ["<img src=x>"], "rank": 8, "eval": {"metric": "accuracy", "score": 0.5,
                                                                        "samples": 10}, "computeSeconds": 10.0},
        "stage-one.json": {"trial": trial, "dataset": dataset, "step": 1, "steps": 4, "metric": "accuracy",
                           "score": 0.4, "samples": 5, "computeSeconds": 3.0},
        "failure.json": {"trial": trial, "message": "boom", "exitCode": 42},
    }  # fmt: skip


@st.composite
def trial_file(draw, trial: str, dataset: str) -> tuple[str, bytes]:
    file = draw(st.sampled_from(["result.json", "stage-one.json", "failure.json"]))
    kind = draw(st.sampled_from(["spoiled", "spoiled", "json", "bytes"]))
    if kind == "bytes":
        return file, draw(st.binary(max_size=100))
    if kind == "json":
        return file, json.dumps(draw(VALUES)).encode()
    doc = documents(trial, dataset)[file]
    doc[draw(st.sampled_from(sorted(doc)))] = draw(VALUES)
    return file, json.dumps(doc).encode("utf-8", "surrogatepass")


RAW = spec(search={"moduleSets": [["o_proj"], ["qkv"], ["fc2"]], "ranks": [8], "earlyStopping": {}})
PLANNED = plan_for("demo", "ns", RAW, SETTINGS)
TRIALS = [t.name for t in PLANNED.plan.trials]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_any_trial_files_never_break_the_pass_or_bloat_the_status(tmp_path_factory, data):
    store = open_store(str(tmp_path_factory.mktemp("store")))
    for trial in data.draw(st.lists(st.sampled_from(TRIALS), unique=True, min_size=1)):
        for _ in range(data.draw(st.integers(1, 3))):
            file, body = data.draw(trial_file(trial, "medmcqa"))
            store.write_bytes(f"{trial}/{file}", body)
    if data.draw(st.booleans()):  # a forged decision, as a trial image with the bucket's credentials could write
        store.write_bytes("decisions/elimination-medmcqa.json", json.dumps(data.draw(VALUES)).encode())
    jobs = {name: finished({"metadata": {"name": name, "labels": {"lora.ablation.dev/trial": name}}}, "Complete")
            for name in TRIALS}  # fmt: skip
    preflight = preflight_name("demo", PLANNED.spec)
    jobs[preflight] = finished({"metadata": {"name": preflight}}, "Complete")
    gathered = gather(PLANNED, jobs, store, ResultCache(300.0), "uid", "demo")
    seen = observed(RAW, jobs=list(jobs.values()), results=gathered.results, planned=PLANNED,
                    stage_ones=gathered.stage_ones, failures=gathered.failures, schedule=gathered.schedule,
                    eliminations=gathered.eliminations)  # fmt: skip
    decision = reconcile(seen, SETTINGS)
    status = json.dumps(decision.status, allow_nan=False)
    assert len(status.encode()) < 1024 * 1024
    assert "<img" not in status and "\x00" not in status
    assert len(decision.status["trialStatuses"]) == len(TRIALS)  # the pass judged every trial
