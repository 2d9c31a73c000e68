"""A work queue as Kubernetes controllers use one (client-go's workqueue, which controller-runtime, kueue and
kuberay build on): a key waits in the queue at most once however many events name it, two workers never hold the
same key, a key that changes while it is being processed goes back once it is done, and a key can be queued after
a delay: a short batch window to fold a burst of events into one pass, a backoff after failures, a timed recheck."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    """Single event loop only (no locks): feed it from Kopf handlers, drain it from worker tasks."""

    def __init__(self, base_backoff: float = 0.5, max_backoff: float = 300.0) -> None:
        self._base, self._max = base_backoff, max_backoff
        self._ready: deque[K] = deque()
        self._queued: set[K] = set()  # in _ready, due now
        self._processing: set[K] = set()
        self._dirty: dict[K, float] = {}  # changed while processing: re-add after this delay once done
        self._timers: dict[K, tuple[float, asyncio.TimerHandle]] = {}  # due time, handle
        self._failures: dict[K, int] = {}
        self._wakeup = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._queued) + len(self._timers)

    @property
    def processing(self) -> int:
        return len(self._processing)

    def add(self, key: K) -> None:
        """Due now (sooner than any delayed add of the same key)."""
        if self._closed:
            return
        if key in self._processing:
            self._dirty[key] = 0.0
            return
        self._cancel_timer(key)
        if key not in self._queued:
            self._queued.add(key)
            self._ready.append(key)
            self._wakeup.set()

    def add_after(self, key: K, delay: float) -> None:
        """Due after `delay` seconds, unless already due sooner."""
        if delay <= 0:
            self.add(key)
            return
        if self._closed or key in self._queued:
            return
        if key in self._processing:
            self._dirty[key] = min(delay, self._dirty.get(key, delay))
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        if key in self._timers and self._timers[key][0] <= due:
            return
        self._cancel_timer(key)
        self._timers[key] = (due, loop.call_later(delay, self._fire, key))

    def backoff(self, key: K) -> float:
        """Queue a key whose pass failed after an exponential delay (base, 2x base, ... up to max); the delay."""
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        delay = min(self._max, self._base * 2 ** min(failures - 1, 30))
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        """The key's pass succeeded: its next failure starts the backoff again from the base delay."""
        self._failures.pop(key, None)

    def drop(self, key: K) -> None:
        """The object is gone: nothing about it is due any more (a pass under way still ends normally)."""
        self._queued.discard(key)  # get() skips the stale entry in _ready
        self._dirty.pop(key, None)
        self._failures.pop(key, None)
        self._cancel_timer(key)

    async def get(self) -> K | None:
        """The next due key, now being processed; None once the queue is closed."""
        while not self._closed:
            while self._ready:
                key = self._ready.popleft()
                if key in self._queued:
                    self._queued.discard(key)
                    self._processing.add(key)
                    return key
            self._wakeup.clear()
            await self._wakeup.wait()
        return None

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self.add_after(key, self._dirty.pop(key))

    def close(self) -> None:
        self._closed = True
        for key in list(self._timers):
            self._cancel_timer(key)
        self._wakeup.set()

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def _cancel_timer(self, key: K) -> None:
        entry = self._timers.pop(key, None)
        if entry is not None:
            entry[1].cancel()
