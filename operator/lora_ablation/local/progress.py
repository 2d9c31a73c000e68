"""The local runner's progress lines: every LORA_ABLATION_PROGRESS_SECONDS (30, the interval the trainer writes
at), each running trial's progress.json (from the run's store, local or S3) read once, a line for each that moved,
and the ablation's share done and ETA, as the operator's status shows them (lora_ablation.run.live)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping

from lora_ablation.api.progress import TrialProgress
from lora_ablation.planning.plan import PlannedTrial
from lora_ablation.run.live import ablation_progress, interval_from_env, trial_line
from lora_ablation.storage.results import read_progress
from lora_ablation.storage.store import StorageError, Store

log = logging.getLogger(__name__)


class ProgressLines:
    def __init__(self, store: Store, planned: Mapping[str, PlannedTrial], say: Callable[[str], None],
                 interval: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.store, self.planned, self.say, self._clock = store, planned, say, clock
        self.interval = interval_from_env() if interval is None else interval
        self._last = clock()  # the first look is one interval after the start
        self._shown: dict[str, tuple[int, str]] = {}
        self.progress: dict[str, TrialProgress] = {}

    def poll(self, running: Iterable[str], states: Mapping[str, str], parallelism: int) -> None:
        """Read the running trials' progress when the interval is over, and print what moved."""
        if self.interval <= 0 or self._clock() - self._last < self.interval:
            return
        self._last = self._clock()
        names = [n for n in running if n in self.planned and not self.planned[n].spec.is_baseline]
        self.progress = {n: p for n in names if (p := self._read(n)) is not None}
        moved = [n for n, p in self.progress.items() if self._shown.get(n) != (p.step, p.updated_at)]
        for name in moved:
            found = self.progress[name]
            self._shown[name] = (found.step, found.updated_at)
            self.say(f"    {name}: {trial_line(found)}")
        live = ablation_progress(states, self.progress, parallelism) if moved else None
        if live is not None:
            self.say(f"    progress {live['percent']:.1f}%" + (f", ETA {live['eta']}" if live.get("eta") else ""))

    def _read(self, name: str) -> TrialProgress | None:
        try:
            return read_progress(self.store, name, planned=self.planned)
        except StorageError as error:  # advisory: the run goes on
            log.warning("progress of %s not read: %s", name, str(error)[:200])
            return None
