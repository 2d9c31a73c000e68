"""Results storage as the operator sees it: result.json of finished trials (bounded reads, cached, re-checked
for rewrites), the preflight report, summary.json, and deleting an ablation's results. Storage I/O only; no
Kubernetes here. Everything read was written by a trial image, so nothing read is trusted."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from lora_ablation.api.progress import TrialProgress
from lora_ablation.api.spec import LoraAblationSpec, StorageSpec
from lora_ablation.api.stages import EliminationDecision
from lora_ablation.api.trial import PreflightReport
from lora_ablation.planning.plan import PlannedTrial
from lora_ablation.storage.open import open_store
from lora_ablation.storage.record import Listing, list_record
from lora_ablation.storage.results import RESULT_FILE, ResultRead, read_progress, read_result
from lora_ablation.storage.store import ObjectTooLarge, StorageAccessDenied, StorageError, Store
from lora_ablation_operator import metrics
from lora_ablation_operator.policy import Forbidden, storage_violations
from lora_ablation_operator.settings import Settings

log = logging.getLogger(__name__)
NOTED = "noted"  # the cache scope of what this process wrote itself
PREFLIGHT_FILE = "preflight/preflight.json"
MAX_PREFLIGHT_BYTES = 1024 * 1024
PROGRESS_RECHECK_SECONDS = 30.0  # the cost: at most one storage read per running trial per 30 s


@dataclass(frozen=True)
class Seen:
    """What a listing of the prefix saw of one file: each trial's version, and when the listing was taken. A
    read older than the listing is checked against it instead of asking storage per file; `complete` (a listing
    taken after every workload the read looks at had finished) also answers a first read: unlisted is absent."""

    versions: Mapping[str, str]
    at: float
    complete: bool = False


class ProgressCache:
    """Live progress of running trials: each one's progress.json read at most once per `recheck_seconds` (30 s:
    one request per running trial per period, a missing file included), never checked by version first (that
    would be a second request). Advisory: a bad file reads as no progress, and storage that does not answer keeps
    what was known. Trials no longer running are dropped at the next collect: the cache holds the running ones."""

    def __init__(self, recheck_seconds: float = PROGRESS_RECHECK_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.recheck_seconds, self._clock = recheck_seconds, clock
        self._reads: dict[str, dict[str, tuple[TrialProgress | None, float]]] = {}

    def collect(self, uid: str, store: Store, running: Iterable[str],
                planned: Mapping[str, PlannedTrial]) -> dict[str, TrialProgress]:  # fmt: skip
        now, names = self._clock(), sorted(set(running))
        known = self._reads.get(uid, {})
        kept = {n: known[n] for n in names if n in known}
        due = [n for n in names if n not in kept or now - kept[n][1] >= self.recheck_seconds]

        def read(name: str) -> tuple[TrialProgress | None, float]:
            try:
                return read_progress(store, name, planned=planned), now
            except StorageError as error:  # keep what was known; try again next period
                metrics.STORAGE_ERRORS.inc()
                log.warning("progress of %s not read: %s", name, str(error)[:200])
                return (kept[name][0] if name in kept else None), now

        for name, fresh in zip(due, _in_pool(read, due), strict=True):
            kept[name] = fresh
        if kept:
            self._reads[uid] = kept
        else:
            self._reads.pop(uid, None)
        return {n: value for n, (value, _) in kept.items() if value is not None}

    def next_due(self, uid: str) -> float | None:
        """Seconds until the first of this ablation's progress reads is due again; None when it has none."""
        reads = self._reads.get(uid)
        if not reads:
            return None
        return max(0.0, min(at for _, at in reads.values()) + self.recheck_seconds - self._clock())

    def forget(self, uid: str) -> None:
        self._reads.pop(uid, None)

    def __len__(self) -> int:
        return sum(len(r) for r in self._reads.values())


class ResultCache:
    """Each finished trial's result is read once, then only its version (ETag and size) is checked, at most every
    `recheck_seconds`: a result rewritten after it was read is read and validated again. Versions come from a new
    listing of the prefix when that takes fewer requests than asking per file (a request per 1,000 objects
    against one per file). A restarted operator lists and reads everything, which is what makes a restart lose
    nothing."""

    def __init__(self, recheck_seconds: float, clock: Callable[[], float] = time.monotonic,
                 progress_seconds: float = PROGRESS_RECHECK_SECONDS) -> None:  # fmt: skip
        self._recheck, self._clock = recheck_seconds, clock
        self.progress = ProgressCache(progress_seconds, clock)  # its own period: progress changes every step
        self._reads: dict[tuple[str, str, str, str], tuple[str | None, Any, float]] = {}
        self._listings: dict[str, tuple[Listing, float]] = {}
        self._versions: dict[tuple[str, str, str], tuple[str, Any]] = {}  # the last read of each object version

    def collect(self, uid: str, store: Store, trials: list[str], file: str = RESULT_FILE,
                reader: Callable[[Store, str], Any] = read_result, scope: str = "",
                seen: Seen | None = None, absent: Any = ...) -> dict[str, Any]:  # fmt: skip
        """`file` of each trial as `reader` reads it (result.json by default; stage-one.json, failure.json), or
        `absent` where there is none. `scope` names what the read belongs to (a unit and whether its Job finished):
        a new scope reads afresh, so a file absent while a trial's first stage ran is looked for again when its
        second stage finishes. `seen`: what a listing saw, which spares first reads and, when newer than a read,
        its recheck a version request (see Seen). Storage requests run in a bounded pool: a restarted operator
        reads thousands of small files."""
        if absent is ...:  # what read_result, the default reader, reads where there is no file
            absent = ResultRead(None)
        out: dict[str, Any] = {}
        now = self._clock()
        due: list[tuple[str, tuple[str | None, Any, float] | None]] = []
        for trial in trials:
            cached = self._reads.get((uid, trial, file, scope))
            # A listing newer than the read checks it for free; otherwise a read is checked every recheck_seconds.
            free = seen is not None and cached is not None and seen.at > cached[2]
            if cached is not None and (cached[2] == float("inf") or (now - cached[2] < self._recheck and not free)):
                out[trial] = cached[1]  # noted (this process wrote it), or checked recently
            else:
                due.append((trial, cached))

        def refresh(item: tuple[str, tuple[str | None, Any, float] | None]) -> tuple[str | None, Any, float]:
            trial, cached = item
            version = _listed_version(seen, trial, cached)
            if version == "":  # the listing does not answer: ask storage
                version = _version(store, f"{trial}/{file}")
            if cached is not None and version == cached[0]:
                return (version, cached[1], now)
            if version is None:
                return (None, absent, now)
            known = self._versions.get((uid, trial, file))
            if known is not None and known[0] == version:  # read in another scope: the same object
                return (version, known[1], now)
            value = reader(store, trial)
            self._versions[(uid, trial, file)] = (version, value)
            return (version, value, now)

        for (trial, _), fresh in zip(due, _in_pool(refresh, due), strict=True):
            self._reads[(uid, trial, file, scope)] = fresh
            out[trial] = fresh[1]
        return out

    def listing(self, uid: str, store: Store, checks: int = 0) -> tuple[Listing, float, bool]:
        """The ablation's record as a listing of the prefix found it, when it was taken, and whether this call
        took it. Listed the first time this process looks (a restart lists again), and again when that costs
        fewer requests than the `checks` per-file version requests the caller would otherwise make; in between,
        kept current by what this process reads and writes (note, keep, note_decision)."""
        current = self._listings.get(uid)
        if current is None or (checks and math.ceil(max(current[0].keys, 1) / 1000) <= checks):
            known = current[0].eliminations if current is not None else None
            taken = self._clock()
            self._listings[uid] = (list_record(store, known=known), taken)
            return self._listings[uid][0], taken, True
        return current[0], current[1], False

    def checks_due(self, uid: str) -> int:
        """Reads of this ablation whose version would be asked of storage now (read over `recheck_seconds` ago)."""
        now = self._clock()
        return sum(1 for (u, *_), (_, _, at) in self._reads.items() if u == uid and now - at >= self._recheck)

    def read_before(self, uid: str, trial: str, file: str, scope: str) -> bool:
        return (uid, trial, file, scope) in self._reads

    def note(self, uid: str, trial: str, file: str, value: Any) -> None:
        """What this process wrote itself (a recorded failure): known without reading it back."""
        self._reads[(uid, trial, file, NOTED)] = (None, value, float("inf"))
        if uid in self._listings:
            self._listings[uid][0].add(trial, file)

    def keep(self, uid: str, trial: str, file: str, scope: str, into: str) -> None:
        """A file found by a read in `scope` (a unit's workload) is part of the record from now on: kept under
        scope `into` and in the listing, so a deleted workload takes nothing with it."""
        if (cached := self._reads.get((uid, trial, file, scope))) is not None:
            self._reads.setdefault((uid, trial, file, into), cached)
            if uid in self._listings:
                self._listings[uid][0].add(trial, file, cached[0] or "")

    def noted(self, uid: str, trial: str, file: str) -> Any:
        cached = self._reads.get((uid, trial, file, NOTED))
        return cached[1] if cached else None

    def note_decision(self, uid: str, decision: EliminationDecision) -> None:
        if uid in self._listings:
            self._listings[uid][0].eliminations[decision.dataset] = decision

    def forget(self, uid: str) -> None:
        self.progress.forget(uid)
        for key in [k for k in self._reads if k[0] == uid]:
            del self._reads[key]
        for vkey in [k for k in self._versions if k[0] == uid]:
            del self._versions[vkey]
        self._listings.pop(uid, None)

    def __len__(self) -> int:
        return len(self._reads)


def _listed_version(seen: Seen | None, trial: str, cached: tuple[str | None, Any, float] | None) -> str | None:
    """The version `seen` gives a due read: None for absent, "" when the listing cannot say (too old for this read,
    or a file added since it was taken)."""
    if seen is None:
        return ""
    listed = seen.versions.get(trial)
    if cached is None:
        if listed is None:
            return None if seen.complete else ""
        return listed
    return listed if seen.at >= cached[2] else ""


_POOL_SIZE = 16  # storage requests in flight per pass; the S3 client's connection pool is as large
_POOL_LOCK = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _in_pool(work: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """work(item) for each item, in order; in the shared pool when there is more than a handful."""
    global _pool
    if len(items) <= 4:
        return [work(item) for item in items]
    with _POOL_LOCK:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_POOL_SIZE, thread_name_prefix="storage-read")
    return list(_pool.map(work, items))


def _version(store: Store, key: str) -> str | None:
    try:
        return store.version(key)
    except FileNotFoundError:
        return None


_STORE_LOCK = threading.Lock()


def _root_store(uri: str, endpoint: str | None, region: str | None, retries: int, timeout: float) -> Store:
    # One client per storage location, reused by every pass. Built under a lock: workers starting together would
    # each load botocore's service models (~70 MiB of parsed JSON at once, which the heap keeps).
    with _STORE_LOCK:
        return _cached_root_store(uri, endpoint, region, retries, timeout)


@lru_cache(maxsize=256)
def _cached_root_store(uri: str, endpoint: str | None, region: str | None, retries: int, timeout: float) -> Store:
    return open_store(uri, endpoint, region, retries=retries, timeout=timeout)


def _store_for(storage: StorageSpec, namespace: str, name: str, settings: Settings) -> Store:
    if not storage.uri.startswith("s3://"):
        raise ValueError(f"storage.uri {storage.uri!r}: the operator reads and writes s3:// storage only")
    # The operator's own credentials go only where the admin policy allows (a confused deputy otherwise): checked
    # here, where every read, summary write and deletion opens storage, and not only when the plan is made.
    if refused := storage_violations(storage, settings.policy, settings.default_storage_endpoint):
        raise Forbidden("; ".join(refused))
    endpoint = storage.endpoint or settings.default_storage_endpoint
    root = _root_store(storage.uri, endpoint, storage.region, settings.storage_retries, settings.storage_timeout)
    return root.child(namespace, name)


def ablation_store(spec: LoraAblationSpec, namespace: str, name: str, settings: Settings) -> Store:
    return _store_for(spec.storage, namespace, name, settings)


def describe(error: StorageError) -> str:
    """A StorageUnavailable condition message that tells a denied access from an unreachable endpoint."""
    if isinstance(error, StorageAccessDenied):
        return f"results storage denies access: {error}"
    return f"results storage unreachable: {error}"


def preflight_problems(store: Store) -> list[str] | None:
    """The problems preflight.json lists, or a problem with the file itself; None when there is no file."""
    try:
        raw: Any = store.read_json(PREFLIGHT_FILE, MAX_PREFLIGHT_BYTES)
    except FileNotFoundError:
        return None
    except ObjectTooLarge as error:
        return [f"{PREFLIGHT_FILE} is too large ({error})"]
    except (ValueError, RecursionError):
        return [f"{PREFLIGHT_FILE} is not valid JSON"]
    try:
        report = PreflightReport.model_validate(raw)
    except ValidationError as error:
        return [f"{PREFLIGHT_FILE} is not a valid preflight report ({error.error_count()} problem(s))"]
    return [p[:500] for p in report.problems[:20]] or None


def write_trial_statuses(store: Store, statuses: list[dict[str, Any]]) -> None:
    store.write_json("trials.json", statuses)


def delete_results(raw_storage: Any, namespace: str, name: str, settings: Settings) -> tuple[int, str]:
    """Remove everything under <storage.uri>/<namespace>/<name>; needs nothing of the spec but its storage, so
    an ablation whose spec is otherwise invalid can still be deleted. ValueError when storage is unusable or the
    admin policy forbids it (policy.Forbidden): then nothing is deleted."""
    try:
        storage = StorageSpec.model_validate(raw_storage)
    except ValidationError as error:
        raise ValueError(f"spec.storage is invalid ({error.error_count()} problem(s))") from None
    store = _store_for(storage, namespace, name, settings)
    return store.delete_prefix(""), store.uri
