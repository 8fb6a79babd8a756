"""The store methods sending adds (both backends): reclaiming a deferred report (one host
wins), deliveries and the daily count, ``top`` with its disposition split, the schema step."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest

from mailsec_milter.cli import main
from mailsec_milter.reports.store import MIGRATIONS, ReportStore, open_store
from tests.reports.test_store import DAY, record


def test_a_deferred_report_is_reclaimed_by_exactly_one_host(store_location: str) -> None:
    stores = [open_store(store_location) for _ in range(4)]
    assert stores[0].claim("victim.example", DAY, DAY, "rid", "mx0")
    assert not stores[1].reclaim("victim.example", DAY, "mx1", 3)  # not deferred: no
    stores[0].set_claim_state("victim.example", DAY, "deferred", "dns", attempted=True)
    wins: list[bool] = []
    barrier = threading.Barrier(len(stores))

    def race(s: ReportStore, host: str) -> None:
        barrier.wait()
        wins.append(s.reclaim("victim.example", DAY, host, 3))

    threads = [threading.Thread(target=race, args=(s, f"mx{i}")) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False, False, False, True]
    claim = stores[0].claim_of("victim.example", DAY)
    assert claim is not None and claim.state == "claimed" and claim.attempts == 1
    for s in stores:
        s.close()


def test_attempts_bound_reclaiming(store: ReportStore) -> None:
    store.claim("victim.example", DAY, DAY, "rid", "mx0")
    for _ in range(2):
        store.set_claim_state("victim.example", DAY, "deferred", attempted=True)
    assert not store.reclaim("victim.example", DAY, "mx1", 2)
    assert store.reclaim("victim.example", DAY, "mx1", 3)


def test_deliveries_and_the_daily_count(store: ReportStore) -> None:
    today = DAY + timedelta(days=1)
    store.record_delivery("a.example", DAY, "d@x.example", "deferred", today)
    store.record_delivery("a.example", DAY, "d@x.example", "sent", today)  # replaces
    store.record_delivery("b.example", DAY, "d@x.example", "sent", today)
    store.record_delivery("c.example", DAY, "d@x.example", "skipped", today)
    store.record_delivery("d.example", DAY, "d@x.example", "sent", DAY)
    assert store.deliveries("a.example", DAY) == {"d@x.example": "sent"}
    assert store.sent_on("d@x.example", today) == 2
    assert store.purge(0, today=today + timedelta(days=1)) == 0
    assert store.deliveries("a.example", DAY) == {}


def test_top_by_domain_and_by_source_with_the_disposition_split(store: ReportStore) -> None:
    store.write([record()] * 3 + [record(source_ip="203.0.113.9", disposition="reject")] * 5
                + [record(header_from="news.victim.example", disposition="quarantine")]
                + [record(day=DAY + timedelta(days=1), disposition="reject")] * 50)
    assert store.top(DAY, DAY, "domain", 10) == [
        ("victim.example", 8, {"pass": 3, "reject": 5}),
        ("news.victim.example", 1, {"quarantine": 1})]
    assert store.top(DAY, DAY, "source", 1) == [("203.0.113.9", 5, {"reject": 5})]
    with pytest.raises(KeyError):
        store.top(DAY, DAY, "header_from; DROP TABLE report_rows", 1)


def test_the_deliveries_table_is_a_schema_step_of_its_own() -> None:
    assert any("report_deliveries" in statement for statement in MIGRATIONS[1])
    assert not any("report_deliveries" in statement for statement in MIGRATIONS[0])


def test_a_wrong_postgresql_password_is_a_clear_message_in_the_commands(
        postgres: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.support.pgserver import PostgresServer

    assert isinstance(postgres, PostgresServer)
    config = tmp_path / "c.toml"
    config.write_text(f'[reports]\nstore = "{postgres.url_with_password("wrong-pw-42")}"\n')
    assert main(["reports", "list", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "wrong-pw-42" not in err and "***" in err and "password" in err
