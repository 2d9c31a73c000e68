"""The event-driven parts, called directly: the work queue, the status merge patch, event aggregation, the compact
watch-cache entries, the API rate limiter, and how the controller turns watch events into queued passes."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lora_ablation_operator import conditions as c
from lora_ablation_operator.controller import Controller, finished
from lora_ablation_operator.events import MAX_MESSAGE, aggregate
from lora_ablation_operator.kube import RateLimiter
from lora_ablation_operator.observe import compact_job, compact_pod, next_stuck_check, pod_problem, stuck_jobs
from lora_ablation_operator.patches import apply_merge_patch, merge_patch
from lora_ablation_operator.settings import Settings
from lora_ablation_operator.workqueue import WorkQueue


def run(coroutine):
    return asyncio.run(coroutine)


# -- work queue -----------------------------------------------------------------------------------------
def test_a_key_is_queued_once_and_never_processed_twice_at_once():
    async def scenario():
        queue: WorkQueue[str] = WorkQueue()
        for _ in range(5):
            queue.add("a")
        queue.add("b")
        assert len(queue) == 2
        first = await queue.get()
        queue.add(first)  # changed while processing: not handed out again until done
        second = await queue.get()
        assert (first, second) == ("a", "b") and len(queue) == 0
        queue.done(first)  # ...then it comes back once
        assert await asyncio.wait_for(queue.get(), 1) == "a"

    run(scenario())


def test_delays_fold_into_the_earliest_and_an_immediate_add_wins():
    async def scenario():
        queue: WorkQueue[str] = WorkQueue()
        queue.add_after("a", 0.05)
        queue.add_after("a", 10)  # later: ignored
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await asyncio.wait_for(queue.get(), 1) == "a"
        assert 0.04 <= loop.time() - started < 5
        queue.done("a")
        queue.add_after("b", 10)
        queue.add("b")  # due now beats due later
        assert await asyncio.wait_for(queue.get(), 1) == "b"
        assert len(queue) == 0  # the delayed add was cancelled

    run(scenario())


def test_backoff_doubles_to_a_cap_and_forget_resets_it():
    async def scenario():
        queue: WorkQueue[str] = WorkQueue(base_backoff=1.0, max_backoff=5.0)
        delays = [queue.backoff("a") for _ in range(5)]
        assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]
        queue.forget("a")
        assert queue.backoff("a") == 1.0
        queue.close()

    run(scenario())


def test_a_dropped_key_is_not_handed_out_and_close_ends_the_workers():
    async def scenario():
        queue: WorkQueue[str] = WorkQueue()
        queue.add("gone")
        queue.add_after("later", 0.01)
        queue.drop("gone")
        queue.drop("later")
        waiter = asyncio.create_task(queue.get())
        await asyncio.sleep(0.05)
        assert not waiter.done()
        queue.close()
        assert await asyncio.wait_for(waiter, 1) is None

    run(scenario())


# -- status as a merge patch ----------------------------------------------------------------------------
def test_an_unchanged_status_is_no_patch_and_a_changed_one_names_only_what_changed():
    old = {"progress": "1/2", "trials": {"total": 2, "running": 1, "succeeded": 1}, "bestConfig": None,
           "conditions": [{"type": "Ready"}], "leaderboard": [1]}  # fmt: skip
    assert merge_patch(old, dict(old)) == {}
    assert merge_patch({"progress": "1/2"}, {"progress": "1/2", "bestConfig": None}) == {}  # absent == None
    new = {**old, "progress": "2/2", "trials": {"total": 2, "succeeded": 2}}
    assert merge_patch(old, new) == {"progress": "2/2", "trials": {"running": None, "succeeded": 2}}
    assert merge_patch({"recommendation": {"a": 1}}, {"recommendation": None}) == {"recommendation": None}
    assert merge_patch(old, {"conditions": []}) == {"conditions": []}  # a partial status touches only its keys


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=3),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3),
                    max_leaves=12)  # fmt: skip
STATUS = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), JSON, max_size=4)


def _without_nulls(value):
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


@settings(max_examples=200, deadline=None)
@given(old=STATUS, new=STATUS)
def test_applying_the_patch_gives_what_the_pass_decided(old, new):
    stored = apply_merge_patch(_without_nulls(old), merge_patch(_without_nulls(old), new))
    for key, value in new.items():  # every key the pass named holds its value (null: absent), nested dicts whole
        assert stored.get(key) == _without_nulls(value)
    assert merge_patch(stored, new) == {}  # and the next pass with the same decision patches nothing


# -- events ---------------------------------------------------------------------------------------------
def test_a_burst_of_one_reason_becomes_one_event_naming_the_first_few():
    events = [("Normal", "TrialStarted", f"t{i}: ds qkv r8") for i in range(8)] + [("Warning", "TrialFailed", "t9: x")]
    out = aggregate(events)
    assert [e[:2] for e in out] == [("Normal", "TrialStarted"), ("Warning", "TrialFailed")]
    assert out[0][2].startswith("8 trials: t0: ds qkv r8; t1") and out[0][2].endswith("and 3 more")
    assert out[1] == ("Warning", "TrialFailed", "t9: x")
    assert len(aggregate([("Normal", "X", "m" * 5000)])[0][2]) == MAX_MESSAGE
    warnings = [("Warning", "MemoryEstimate", "a"), ("Warning", "MemoryEstimate", "b")]
    assert aggregate(warnings)[0][2] == "2 warnings: a; b"


# -- compact cache entries --------------------------------------------------------------------------------
def test_a_cached_job_keeps_what_a_pass_reads_and_drops_the_template():
    job = {"metadata": {"name": "j", "labels": {"lora.ablation.dev/trial": "t", "app.kubernetes.io/component": "trial",
                                                "other": "x"}, "annotations": {"a": "b"}},
           "spec": {"suspend": True, "backoffLimit": 2, "template": {"spec": {"containers": [{"env": ["big"]}]}}},
           "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                      "message": "m", "lastProbeTime": "x"}],
                      "active": 0, "uncountedTerminatedPods": {}}}
    compact = compact_job(job)
    assert "template" not in compact["spec"] and compact["spec"] == {"suspend": True, "backoffLimit": 2}
    assert compact["metadata"]["labels"] == {"lora.ablation.dev/trial": "t", "app.kubernetes.io/component": "trial"}
    assert compact["status"]["conditions"] == [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                                "message": "m"}]  # fmt: skip
    assert compact_job({"metadata": None, "status": {"conditions": "junk"}})["status"]["conditions"] == []


NOW = "2026-01-01T00:10:00Z"
UNSCHEDULABLE = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "no GPU",
                 "lastTransitionTime": "2026-01-01T00:05:00Z"}  # fmt: skip


def _pod(status):
    return {"metadata": {"name": "p", "labels": {"batch.kubernetes.io/job-name": "j", "x": "y"}}, "status": status}


def test_only_pods_that_may_not_start_are_cached_and_they_judge_as_the_full_pod():
    running = _pod({"phase": "Running"})
    pulling = _pod({"phase": "Pending", "containerStatuses": [{"state": {"waiting": {"reason": "ImagePullBackOff"}}}]})
    waiting = _pod({"phase": "Pending", "conditions": [UNSCHEDULABLE]})
    assert compact_pod(running) is None and compact_pod(_pod({"phase": "Pending"})) is None
    for pod in (pulling, waiting):
        assert compact_pod(pod) is not None
        assert pod_problem(compact_pod(pod), NOW, 60) == pod_problem(pod, NOW, 60)
    assert stuck_jobs([compact_pod(pulling)], NOW, 600) == {"j": "pod p: ImagePullBackOff"}


def test_an_unschedulable_pod_is_rechecked_when_its_wait_runs_out():
    waiting = _pod({"phase": "Pending", "conditions": [UNSCHEDULABLE]})  # waiting 300 s at NOW
    assert next_stuck_check([waiting], NOW, 600) == 300
    assert next_stuck_check([waiting], NOW, 60) is None  # already stuck: nothing left to wait for
    assert next_stuck_check([_pod({"phase": "Pending"})], NOW, 600) is None


# -- rate limiter -----------------------------------------------------------------------------------------
def test_the_rate_limiter_allows_a_burst_then_the_rate():
    clock = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    limiter = RateLimiter(qps=10, burst=3, clock=lambda: clock[0], sleep=sleep)
    waits = [limiter.acquire() for _ in range(5)]
    assert waits[:3] == [0, 0, 0] and waits[3] == pytest.approx(0.1) and waits[4] == pytest.approx(0.1)
    clock[0] += 10  # idle: the bucket refills to the burst, no more
    assert [limiter.acquire() for _ in range(3)] == [0, 0, 0] and limiter.acquire() == pytest.approx(0.1)
    assert RateLimiter(qps=0, burst=1).acquire() == 0  # unlimited


# -- the controller's feeds ---------------------------------------------------------------------------------
def _ablation(name="a", uid="u1", generation=1, status=None, rv="1"):
    return {"apiVersion": "lora.ablation.dev/v1alpha1", "kind": "LoraAblation",
            "metadata": {"name": name, "namespace": "ns", "uid": uid, "generation": generation, "resourceVersion": rv},
            "spec": {}, "status": status or {}}  # fmt: skip


def _final(generation=1):
    return {"observedGeneration": generation, "conditions": [{"type": c.READY, "status": "True",
                                                               "reason": c.COMPLETED}]}  # fmt: skip


def test_watch_events_queue_only_what_needs_a_pass():
    async def scenario():
        controller = Controller(Settings(workers=1, batch_window=0.0))
        controller.queue = WorkQueue()  # workers not started: the queue shows what was asked for
        controller.ablation_event(None, _ablation())  # first seen: Kopf has not started its daemon yet
        assert len(controller.queue) == 0
        controller.activate(_ablation())  # ...now it has: a pass
        assert len(controller.queue) == 1
        await controller.queue.get()
        controller.queue.done(("ns", "a"))
        controller.memory[("ns", "a")].generation = 1  # as a pass records it
        controller.ablation_event("MODIFIED", _ablation(rv="2"))  # our own status write: same generation
        assert len(controller.queue) == 0
        controller.ablation_event("MODIFIED", _ablation(generation=2, rv="3"))  # a spec edit
        assert len(controller.queue) == 1
        controller.child_event("ns", "a", deleted=False)  # a Job changed: folded into the queued pass
        controller.child_event("ns", "unknown", deleted=False)
        assert len(controller.queue) == 1
        controller.activate(_ablation("done", "u2", status=_final()))  # finished, seen at a restart: no pass
        controller.resync(("ns", "done"))  # nor from the safety net
        controller.child_event("ns", "done", deleted=True)  # its Jobs cleaned up: never a rerun
        assert len(controller.queue) == 1
        controller.child_event("ns", "done", deleted=False)  # a change to one of its Jobs: looked at
        assert len(controller.queue) == 2
        controller.ablation_event("DELETED", _ablation())
        assert ("ns", "a") not in controller.memory and len(controller.queue) == 1
        controller.queue.close()

    run(scenario())


def test_a_paused_or_deleting_ablation_gets_no_pass():
    async def scenario():
        controller = Controller(Settings(workers=1, batch_window=0.0))
        controller.queue = WorkQueue()
        controller.activate(_ablation())
        controller.deactivate(("ns", "a"))  # a peer took over, or deletion began: Kopf stopped the daemon
        assert controller._snapshot(("ns", "a")) is None  # the queued pass is skipped
        controller.child_event("ns", "a", deleted=False)
        controller.ablation_event("MODIFIED", _ablation(generation=2))
        assert controller._snapshot(("ns", "a")) is None
        controller.activate(_ablation(generation=2))  # handed back: one pass, on the latest body
        snapshot = controller._snapshot(("ns", "a"))
        assert snapshot is not None and snapshot.body["metadata"]["generation"] == 2
        controller.queue.close()

    run(scenario())


def test_finished_means_final_for_the_current_generation():
    assert finished(_final(1), 1) and not finished(_final(1), 2)
    assert not finished({}, 1) and not finished("junk", 1)


def test_passes_of_one_ablation_are_spaced_so_a_stream_of_events_rewrites_its_status_rarely():
    async def scenario():
        controller = Controller(Settings(workers=1, batch_window=0.1, min_pass_interval=1.0))
        controller.queue = WorkQueue()
        controller.activate(_ablation())
        assert await asyncio.wait_for(controller.queue.get(), 1) == ("ns", "a")
        assert controller._snapshot(("ns", "a")) is not None  # a pass starts now
        controller.queue.done(("ns", "a"))
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(20):  # Jobs finishing one after another
            controller.child_event("ns", "a", deleted=False)
        assert await asyncio.wait_for(controller.queue.get(), 3) == ("ns", "a")
        assert loop.time() - started >= 0.9 and len(controller.queue) == 0  # one pass, a second after the last
        controller.queue.close()

    run(scenario())


def test_summary_json_is_written_at_the_end_and_at_most_every_interval_while_results_come_in():
    from lora_ablation_operator.reconcile import Decision
    from lora_ablation_operator.reconcile_pass import summary_wanted

    settings = Settings(summary_interval=30.0)
    running = Decision(status={"trials": {"succeeded": 3}}, summary=object(), finished=False)
    assert summary_wanted(running, written=2, waited=31.0, settings=settings) is True
    assert summary_wanted(running, written=2, waited=5.0, settings=settings) is None  # owed, later
    assert summary_wanted(running, written=3, waited=99.0, settings=settings) is False  # nothing new
    assert summary_wanted(running, written=None, waited=float("inf"), settings=settings) is True  # after a restart
    done = Decision(status={"trials": {"succeeded": 3}}, summary=object(), finished=True)
    assert summary_wanted(done, written=2, waited=0.0, settings=settings) is True  # the final one, at once
    assert summary_wanted(done, written=3, waited=0.0, settings=settings) is False  # and only once
    assert summary_wanted(Decision(finished=True), written=None, waited=99.0, settings=settings) is False
