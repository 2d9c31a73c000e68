"""The controller, as controller-runtime operators are built: Kopf's watches keep caches (the ablations, their
Jobs, their pods that cannot start), every watch event queues the owning ablation in a work queue, and a few
workers each take one ablation and run one level-based pass over what the caches hold. No pass lists anything;
a pass patches the status only where it changed and posts one Event per reason. handlers.py feeds this."""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from lora_ablation.api.naming import label_value
from lora_ablation_operator import collector, metrics
from lora_ablation_operator import conditions as c
from lora_ablation_operator.multinode import compact_multi_node
from lora_ablation_operator.observe import compact_job
from lora_ablation_operator.planning import PlanCache
from lora_ablation_operator.reconcile_pass import Outcome, Snapshot, run_pass
from lora_ablation_operator.settings import Settings
from lora_ablation_operator.workqueue import WorkQueue

log = logging.getLogger(__name__)
Key = tuple[str, str]  # namespace, name
FINAL_REASONS = frozenset({c.COMPLETED, c.COMPLETED_WITH_FAILURES, c.TOO_MANY_FAILURES, c.PREFLIGHT_FAILED,
                           c.INVALID_SPEC, c.FORBIDDEN})  # fmt: skip
EXPECTATION_TTL = 120.0  # seconds a created Job counts as existing before the watch has shown it


def finished(status: Any, generation: Any) -> bool:
    """Whether the ablation reached a final state for its current spec (nothing left to start or collect)."""
    status = status if isinstance(status, dict) else {}
    ready = next((x for x in status.get("conditions") or [] if isinstance(x, dict) and x.get("type") == c.READY), {})
    return ready.get("reason") in FINAL_REASONS and status.get("observedGeneration") == generation


@dataclass
class Memory:
    """What the process knows of one ablation between passes (lost on restart, by design: nothing here is needed
    for correctness, only to save work and to keep Events from repeating)."""

    uid: str
    body: dict[str, Any]  # the latest the watch delivered
    status: dict[str, Any] | None = None  # as this process last wrote it, until the watch shows that write
    status_version: str | None = None  # resourceVersion of that write
    states: dict[str, str] | None = None  # trial -> state at the last pass
    expected: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)  # created, not yet watched
    generation: int | None = None  # the generation the last pass started on
    queued_at: float | None = None  # the first event since the last pass (for the event-to-status metric)
    last_pass: float = float("-inf")  # monotonic time the last pass started
    summary_written: int | None = None  # succeeded trials in the summary.json last written, and when
    summary_written_at: float = float("-inf")


class Controller:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.results = collector.ResultCache(settings.result_recheck_seconds,
                                             progress_seconds=settings.progress_recheck_seconds)  # fmt: skip
        self.plans = PlanCache()
        self.memory: dict[Key, Memory] = {}
        self.by_label: dict[tuple[str, str], str] = {}  # (namespace, ablation label value) -> name
        self.active: set[Key] = set()  # ablations whose Kopf daemon runs: only these get passes
        self.jobs_index: Any = None  # Kopf indexes (live views), bound by the first handler call
        self.pods_index: Any = None
        self.multi_node_index: Any = None
        self.queue: WorkQueue[Key] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle (in Kopf's event loop) ----------------------------------------------------------------
    def start(self) -> None:
        self.queue = WorkQueue(self.settings.backoff_base, self.settings.backoff_max)
        self._executor = ThreadPoolExecutor(self.settings.workers, thread_name_prefix="reconcile")
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.settings.workers)]

    async def stop(self) -> None:
        if self.queue is not None:
            self.queue.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def bind(self, jobs_index: Any, pods_index: Any, multi_node_index: Any = None) -> None:
        self.jobs_index, self.pods_index = jobs_index, pods_index
        self.multi_node_index = multi_node_index  # JobSets or TrainJobs, when multi-node trials are enabled

    # -- feeds: Kopf handlers call these on watch events --------------------------------------------------
    def ablation_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key: Key = (meta.get("namespace") or "", meta.get("name") or "")
        if event_type == "DELETED":
            self.forget(key)
            return
        memory = self.memory.get(key)
        if memory is None or memory.uid != meta.get("uid"):
            if memory is not None:
                self.forget(key)  # deleted and recreated under the same name: nothing carries over
            memory = self.memory[key] = Memory(uid=meta.get("uid") or "", body=body)
            self.by_label[(key[0], label_value(key[1]))] = key[1]
        memory.body = body
        if memory.status_version is not None and memory.status_version == meta.get("resourceVersion"):
            memory.status, memory.status_version = None, None  # the watch caught up with our own write
        generation = meta.get("generation")
        if generation != memory.generation and not (memory.generation is None and
                                                    finished(body.get("status"), generation)):  # fmt: skip
            self._enqueue(key, memory, 0.0)  # created, edited, or first seen since start (resume)

    def activate(self, body: dict[str, Any]) -> None:
        """Kopf started handling the ablation (created, first seen, or this replica took over from a peer)."""
        meta = body.get("metadata") or {}
        key: Key = (meta.get("namespace") or "", meta.get("name") or "")
        if key not in self.memory:
            self.ablation_event(None, body)
        self.active.add(key)
        memory = self.memory[key]
        if not finished(memory.body.get("status"), (memory.body.get("metadata") or {}).get("generation")):
            self._enqueue(key, memory, 0.0)

    def deactivate(self, key: Key) -> None:
        """Kopf stopped handling it (a peer took over, the operator stops, or the object is being deleted)."""
        self.active.discard(key)

    def child_event(self, namespace: str, ablation_label: str, deleted: bool) -> None:
        """A Job or pod of the ablation changed: reconcile the ablation (after the batch window)."""
        name = self.by_label.get((namespace, ablation_label))
        memory = self.memory.get((namespace, name)) if name else None
        if name is None or memory is None:
            return  # the ablation is not known (yet): its own first event reconciles it
        if deleted and finished((memory.body.get("status")), (memory.body.get("metadata") or {}).get("generation")):
            return  # a finished ablation's Jobs being cleaned up: nothing to do, and never a rerun
        self._enqueue((namespace, name), memory, self.settings.batch_window)

    def resync(self, key: Key) -> None:
        """The safety-net timer: a pass even if no event came."""
        memory = self.memory.get(key)
        if memory is not None and not finished(memory.body.get("status"), (memory.body.get("metadata") or {})
                                               .get("generation")):  # fmt: skip
            self._enqueue(key, memory, 0.0)

    def forget(self, key: Key) -> None:
        memory = self.memory.pop(key, None)
        self.active.discard(key)
        if self.queue is not None:
            self.queue.drop(key)
        if memory is not None:
            self.results.forget(memory.uid)
            self.plans.forget(memory.uid)
            self.by_label.pop((key[0], label_value(key[1])), None)
        metrics.record_trials(key[0], key[1], None)
        metrics.record_progress(key[0], key[1], None)

    def _enqueue(self, key: Key, memory: Memory, delay: float) -> None:
        if self.queue is None or key not in self.active:
            return
        memory.queued_at = memory.queued_at or time.perf_counter()
        spacing = memory.last_pass + self.settings.min_pass_interval - time.monotonic()
        self.queue.add_after(key, max(delay, spacing))
        metrics.QUEUE_DEPTH.set(len(self.queue))

    # -- workers ------------------------------------------------------------------------------------------
    async def _worker(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while (key := await self.queue.get()) is not None:
            try:
                snapshot = self._snapshot(key)
                if snapshot is None:
                    continue
                outcome = await loop.run_in_executor(self._executor, run_pass, snapshot, self.settings,
                                                     self.results, self.plans)  # fmt: skip
                self._remember(key, snapshot, outcome)
            except Exception:  # a bug or an API outage must not stop the worker: retry this key later
                delay = self.queue.backoff(key)
                log.exception("reconciling %s/%s failed; retrying in %.1fs", key[0], key[1], delay)
            else:
                self._requeue(key, outcome)
            finally:
                self.queue.done(key)
                metrics.QUEUE_DEPTH.set(len(self.queue))

    def _snapshot(self, key: Key) -> Snapshot | None:
        """Everything a pass reads, copied here in the event loop (the watches change the caches meanwhile)."""
        memory = self.memory.get(key)
        if memory is None or key not in self.active:
            return None  # deleted, being deleted, or handled by a peer: its daemon's start queues it again
        label = (key[0], label_value(key[1]))
        jobs = {j["metadata"]["name"]: j for j in _values(self.jobs_index, label)}
        jobs.update({j["metadata"]["name"]: j for j in _values(self.multi_node_index, label)})  # keyed by trial
        now = time.monotonic()
        for name in [n for n, (at, _) in memory.expected.items() if n in jobs or now - at > EXPECTATION_TTL]:
            del memory.expected[name]
        for name, (_, job) in memory.expected.items():
            jobs.setdefault(name, job)
        body = memory.body
        queued_at, memory.queued_at = memory.queued_at, None
        memory.last_pass = time.monotonic()
        memory.generation = (body.get("metadata") or {}).get("generation")
        status = memory.status if memory.status is not None else body.get("status") or {}
        return Snapshot(body=copy.deepcopy(body), status=copy.deepcopy(status), jobs=jobs,
                        pods=list(_values(self.pods_index, label)), previous_states=memory.states,
                        queued_at=queued_at, summary_written=memory.summary_written,
                        summary_written_at=memory.summary_written_at)  # fmt: skip

    def _remember(self, key: Key, snapshot: Snapshot, outcome: Outcome) -> None:
        memory = self.memory.get(key)
        if memory is None or memory.uid != (snapshot.body.get("metadata") or {}).get("uid"):
            return  # deleted meanwhile
        if outcome.states is not None:
            memory.states = outcome.states
        if outcome.written_status is not None:
            memory.status, memory.status_version = outcome.written_status
        if outcome.summary_written is not None:
            memory.summary_written, memory.summary_written_at = outcome.summary_written, time.monotonic()
        now = time.monotonic()
        memory.expected.update(
            {
                name: (now, compact_job(job) if job.get("kind", "Job") == "Job" else compact_multi_node(job))
                for name, job in outcome.created.items()
            }
        )

    def _requeue(self, key: Key, outcome: Outcome) -> None:
        assert self.queue is not None
        if outcome.retry:
            self.queue.backoff(key)  # a refused Job or unreachable storage: retried, each time later
        else:
            self.queue.forget(key)
        if outcome.recheck_after is not None:
            self.queue.add_after(key, outcome.recheck_after)


def _values(index: Any, key: tuple[str, str]) -> list[dict[str, Any]]:
    if index is None:
        return []
    try:
        return [dict(value) for value in index.get(key, [])]
    except (TypeError, KeyError):
        return []
