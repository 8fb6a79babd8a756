"""Recording for aggregate reports, off the reply path: a bounded queue and one writer thread.

Owns: taking (envelope, analysis, verdict) after the verdict was sent (``offer`` never blocks
and never raises), turning them into report records and writing them in batches on its own
thread, opening the store lazily and again after a failure (with backoff), retention, and the
accounting of every record: written, or dropped with a reason (``queue_full`` when the queue is
full, ``store_down`` while the store is unreachable, ``store_error`` when a write fails,
``shutdown`` when a stop could not flush in time) — counted and logged at most once a minute.
Must not: delay, tempfail or lose mail: nothing here runs on a milter callback but ``offer``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from ..engine import Analysis
from ..model import Envelope
from ..policy import Verdict
from .record import ReportRecord, records_for
from .store import ReportStore, StoreError, open_store, redact

log = logging.getLogger("mailsec_milter.reports")

BATCH = 2000  # messages per store write at most (equal tuples are summed before the write)
FLUSH_SECONDS = 0.5  # the writer wakes this often (what waits is held in memory)
BACKOFF_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)  # reopening a failed store
PURGE_EVERY_SECONDS = 3600.0
LOG_EVERY_SECONDS = 60.0


class RecorderObserver(Protocol):
    """Where the recorder's numbers go (metrics.Metrics implements it)."""

    def report_records_written(self, count: int, seconds: float) -> None: ...
    def report_records_dropped(self, reason: str, count: int) -> None: ...


@dataclass(frozen=True)
class RecorderSettings:
    location: str
    queue_size: int = 10_000
    keep_days: int = 14


_Item = tuple[Envelope, Analysis, Verdict, datetime]


class Recorder:
    """One per worker process; ``start`` it, ``offer`` after each verdict, ``stop`` to flush."""

    def __init__(self, settings: RecorderSettings, observer: RecorderObserver | None = None,
                 opener: Callable[[str], ReportStore] = open_store,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._observer = observer
        self._opener = opener
        self._clock = clock
        # A deque, not a queue.Queue: offer() must not wake the writer per message (a
        # thread switch and a GIL hand-off each); the writer wakes every FLUSH_SECONDS.
        self._queue: collections.deque[_Item] = collections.deque()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._store: ReportStore | None = None
        self._retry_at = 0.0
        self._failures = 0
        self._next_purge = 0.0
        self._last_log: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    # --- the reply path ---------------------------------------------------------------------

    def offer(self, envelope: Envelope, analysis: Analysis, verdict: Verdict) -> None:
        """Queue one decided message; drop it (counted) when the queue is full. Never blocks."""
        if analysis.dmarc is None or not analysis.dmarc.evaluations:
            return
        if len(self._queue) >= self.settings.queue_size or self._stopping.is_set():
            self._dropped("queue_full", 1, "report queue full")
            return
        self._queue.append((envelope, analysis, verdict, datetime.now(UTC)))

    @property
    def depth(self) -> int:
        return len(self._queue)

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> Recorder:
        self._thread = threading.Thread(target=self._run, name="report-writer", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Flush what is queued (bounded by ``timeout``), then close the store; what could not
        be written in time is dropped with reason ``shutdown``."""
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        thread.join(timeout)
        if thread.is_alive():
            left = len(self._queue)
            self._queue.clear()
            if left:
                self._dropped("shutdown", left, "stopping before the store took every record")
        self._thread = None

    # --- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            stopping = self._stopping.wait(FLUSH_SECONDS)
            while self._queue:
                self._write(self._take(BATCH))
            if stopping:
                self._close_store()
                return
            self._maybe_purge()

    def _take(self, limit: int) -> list[_Item]:
        items: list[_Item] = []
        pop = self._queue.popleft
        while len(items) < limit:
            try:
                items.append(pop())
            except IndexError:
                break
        return items

    def _write(self, items: list[_Item]) -> None:
        records: list[ReportRecord] = []
        for envelope, analysis, verdict, when in items:
            try:
                records.extend(records_for(envelope, analysis, verdict, now=when))
            except Exception:  # a record that cannot be built is a bug: never the writer's end
                log.exception("could not build a report record; dropped")
                self._dropped("store_error", 1, "record could not be built")
        if not records:
            return
        store = self._ensure_store()
        if store is None:
            self._dropped("store_down", len(records),
                          f"report store {redact(self.settings.location)} unavailable")
            return
        started = time.perf_counter()
        try:
            store.write(records)
        except StoreError as exc:
            self._failed(exc)
            self._dropped("store_error", len(records), f"report store write failed: {exc}")
            return
        self._failures = 0
        if self._observer is not None:
            self._observer.report_records_written(len(records), time.perf_counter() - started)

    def _ensure_store(self) -> ReportStore | None:
        if self._store is not None:
            return self._store
        if self._clock() < self._retry_at:
            return None
        try:
            self._store = self._opener(self.settings.location)
        except StoreError as exc:
            self._failed(exc)
            return None
        except Exception as exc:  # an unexpected driver error: same as a dead store
            self._failed(StoreError(f"{redact(self.settings.location)}: {exc}"))
            return None
        if self._failures:
            log.warning("report store %s is back", redact(self.settings.location))
        self._failures = 0
        return self._store

    def _failed(self, exc: StoreError) -> None:
        self._close_store()
        delay = BACKOFF_SECONDS[min(self._failures, len(BACKOFF_SECONDS) - 1)]
        self._failures += 1
        self._retry_at = self._clock() + delay
        self._rate_limited_log("store", f"report store: {exc}; retrying in {delay:g}s")

    def _close_store(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def _maybe_purge(self) -> None:
        if self._store is None or self._clock() < self._next_purge:
            return
        self._next_purge = self._clock() + PURGE_EVERY_SECONDS
        try:
            removed = self._store.purge(self.settings.keep_days)
        except StoreError as exc:
            self._rate_limited_log("purge", f"report store retention failed: {exc}")
            return
        if removed:
            log.info("report store: %d rows older than %d days removed", removed,
                     self.settings.keep_days)

    # --- accounting -------------------------------------------------------------------------

    def _dropped(self, reason: str, count: int, message: str) -> None:
        if self._observer is not None:
            self._observer.report_records_dropped(reason, count)
        self._suppressed[reason] = self._suppressed.get(reason, 0) + count
        self._rate_limited_log(reason, message)

    def _rate_limited_log(self, key: str, message: str) -> None:
        now = self._clock()
        if now - self._last_log.get(key, -LOG_EVERY_SECONDS) < LOG_EVERY_SECONDS:
            return
        self._last_log[key] = now
        dropped = self._suppressed.pop(key, 0)
        suffix = f" ({dropped} record(s) dropped since the last message)" if dropped else ""
        log.warning("%s%s", message, suffix)
