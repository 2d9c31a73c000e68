"""progress.json while a trial trains: step, loss, speed, time left, and the last eval point. Written at most every
LORA_ABLATION_PROGRESS_SECONDS (default 30; 0 turns it off), plus the first step and the last, by a background
thread: the training loop only hands over the newest figures, so a slow or failing storage never holds a step
up, and a failed write is logged and dropped (progress is advisory; result.json is what counts)."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable

from lora_ablation.api.bounds import MAX_SCORE, MAX_SECONDS
from lora_ablation.api.contract import PROGRESS
from lora_ablation.api.progress import MAX_TOKENS_PER_SECOND, ProgressEval, TrialProgress
from lora_ablation.run.live import interval_from_env
from lora_ablation.storage.store import Store
from lora_ablation_trainer.outputs import now

log = logging.getLogger(__name__)
CLOSE_WAIT = 10.0  # seconds the end of training waits at most for the last write


def _bounded(value: float, top: float) -> float | None:
    return round(min(max(value, 0.0), top), 4) if math.isfinite(value) else None


class ProgressReporter:
    """One trial's progress.json. `step()` after every optimizer step is cheap (no I/O in the caller's thread)."""

    def __init__(self, store: Store, trial: str, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.store, self.trial, self._clock = store, trial, clock
        self.interval = interval_from_env() if interval is None else interval
        self.enabled = self.interval > 0
        self._last_sent: float | None = None
        self._latest: TrialProgress | None = None
        self._pending: TrialProgress | None = None
        self._wake = threading.Condition()
        self._closed = False
        self.sent = self.writes = self.failures = 0  # records handed to the writer, written, failed
        self._thread: threading.Thread | None = None

    def step(self, step: int, total: int, loss: float, tokens: int, seconds: float, *, force: bool = False) -> None:
        """The figures after optimizer step `step` of `total`; sent when the interval has passed (or `force`,
        or on the first and the last step)."""
        if not self.enabled:
            return
        try:
            self._step(step, total, loss, tokens, seconds, force)
        except Exception as error:  # a figure the model refuses must not stop training
            log.warning("progress of step %d not recorded: %s", step, str(error)[:200])

    def _step(self, step: int, total: int, loss: float, tokens: int, seconds: float, force: bool) -> None:
        at = self._clock()
        due = force or self._last_sent is None or step >= total or at - self._last_sent >= self.interval
        per_step = seconds / step if step else 0.0
        self._latest = TrialProgress(
            trial=self.trial, step=min(step, total), total_steps=total,
            train_loss=round(max(-MAX_SCORE, min(loss, MAX_SCORE)), 5) if math.isfinite(loss) else None,
            tokens_per_second=_bounded(tokens / seconds, MAX_TOKENS_PER_SECOND) if seconds > 0 else None,
            elapsed_seconds=_bounded(seconds, MAX_SECONDS) or 0.0,
            eta_seconds=_bounded(per_step * max(total - step, 0), MAX_SECONDS) if step else None,
            updated_at=now(), eval=self._latest.eval if self._latest else None,
        )  # fmt: skip
        if due:
            self._last_sent = at
            self._send(self._latest)

    def evaluated(self, step: int, score: float, eval_loss: float | None) -> None:
        """An eval point (stage one's, or the final eval before result.json): sent at once."""
        if not self.enabled or self._latest is None or not math.isfinite(score):
            return
        try:
            self._evaluated(step, score, eval_loss)
        except Exception as error:  # as for steps
            log.warning("eval point at step %d not recorded: %s", step, str(error)[:200])

    def _evaluated(self, step: int, score: float, eval_loss: float | None) -> None:
        assert self._latest is not None
        point = ProgressEval(step=min(step, self._latest.total_steps), score=max(-MAX_SCORE, min(score, MAX_SCORE)),
                             eval_loss=eval_loss if eval_loss is not None and math.isfinite(eval_loss)
                             and abs(eval_loss) <= MAX_SCORE else None)  # fmt: skip
        self._latest = self._latest.model_copy(update={"eval": point, "updated_at": now()})
        self._send(self._latest)

    def _send(self, record: TrialProgress) -> None:
        self.sent += 1
        with self._wake:
            self._pending = record
            if self._thread is None:
                self._thread = threading.Thread(target=self._writer, name=f"progress-{self.trial}", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _writer(self) -> None:
        while True:
            with self._wake:
                while self._pending is None and not self._closed:
                    self._wake.wait()
                record, self._pending = self._pending, None
                if record is None:  # closed with nothing left to write
                    return
            self._write(record)

    def _write(self, record: TrialProgress) -> None:
        try:
            text = json.dumps(record.to_wire(), ensure_ascii=False, allow_nan=False) + "\n"
            self.store.write_text(PROGRESS, text)
            self.writes += 1
        except Exception as error:  # advisory: nothing about progress may fail a trial
            self.failures += 1
            log.warning("could not write %s (training goes on): %s", PROGRESS, str(error)[:200])

    def close(self) -> None:
        """Write what is pending and stop the writer (waiting CLOSE_WAIT seconds at most)."""
        with self._wake:
            self._closed = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join(CLOSE_WAIT)
