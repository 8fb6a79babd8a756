"""The sending history (mailsec_milter/history.py): refreshed from the report store in the
background, bounded, and never a reason for a message to wait or fail."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from datetime import date
from pathlib import Path

import pytest

from mailsec_milter import history as history_module
from mailsec_milter.config import settings_from_mapping
from mailsec_milter.history import SenderHistory, network_of, sender_history, store_reader
from mailsec_milter.reports.record import PublishedPolicy, ReportRecord
from mailsec_milter.reports.store import open_store

TODAY = date(2026, 12, 8)
PAIRS = [("bank.example", "192.0.2.10"), ("Bank.Example.", "2001:db8:1:2::5"),
         ("shop.example", "198.51.100.200")]


def reader(pairs: Iterable[tuple[str, str]], seen: list[date] | None = None
           ) -> history_module.PassingSources:
    def read(since: date) -> Iterator[tuple[str, str]]:
        if seen is not None:
            seen.append(since)
        yield from pairs

    return read


def refreshed(pairs: Iterable[tuple[str, str]], **options: int) -> SenderHistory:
    summary = SenderHistory(reader(pairs), today=lambda: TODAY, **options)
    assert summary.refresh()
    return summary


@pytest.mark.parametrize(("address", "v4", "v6", "network"), [
    ("192.0.2.10", 24, 56, "192.0.2.0/24"),
    ("::ffff:192.0.2.10", 24, 56, "192.0.2.0/24"),
    ("192.0.2.10", 32, 56, "192.0.2.10/32"),
    ("2001:db8:1:2::5", 24, 56, "2001:db8:1::/56"),
    ("2001:db8:1:2::5", 24, 64, "2001:db8:1:2::/64"),
    ("not an address", 24, 56, ""),
    ("", 24, 56, ""),
])
def test_network_of(address: str, v4: int, v6: int, network: str) -> None:
    assert network_of(address, v4, v6) == network


def test_a_network_is_known_for_the_domain_it_sent_for() -> None:
    summary = refreshed(PAIRS)
    assert summary.state == "ready" and len(summary) == 3
    assert summary.known_network("bank.example", "192.0.2.77") == "192.0.2.0/24"
    assert summary.known_network("BANK.example", "192.0.2.1") == "192.0.2.0/24"
    assert summary.known_network("bank.example", "2001:db8:1:ff::9") == "2001:db8:1::/56"
    # another network, another domain, another family
    assert summary.known_network("bank.example", "192.0.3.10") == ""
    assert summary.known_network("shop.example", "192.0.2.10") == ""
    assert summary.known_network("bank.example", "2001:db8:2::1") == ""
    assert summary.known_network("bank.example", None) == ""
    assert summary.known_network("", "192.0.2.10") == ""


def test_the_window_is_history_days_back_from_today() -> None:
    seen: list[date] = []
    SenderHistory(reader(PAIRS, seen), days=30, today=lambda: TODAY).refresh()
    assert seen == [date(2026, 11, 8)]


def test_prefix_lengths_come_from_the_settings() -> None:
    summary = refreshed(PAIRS, ipv4_prefix=32)
    assert summary.known_network("bank.example", "192.0.2.10") == "192.0.2.10/32"
    assert summary.known_network("bank.example", "192.0.2.11") == ""


def test_a_refresh_replaces_the_summary() -> None:
    pairs = list(PAIRS)
    summary = SenderHistory(reader(pairs), today=lambda: TODAY)
    assert summary.known_network("bank.example", "192.0.2.10") == ""  # before the first
    summary.refresh()
    assert summary.known_network("bank.example", "192.0.2.10")
    pairs.clear()
    pairs.append(("new.example", "203.0.113.9"))
    summary.refresh()
    assert summary.known_network("bank.example", "192.0.2.10") == ""
    assert summary.known_network("new.example", "203.0.113.1") == "203.0.113.0/24"
    assert summary.refreshes == 2


def test_the_summary_is_bounded() -> None:
    many = [(f"d{i}.example", f"10.{i // 256 % 256}.{i % 256}.1") for i in range(500)]
    summary = refreshed(many + many, max_entries=100)  # duplicates count once
    assert len(summary) == 100 and summary.truncated
    assert sum(1 for d, ip in many if summary.known_network(d, ip)) == 100
    exact = refreshed(many[:100], max_entries=100)
    assert len(exact) == 100 and not exact.truncated


def test_unusable_rows_are_skipped() -> None:
    summary = refreshed([("", "192.0.2.1"), ("bank.example", "garbage"),
                         ("bank..example", "192.0.2.1"), ("bank.example", "192.0.2.1")])
    assert len(summary) == 1


def _dead(since: date) -> Iterator[tuple[str, str]]:
    raise ConnectionError("store is down")
    yield ("never", "reached")  # pragma: no cover


def test_a_dead_store_gives_no_sign_and_no_error() -> None:
    summary = SenderHistory(_dead, today=lambda: TODAY)
    assert summary.refresh() is False
    assert summary.state == "unavailable"
    assert summary.known_network("bank.example", "192.0.2.10") == ""


def test_a_store_that_dies_mid_read_keeps_the_last_summary() -> None:
    calls = {"n": 0}

    def flaky(since: date) -> Iterator[tuple[str, str]]:
        calls["n"] += 1
        yield ("bank.example", "192.0.2.10")
        if calls["n"] > 1:
            raise ConnectionError("connection lost")
        yield ("shop.example", "198.51.100.1")

    summary = SenderHistory(flaky, today=lambda: TODAY)
    assert summary.refresh() and len(summary) == 2
    assert summary.refresh() is False  # half a read never replaces a whole one
    assert len(summary) == 2 and summary.state == "ready"


def test_no_reader_or_zero_days_is_no_history() -> None:
    assert SenderHistory(None).refresh() is False
    assert SenderHistory(reader(PAIRS), days=0).refresh() is False


def test_the_background_refresh_never_blocks_a_message() -> None:
    """The first refresh runs in the thread: while the store hangs, answers are immediate
    ("not known"); when it answers, the summary appears."""
    release = threading.Event()
    entered = threading.Event()

    def slow(since: date) -> Iterator[tuple[str, str]]:
        entered.set()
        assert release.wait(10)
        yield ("bank.example", "192.0.2.10")

    summary = SenderHistory(slow, refresh_seconds=3600, today=lambda: TODAY)
    summary.start()
    try:
        assert entered.wait(10)
        assert summary.known_network("bank.example", "192.0.2.10") == ""  # no waiting
        release.set()
        for _ in range(200):
            if summary.refreshes:
                break
            threading.Event().wait(0.05)
        assert summary.known_network("bank.example", "192.0.2.10") == "192.0.2.0/24"
    finally:
        release.set()
        summary.stop()
        summary.join(10)


def test_the_background_thread_refreshes_again_and_stops() -> None:
    counted = threading.Semaphore(0)

    def read(since: date) -> Iterator[tuple[str, str]]:
        counted.release()
        return iter(PAIRS)

    summary = SenderHistory(read, refresh_seconds=1, today=lambda: TODAY)
    summary.start()
    try:
        assert counted.acquire(timeout=10) and counted.acquire(timeout=10)  # twice
    finally:
        summary.stop()
        summary.join(10)
    assert summary._thread is not None and not summary._thread.is_alive()


# --- the store --------------------------------------------------------------------------------

POLICY = PublishedPolicy("bank.example", "treewalk", "reject", "reject", "reject", "r", "r", "n")


def report(source_ip: str, *, dkim: str = "pass", spf: str = "fail", author: str = "bank.example",
           day: date = TODAY) -> ReportRecord:
    return ReportRecord(day=day, policy_domain="bank.example", rua="", published=POLICY,
                        source_ip=source_ip, header_from=author, envelope_from=author,
                        disposition="pass", dmarc_dkim=dkim, dmarc_spf=spf)


def test_store_reader_reads_passing_sources(tmp_path: Path) -> None:
    location = str(tmp_path / "reports.sqlite")
    store = open_store(location)
    store.write([report("192.0.2.10"), report("198.51.100.5", dkim="fail"),
                 report("203.0.113.5", dkim="fail", spf="pass"),
                 report("2001:db8::1", day=date(2026, 1, 1))])
    store.close()
    summary = SenderHistory(store_reader(location), today=lambda: TODAY)
    assert summary.refresh()
    assert summary.known_network("bank.example", "192.0.2.99")
    assert summary.known_network("bank.example", "203.0.113.1")  # SPF-aligned pass counts
    assert not summary.known_network("bank.example", "198.51.100.5")  # failed DMARC
    assert not summary.known_network("bank.example", "2001:db8::1")  # too long ago


def test_store_reader_never_creates_a_store(tmp_path: Path) -> None:
    location = tmp_path / "absent.sqlite"
    summary = SenderHistory(store_reader(str(location)), today=lambda: TODAY)
    assert summary.refresh() and len(summary) == 0
    assert not location.exists()


def test_a_broken_store_file_is_unavailable(tmp_path: Path) -> None:
    location = tmp_path / "reports.sqlite"
    location.write_bytes(b"this is not a database" * 100)
    summary = SenderHistory(store_reader(str(location)), today=lambda: TODAY)
    assert summary.refresh() is False and summary.state == "unavailable"


def test_an_unreachable_postgresql_is_unavailable() -> None:
    summary = SenderHistory(store_reader("postgresql://u:secret@127.0.0.1:1/none"),
                            today=lambda: TODAY)
    assert summary.refresh() is False and summary.state == "unavailable"


# --- one history per worker ------------------------------------------------------------------

def config(tmp_path: Path, **policy: object) -> object:
    return settings_from_mapping({"milter": {"authserv_id": "mx.test.example"},
                                  "reports": {"store": str(tmp_path / "r.sqlite")},
                                  "policy": {"history_refresh": "1h", **policy}})


def test_sender_history_is_shared_until_its_settings_change(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setattr(history_module, "_shared", None)
    assert sender_history(config(tmp_path, dmarc_reject="always")) is None  # type: ignore[arg-type]
    assert sender_history(config(tmp_path, dmarc_reject="never")) is None  # type: ignore[arg-type]
    assert sender_history(config(tmp_path, history_days=0)) is None  # type: ignore[arg-type]
    first = sender_history(config(tmp_path))  # type: ignore[arg-type]
    try:
        assert first is not None
        assert sender_history(config(tmp_path, dry_run=True)) is first  # type: ignore[arg-type]
        second = sender_history(config(tmp_path, history_days=7))  # type: ignore[arg-type]
        assert second is not None and second is not first and second.days == 7
        first.join(10)
        assert first._thread is not None and not first._thread.is_alive()  # the old one stopped
        assert sender_history(config(tmp_path, dmarc_reject="never")) is None  # type: ignore[arg-type]
        second.join(10)
        assert second._thread is not None and not second._thread.is_alive()  # switched off
        assert history_module._shared is None
    finally:
        for summary in (first, history_module._shared[1] if history_module._shared else None):
            if summary is not None:
                summary.stop()
                summary.join(10)
        monkeypatch.setattr(history_module, "_shared", None)
