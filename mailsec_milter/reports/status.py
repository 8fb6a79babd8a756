"""The report sender's status file, and the Prometheus metric families read from it.

Owns: ``reports send`` runs in its own short-lived process (a timer), so its counters cannot
live in the daemon's registry. Each run adds its outcome to a small JSON file (cumulative
counters: reports sent / failed / skipped by reason, destinations sent, the last successful run
time), written atomically; the daemon exposes it on /metrics through ``StatusCollector``.
Must not: fail a run or a scrape because the file is missing, unreadable or corrupt (a missing
file reads as zero counts; a corrupt one is replaced by the next run).

Wiring (once, in the process that serves /metrics — not in every worker, or the counters are
summed several times): ``registry.register(StatusCollector(status_path(settings.reports_store)))``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .destinations import Skip
from .store import DEFAULT_STATE_DIRECTORY, is_postgres_url

STATUS_NAME = "reports-status.json"


def status_path(store_location: str) -> Path:
    """Next to an SQLite store; for PostgreSQL (or the default) in the state directory."""
    if store_location and not is_postgres_url(store_location):
        return Path(store_location).parent / STATUS_NAME
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0] or DEFAULT_STATE_DIRECTORY
    return Path(state) / STATUS_NAME


@dataclass
class RunOutcome:
    """What one ``reports send`` run did (added to the file's cumulative counters)."""

    sent: int = 0  # reports sent to at least one destination
    failed: int = 0  # reports dropped after max_attempts, or refused by the MTA everywhere
    deferred: int = 0  # reports to be tried again by a later run
    destinations_sent: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason → destinations/reports

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n


@dataclass
class Status:
    sent: int = 0
    failed: int = 0
    deferred: int = 0
    destinations_sent: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    runs: int = 0
    last_run: float = 0.0
    last_success: float = 0.0


def read_status(path: Path) -> Status:
    """The cumulative status; zeros if the file is missing or not ours."""
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return Status()
    if not isinstance(data, dict):
        return Status()

    def number(name: str) -> float:
        value = data.get(name, 0)
        return float(value) if isinstance(value, (int, float)) and value >= 0 else 0.0

    skipped = data.get("skipped", {})
    return Status(
        sent=int(number("sent")), failed=int(number("failed")),
        deferred=int(number("deferred")), destinations_sent=int(number("destinations_sent")),
        skipped={str(k): int(v) for k, v in skipped.items()
                 if isinstance(v, int) and v >= 0} if isinstance(skipped, Mapping) else {},
        runs=int(number("runs")), last_run=number("last_run"),
        last_success=number("last_success"))


def add_run(path: Path, outcome: RunOutcome, now: float, succeeded: bool) -> Status:
    """Add one run to the file (atomically replaced); returns the new cumulative status.
    ``succeeded``: the run reached the store and finished (sending failures still count)."""
    status = read_status(path)
    status.sent += outcome.sent
    status.failed += outcome.failed
    status.deferred += outcome.deferred
    status.destinations_sent += outcome.destinations_sent
    for reason, n in outcome.skipped.items():
        status.skipped[reason] = status.skipped.get(reason, 0) + n
    status.runs += 1
    status.last_run = now
    if succeeded:
        status.last_success = now
    fd, tmp = tempfile.mkstemp(prefix=".reports-status.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(vars(status), out, indent=1, sort_keys=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return status


def metric_families(status: Status) -> list[CounterMetricFamily | GaugeMetricFamily]:
    """The sender's counters as Prometheus families (names documented in docs/REPORTS.md)."""
    sent = CounterMetricFamily("mailsec_reports_sent", "DMARC aggregate reports sent to at "
                               "least one destination (reports send runs).")
    sent.add_metric([], status.sent)
    failed = CounterMetricFamily("mailsec_reports_failed", "DMARC aggregate reports dropped "
                                 "after [reports] max_attempts or refused by every MTA.")
    failed.add_metric([], status.failed)
    deferred = CounterMetricFamily("mailsec_reports_deferred", "Report attempts postponed to "
                                   "a later run (DNS trouble, MTA unreachable).")
    deferred.add_metric([], status.deferred)
    skipped = CounterMetricFamily("mailsec_reports_skipped", "Report destinations (or whole "
                                  "reports) not sent, by reason.", labels=["reason"])
    # Every known reason from the start (a series that appears only when it first counts
    # hides its first increase from rate()), plus any an older or newer sender wrote.
    known = {reason.value: 0 for reason in Skip}
    for reason, n in sorted({**known, **status.skipped}.items()):
        skipped.add_metric([reason], n)
    last = GaugeMetricFamily("mailsec_reports_last_success_timestamp_seconds",
                             "When a reports send run last finished (0: never).")
    last.add_metric([], status.last_success)
    return [sent, failed, deferred, skipped, last]


class StatusCollector(Collector):
    """A custom collector for the daemon's registry: reads the file at every scrape (it is
    small, and the sender is another process)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield from metric_families(read_status(self.path))

    def describe(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield from metric_families(Status())
