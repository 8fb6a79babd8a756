"""The recorder: off the reply path, bounded, every record written or counted as dropped."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mailsec_milter.config import settings_from_mapping
from mailsec_milter.dns import StaticResolver
from mailsec_milter.engine import Analysis, Engine
from mailsec_milter.model import Envelope, Header, MessageSnapshot
from mailsec_milter.policy import Action, Verdict, decide
from mailsec_milter.reports.record import ReportRecord, records_for
from mailsec_milter.reports.recorder import Recorder, RecorderSettings
from mailsec_milter.reports.store import ReportStore, StoreError, open_store

ZONE = ('victim.example. TXT "v=spf1 ip4:192.0.2.0/24 -all"\n'
        '_dmarc.victim.example. TXT "v=DMARC1; p=reject; rua=mailto:d@victim.example"\n')


class Observer:
    def __init__(self) -> None:
        self.written = 0
        self.dropped: dict[str, int] = {}
        self.lock = threading.Lock()

    def report_records_written(self, count: int, seconds: float) -> None:
        with self.lock:
            self.written += count

    def report_records_dropped(self, reason: str, count: int) -> None:
        with self.lock:
            self.dropped[reason] = self.dropped.get(reason, 0) + count


@pytest.fixture(scope="module")
def decided() -> Iterator[tuple[Envelope, Analysis, Verdict]]:
    """One real analysed message: a forgery of a p=reject domain from 198.51.100.7."""
    settings = settings_from_mapping({"milter": {"authserv_id": "mx.test.example"}})
    envelope = Envelope(client_ip="198.51.100.7", helo="mail.attacker.example",
                        mail_from="x@attacker.example")
    headers = (Header("From", b" ceo@victim.example"), Header("Subject", b" hi"))
    with ThreadPoolExecutor(max_workers=2) as pool:
        engine = Engine(settings, StaticResolver.from_zone_text(ZONE), pool)
        analysis = engine.analyse(MessageSnapshot(envelope, headers, b"body\r\n"))
    yield envelope, analysis, decide(analysis, envelope, settings)


def wait_for(condition: object, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_the_record_is_what_rfc9990_needs(decided: tuple[Envelope, Analysis, Verdict]) -> None:
    (record,) = records_for(*decided)
    assert (record.policy_domain, record.header_from, record.source_ip) == (
        "victim.example", "victim.example", "198.51.100.7")
    assert (record.disposition, record.dmarc_dkim, record.dmarc_spf) == ("reject", "fail",
                                                                          "fail")
    assert record.envelope_from == "attacker.example"
    assert record.rua == "mailto:d@victim.example"
    assert (record.published.p, record.published.discovery_method) == ("reject", "treewalk")


def test_records_reach_the_store_aggregated(tmp_path: Path,
                                            decided: tuple[Envelope, Analysis, Verdict]) -> None:
    observer = Observer()
    location = str(tmp_path / "r.sqlite")
    recorder = Recorder(RecorderSettings(location), observer).start()
    for _ in range(25):
        recorder.offer(*decided)
    recorder.stop()  # graceful stop flushes
    store = open_store(location)
    (row,) = store.rows("victim.example", *(2 * [records_for(*decided)[0].day]))
    assert row.messages == 25 and observer.written == 25 and not observer.dropped
    store.close()


class StalledStore(ReportStore):
    """A store whose writes hang until released (a slow or stuck database)."""

    release = threading.Event()

    def __init__(self, location: str) -> None:  # no real connection
        self.location = location

    def write(self, records: Sequence[ReportRecord]) -> int:
        self.release.wait(30)
        return len(records)

    def purge(self, keep_days: int, today: object = None) -> int:
        return 0

    def close(self) -> None:
        """Nothing to close: no connection was opened."""


def test_a_stalled_store_never_blocks_offer_and_a_full_queue_drops_counted(
        decided: tuple[Envelope, Analysis, Verdict]) -> None:
    observer = Observer()
    StalledStore.release.clear()
    recorder = Recorder(RecorderSettings("stalled", queue_size=10), observer,
                        opener=StalledStore).start()
    try:
        # 1,000 offers against a stuck store return (this loop ends while the store still
        # hangs); the queue holds 10 (plus the batch the writer thread holds): everything
        # else is dropped and counted.
        for _ in range(1000):
            recorder.offer(*decided)
        assert not StalledStore.release.is_set()
        assert observer.dropped.get("queue_full", 0) >= 1000 - 10 - 500
        assert recorder.depth <= 10
    finally:
        StalledStore.release.set()
        recorder.stop()


def test_a_dead_store_drops_counted_and_recording_resumes_when_it_returns(
        tmp_path: Path, decided: tuple[Envelope, Analysis, Verdict]) -> None:
    observer = Observer()
    location = str(tmp_path / "later" / "r.sqlite")  # its directory does not exist yet
    clock = [0.0]
    recorder = Recorder(RecorderSettings(location), observer, clock=lambda: clock[0]).start()
    try:
        recorder.offer(*decided)
        wait_for(lambda: observer.dropped.get("store_down", 0) == 1)
        (tmp_path / "later").mkdir()  # the store comes back
        clock[0] += 100  # past the backoff
        recorder.offer(*decided)
        wait_for(lambda: observer.written == 1)
    finally:
        recorder.stop()
    assert observer.dropped == {"store_down": 1}


def test_write_errors_are_counted_not_raised(decided: tuple[Envelope, Analysis, Verdict]
                                             ) -> None:
    class Broken(StalledStore):
        def write(self, records: Sequence[ReportRecord]) -> int:
            raise StoreError("broken: disk full")

    observer = Observer()
    recorder = Recorder(RecorderSettings("broken"), observer, opener=Broken).start()
    recorder.offer(*decided)
    wait_for(lambda: observer.dropped.get("store_error", 0) == 1)
    recorder.stop()


def test_tempfailed_messages_are_not_recorded(decided: tuple[Envelope, Analysis, Verdict]
                                              ) -> None:
    envelope, analysis, verdict = decided
    tempfailed = Verdict(Action.TEMPFAIL, verdict.reason)
    assert records_for(envelope, analysis, tempfailed) == ()
