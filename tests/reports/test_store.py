"""The report store on both backends: schema, aggregation, claims, retention, bad input."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailsec_milter.reports.record import PublishedPolicy, ReportRecord
from mailsec_milter.reports.store import MIGRATIONS, ReportStore, StoreError, open_store, redact

DAY = date(2026, 12, 7)
POLICY = PublishedPolicy("victim.example", "treewalk", "reject", "reject", "reject", "r", "r", "n")


def record(**changes: object) -> ReportRecord:
    base = ReportRecord(
        day=DAY, policy_domain="victim.example", rua="mailto:d@victim.example",
        published=POLICY, source_ip="192.0.2.1", header_from="victim.example",
        envelope_from="victim.example", disposition="pass", dmarc_dkim="pass",
        dmarc_spf="pass", reasons=(), dkim=(("victim.example", "s1", "pass"),),
        spf=("victim.example", "mfrom", "pass"))
    return replace(base, **changes)  # type: ignore[arg-type]


def test_schema_is_applied_once_and_versioned(store_location: str) -> None:
    first = open_store(store_location)
    assert first.schema_version == len(MIGRATIONS)
    first.close()
    again = open_store(store_location)  # a second open applies nothing twice
    assert again.schema_version == len(MIGRATIONS)
    again.close()


def test_equal_tuples_are_counted_in_one_row(store: ReportStore) -> None:
    store.write([record()] * 3)
    store.write([record(), record(source_ip="192.0.2.2")])
    rows = store.rows("victim.example", DAY, DAY)
    assert sorted((r.source_ip, r.messages) for r in rows) == [("192.0.2.1", 4),
                                                               ("192.0.2.2", 1)]
    first = next(r for r in rows if r.source_ip == "192.0.2.1")
    assert first.published == POLICY
    assert first.dkim == (("victim.example", "s1", "pass"),)
    assert first.spf == ("victim.example", "mfrom", "pass")


def test_days_and_domains_are_kept_apart(store: ReportStore) -> None:
    store.write([record(), record(day=DAY + timedelta(days=1)),
                 record(policy_domain="other.example", header_from="other.example")])
    assert store.policy_domains(DAY, DAY) == [("other.example", 1), ("victim.example", 1)]
    assert [d for d, _n, _m in store.days()] == [DAY, DAY + timedelta(days=1)]
    assert store.total_messages(DAY, DAY + timedelta(days=1)) == 3


def test_override_reasons_and_every_dkim_result_round_trip(store: ReportStore) -> None:
    reasons = (("mailing_list", "List-Id present"), ("policy_test_mode", "t=y"))
    dkim = (("victim.example", "a", "fail"), ("list.example", "b", "pass"))
    store.write([record(disposition="quarantine", dmarc_dkim="fail", dmarc_spf="fail",
                        reasons=reasons, dkim=dkim, spf=None)])
    (row,) = store.rows("victim.example", DAY, DAY)
    assert (row.reasons, row.dkim, row.spf, row.disposition) == (reasons, dkim, None,
                                                                  "quarantine")


def test_passing_sources_and_top_domains(store: ReportStore) -> None:
    store.write([record(), record(source_ip="203.0.113.9", dmarc_dkim="fail", dmarc_spf="fail",
                                  disposition="reject")]
                + [record(policy_domain="big.example", header_from="big.example",
                          published=replace(POLICY, domain="big.example", p="none"))] * 5)
    assert set(store.passing_sources(DAY)) == {("victim.example", "192.0.2.1"),
                                               ("big.example", "192.0.2.1")}
    assert store.top_policy_domains(DAY, DAY, 1) == [("big.example", 5, "none")]


def test_exactly_one_claim_wins(store_location: str) -> None:
    """Several hosts (threads with their own connections here) race for one report."""
    stores = [open_store(store_location) for _ in range(4)]
    wins: list[bool] = []
    barrier = threading.Barrier(len(stores))

    def race(s: ReportStore, host: str) -> None:
        barrier.wait()
        wins.append(s.claim("victim.example", DAY, DAY, f"id{host}", host))

    threads = [threading.Thread(target=race, args=(s, f"mx{i}")) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False, False, False, True]
    stores[0].set_claim_state("victim.example", DAY, "sent", attempted=True)
    (claim,) = stores[0].claims()
    assert (claim.state, claim.attempts) == ("sent", 1)
    for s in stores:
        s.close()


def test_retention_drops_old_days(store: ReportStore) -> None:
    store.write([record(day=DAY - timedelta(days=20)), record()])
    assert store.purge(14, today=DAY) == 1
    assert [d for d, _n, _m in store.days()] == [DAY]


def test_concurrent_writers_lose_no_count(store_location: str) -> None:
    """Workers (and MX hosts) write into one store at once: every message is counted."""
    stores = [open_store(store_location) for _ in range(3)]

    def write(s: ReportStore) -> None:
        for _ in range(20):
            s.write([record()] * 5)

    threads = [threading.Thread(target=write, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (row,) = stores[0].rows("victim.example", DAY, DAY)
    assert row.messages == 3 * 20 * 5
    for s in stores:
        s.close()


_IPS = st.sampled_from(["192.0.2.1", "192.0.2.2", "2001:db8::1"])
_DISPOSITIONS = st.sampled_from(["none", "pass", "quarantine", "reject"])


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(_IPS, _DISPOSITIONS, st.integers(0, 2)), min_size=1, max_size=40))
def test_every_message_is_counted_exactly_once_per_tuple(
        store_location: str, messages: list[tuple[str, str, int]]) -> None:
    s = open_store(store_location)
    try:
        before = {(r.day, r.source_ip, r.disposition): r.messages
                  for r in s.rows("victim.example", DAY, DAY + timedelta(days=2))}
        for start in range(0, len(messages), 7):  # in batches, as the recorder writes
            s.write([record(source_ip=ip, disposition=d, day=DAY + timedelta(days=k))
                     for ip, d, k in messages[start:start + 7]])
        expected = dict(before)
        for ip, d, k in messages:
            key = (DAY + timedelta(days=k), ip, d)
            expected[key] = expected.get(key, 0) + 1
        after = {(r.day, r.source_ip, r.disposition): r.messages
                 for r in s.rows("victim.example", DAY, DAY + timedelta(days=2))}
        assert after == expected
    finally:
        s.close()


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "reports.sqlite"
    path.write_bytes(b"this is not SQLite, it is a text file\n" * 100)
    with pytest.raises(StoreError, match=str(path)):
        open_store(str(path))


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        open_store(str(tmp_path / "nowhere" / "reports.sqlite"))


def test_a_wrong_password_is_a_clear_error_without_the_password(postgres: object) -> None:
    from tests.support.pgserver import PostgresServer
    assert isinstance(postgres, PostgresServer)
    url = postgres.url_with_password("wrong-password-123")
    with pytest.raises(StoreError) as caught:
        open_store(url)
    message = str(caught.value)
    assert "wrong-password-123" not in message and "***" in message
    assert "password" in message and "failed" in message


def test_redact_hides_only_the_password() -> None:
    assert redact("postgresql://u:s3cret@db.example:5432/x") == "postgresql://u:***@db.example:5432/x"
    assert redact("/var/lib/mailsec-milter/reports.sqlite").endswith("reports.sqlite")
