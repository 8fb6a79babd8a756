"""Sending: rua parsing, RFC 9990 §4 authorisation, the safety knobs, claims (one report per
domain across hosts, never twice), retries, SMTP submission to a loopback sink, and what
parsedmarc (a consumer nobody here wrote) reads from what we sent."""

from __future__ import annotations

import email
import email.policy
import gzip
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import parsedmarc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailsec_milter.config import Settings, settings_from_mapping
from mailsec_milter.dns import DnsOutcome, DnsResult, StaticResolver
from mailsec_milter.reports.destinations import (
    MAX_URIS_READ,
    Authorisation,
    Destination,
    Skip,
    check_destination,
    parse_rua,
)
from mailsec_milter.reports.record import ReportRecord
from mailsec_milter.reports.sending import (
    SendingOffError,
    SmtpSubmitter,
    reporter_for,
    send_period,
)
from mailsec_milter.reports.store import ReportStore, open_store
from mailsec_milter.reports.xmlreport import Period
from tests.reports.test_store import DAY, POLICY, record
from tests.support.smtpsink import SmtpSink

PERIOD = Period.day(DAY)
NOW = datetime(2026, 12, 8, 0, 30, tzinfo=UTC)
FROM = "dmarc-reports@receiver.example"


def sending_settings(**reports: Any) -> Settings:
    table = {"org_name": "Example Receiver", "from": FROM, **reports}
    return settings_from_mapping({"reports": table}, hostname=lambda: "mx.receiver.example")


def zone(*lines: str) -> StaticResolver:
    return StaticResolver.from_zone_text("\n".join(lines))


class Recorder:
    """A submitter that keeps what it was given (and can refuse or defer addresses)."""

    def __init__(self, refuse: set[str] = frozenset(), defer: set[str] = frozenset()) -> None:
        self.sent: list[tuple[str, EmailMessage]] = []  # parsed as a reader would
        self.refuse, self.defer = refuse, defer

    def submit(self, data: bytes, sender: str, recipient: str) -> tuple[str, str]:
        assert sender == FROM
        if recipient in self.refuse:
            return "failed", "550 no"
        if recipient in self.defer:
            return "defer", "451 later"
        message = email.message_from_bytes(data, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.sent.append((recipient, message))
        return "sent", "250 ok"

    def close(self) -> None:
        return None


def domain_record(domain: str, rua: str, **changes: Any) -> ReportRecord:
    fields: dict[str, Any] = {"header_from": domain, **changes}
    return record(policy_domain=domain, rua=rua, published=replace(POLICY, domain=domain),
                  **fields)


def send(store: ReportStore, settings: Settings, resolver: StaticResolver, submitter: Any,
         **kw: Any) -> tuple[Any, Any]:
    return send_period(store, settings, resolver, PERIOD, submitter, now=NOW,
                       host=kw.pop("host", "mx1"), **kw)


# --- the rua list ---------------------------------------------------------------------------

def test_rua_keeps_only_wellformed_mailto_addresses_with_reasons() -> None:
    found, refused = parse_rua(
        "mailto:Dmarc@Victim.Example, https://victim.example/r, not a uri, "
        "mailto:two@a.example,b@b.example, mailto:sp ace@x.example, mailto:@x.example, "
        "mailto:a@[192.0.2.1], mailto:x@localhost, mailto:%0d%0aBcc:evil@x.example, "
        "mailto:big@victim.example!10m, mailto:q@victim.example?subject=hi, "
        "mailto:Dmarc@victim.example", limit=5)
    assert found == [Destination("Dmarc@victim.example", "victim.example"),
                     Destination("two@a.example", "a.example"),
                     Destination("big@victim.example", "victim.example"),
                     Destination("q@victim.example", "victim.example")]
    reasons = {r.uri: r.reason for r in refused}
    assert reasons["https://victim.example/r"] is Skip.NOT_MAILTO
    assert reasons["not a uri"] is Skip.MALFORMED
    assert reasons["b@b.example"] is Skip.MALFORMED  # a second address after a comma
    for bad in ("mailto:sp ace@x.example", "mailto:@x.example", "mailto:a@[192.0.2.1]",
                "mailto:x@localhost", "mailto:%0d%0aBcc:evil@x.example"):
        assert reasons[bad] is Skip.MALFORMED, bad
    assert reasons["mailto:Dmarc@victim.example"] is Skip.DUPLICATE


def test_a_huge_rua_list_is_cut_and_capped() -> None:
    huge = ",".join(f"mailto:r{i}@victim{i}.example" for i in range(10_000))
    found, refused = parse_rua(huge, limit=5)
    assert len(found) == 5
    assert sum(r.reason is Skip.TOO_MANY for r in refused) == MAX_URIS_READ - 5 + 1
    assert len(refused) <= MAX_URIS_READ + 1  # bounded work and output, whatever is published


def test_rua_that_is_empty_or_garbage_gives_nothing() -> None:
    for rua in ("", ",,,", "mailto:", "\x00\x01", "mailto:a@b@c"):
        found, _refused = parse_rua(rua, limit=5)
        assert found == [], rua


# --- RFC 9990 §4 -----------------------------------------------------------------------------

def _psl() -> Any:
    from mailsec_milter.checks.dmarc import load_psl

    return load_psl()


def test_same_organisation_needs_no_dns() -> None:
    resolver = zone()
    verdict = check_destination("mail.victim.example", Destination("d@victim.example",
                                                                   "victim.example"),
                                resolver, _psl(), 5)
    assert verdict.outcome is Authorisation.SAME_ORGANISATION and resolver.queries == []


@pytest.mark.parametrize(("zone_line", "outcome"), [
    ('victim.example._report._dmarc.third.example. TXT "v=DMARC1"', Authorisation.AUTHORISED),
    ('victim.example._report._dmarc.third.example. TXT "v=DMARC1;"', Authorisation.AUTHORISED),
    ('victim.example._report._dmarc.third.example. TXT "v=spf1 -all"', Authorisation.REFUSED),
    ('victim.example._report._dmarc.third.example. TXT "p=none; v=DMARC1"',
     Authorisation.REFUSED),
    ("other.example. TXT \"v=DMARC1\"", Authorisation.REFUSED),  # NXDOMAIN
    ("victim.example._report._dmarc.third.example. TXT TIMEOUT", Authorisation.DNS_TROUBLE),
    ("victim.example._report._dmarc.third.example. TXT SERVFAIL", Authorisation.DNS_TROUBLE),
])
def test_external_destinations_are_authorised_by_dns(zone_line: str,
                                                     outcome: Authorisation) -> None:
    resolver = zone(zone_line)
    verdict = check_destination("victim.example", Destination("d@third.example",
                                                              "third.example"),
                                resolver, _psl(), 5)
    assert verdict.outcome is outcome, verdict.detail
    assert resolver.queries == [("victim.example._report._dmarc.third.example", "TXT")]


def test_an_override_rua_is_used_on_the_same_host_only() -> None:
    same = zone('victim.example._report._dmarc.third.example. TXT '
                '"v=DMARC1; rua=mailto:other@third.example"')
    verdict = check_destination("victim.example", Destination("d@third.example",
                                                              "third.example"), same, _psl(), 5)
    assert verdict.outcome is Authorisation.AUTHORISED
    assert verdict.destinations == (Destination("other@third.example", "third.example"),)
    elsewhere = zone('victim.example._report._dmarc.third.example. TXT '
                     '"v=DMARC1; rua=mailto:x@fourth.example"')
    verdict = check_destination("victim.example", Destination("d@third.example",
                                                              "third.example"),
                                elsewhere, _psl(), 5)
    assert verdict.outcome is Authorisation.REFUSED and verdict.destinations == ()


def test_a_name_longer_than_dns_allows_is_refused_without_a_query() -> None:
    resolver = zone()
    long_domain = ".".join(["a" * 60] * 3) + ".example"
    verdict = check_destination(long_domain, Destination("d@" + "b" * 60 + ".third.example",
                                                         "b" * 60 + ".third.example"),
                                resolver, _psl(), 5)
    assert verdict.outcome is Authorisation.REFUSED and resolver.queries == []


# --- a whole run -----------------------------------------------------------------------------

AUTHORISED = 'victim.example._report._dmarc.third.example. TXT "v=DMARC1"'


def test_sending_is_off_until_org_name_and_from_are_set() -> None:
    with pytest.raises(SendingOffError, match=r"org_name.*from"):
        reporter_for(Settings.defaults())
    with pytest.raises(SendingOffError, match="from"):
        reporter_for(settings_from_mapping({"reports": {"org_name": "X"}}))
    assert reporter_for(sending_settings()).receiver == "receiver.example"


def test_authorised_destinations_get_the_report_refused_ones_do_not(store: ReportStore) -> None:
    store.write([domain_record("victim.example", "mailto:d@victim.example,"
                               "mailto:r@third.example,mailto:x@fourth.example")] * 3)
    submitter = Recorder()
    outcome, lines = send(store, sending_settings(), zone(AUTHORISED), submitter)
    assert sorted(to for to, _m in submitter.sent) == ["d@victim.example", "r@third.example"]
    assert (outcome.sent, outcome.destinations_sent) == (1, 2)
    assert outcome.skipped == {"not_authorised": 1}
    assert lines[0].state == "sent"
    assert store.claim_of("victim.example", DAY).state == "sent"  # type: ignore[union-attr]


def test_dns_trouble_defers_and_a_later_run_sends_once(store: ReportStore) -> None:
    store.write([domain_record("victim.example", "mailto:d@victim.example,"
                               "mailto:r@third.example,ftp://x")])
    troubled = zone("victim.example._report._dmarc.third.example. TXT TIMEOUT")
    submitter = Recorder()
    outcome, _ = send(store, sending_settings(), troubled, submitter)
    assert outcome.deferred == 1 and [to for to, _m in submitter.sent] == ["d@victim.example"]
    assert outcome.skipped == {"not_mailto": 1}
    claim = store.claim_of("victim.example", DAY)
    assert claim is not None and (claim.state, claim.attempts) == ("deferred", 1)
    outcome, _ = send(store, sending_settings(), zone(AUTHORISED), submitter, host="mx2")
    assert outcome.sent == 1 and outcome.skipped == {}
    # the address that had it is not sent to again; the deferred one now is
    assert [to for to, _m in submitter.sent] == ["d@victim.example", "r@third.example"]
    outcome, lines = send(store, sending_settings(), zone(AUTHORISED), submitter)
    assert lines[0].state == "claimed-elsewhere" and len(submitter.sent) == 2  # never twice


def test_dns_trouble_is_retried_at_most_max_attempts_then_dropped(store: ReportStore) -> None:
    store.write([domain_record("victim.example", "mailto:r@third.example")])
    troubled = zone("victim.example._report._dmarc.third.example. TXT SERVFAIL")
    states = []
    for _ in range(4):
        _outcome, lines = send(store, sending_settings(max_attempts=3), troubled, Recorder())
        states.append(lines[0].state)
    assert states == ["deferred", "deferred", "failed", "claimed-elsewhere"]
    claim = store.claim_of("victim.example", DAY)
    assert claim is not None and (claim.state, claim.attempts) == ("failed", 3)


def test_the_mta_down_defers_every_report_without_waiting_on_each(store: ReportStore) -> None:
    store.write([domain_record(f"d{i}.example", f"mailto:r@d{i}.example") for i in range(5)])
    with SmtpSink() as sink:
        dead = sink.address
    submitter = SmtpSubmitter(dead, timeout=5)
    outcome, _ = send(store, sending_settings(), zone(), submitter)
    assert outcome.deferred == 5 and outcome.sent == 0


def test_a_permanent_refusal_fails_and_is_not_retried(store: ReportStore) -> None:
    store.write([domain_record("victim.example", "mailto:d@victim.example")])
    outcome, lines = send(store, sending_settings(), zone(),
                          Recorder(refuse={"d@victim.example"}))
    assert outcome.failed == 1 and lines[0].state == "failed"
    again, lines = send(store, sending_settings(), zone(), Recorder())
    assert lines[0].state == "claimed-elsewhere" and again.sent == 0


def test_the_daily_cap_per_destination_counts_every_run_and_host(store: ReportStore) -> None:
    rua = "mailto:agg@victim.example"
    store.write([domain_record(f"d{i}.victim.example", rua) for i in range(3)])
    submitter = Recorder()
    outcome, _ = send(store, sending_settings(max_per_destination=2), zone(), submitter)
    assert len(submitter.sent) == 2 and outcome.skipped == {"daily_cap": 1}
    store.write([domain_record("late.victim.example", rua)])
    outcome, _ = send(store, sending_settings(max_per_destination=2), zone(), submitter,
                      host="mx2")
    assert len(submitter.sent) == 2 and outcome.skipped == {"daily_cap": 1}


def test_suppressed_addresses_and_domains_get_nothing(store: ReportStore) -> None:
    store.write([domain_record("victim.example", "mailto:a@victim.example,"
                               "mailto:b@sub.victim.example,mailto:c@victim.example")])
    settings = sending_settings(suppress=["a@victim.example", "sub.victim.example"])
    submitter = Recorder()
    outcome, _ = send(store, settings, zone(), submitter)
    assert [to for to, _m in submitter.sent] == ["c@victim.example"]
    assert outcome.skipped == {"suppressed": 2}


def test_no_report_to_our_own_address_and_none_about_our_report_mail(
        store: ReportStore) -> None:
    store.write([
        domain_record("receiver.example", "mailto:" + FROM),  # mail from our report domain
        domain_record("victim.example", f"mailto:{FROM},mailto:x@receiver.example,"
                      "mailto:d@victim.example"),
    ])
    submitter = Recorder()
    outcome, lines = send(store, sending_settings(), zone(
        'victim.example._report._dmarc.receiver.example. TXT "v=DMARC1"'), submitter)
    assert [to for to, _m in submitter.sent] == ["d@victim.example"]
    assert outcome.skipped == {"own_address": 2, "only_report_mail": 1}
    assert {line.policy_domain: line.state for line in lines} == {
        "receiver.example": "skipped", "victim.example": "sent"}


def test_only_aligned_pass_domains(store: ReportStore) -> None:
    store.write([domain_record("forged.example", "mailto:d@forged.example",
                               dmarc_dkim="fail", dmarc_spf="fail", disposition="reject"),
                 domain_record("real.example", "mailto:d@real.example"),
                 domain_record("real.example", "mailto:d@real.example", dmarc_dkim="fail",
                               dmarc_spf="fail", disposition="reject", source_ip="192.0.2.9")])
    submitter = Recorder()
    outcome, _ = send(store, sending_settings(only_aligned_pass_domains=True), zone(),
                      submitter)
    assert [to for to, _m in submitter.sent] == ["d@real.example"]
    assert outcome.skipped == {"no_aligned_pass": 1}


def test_a_domain_without_rua_is_skipped(store: ReportStore) -> None:
    store.write([domain_record("quiet.example", "")])
    outcome, _ = send(store, sending_settings(), zone(), Recorder())
    assert outcome.skipped == {"no_rua": 1} and outcome.sent == 0


def test_dry_run_claims_nothing_and_says_why(store: ReportStore) -> None:
    store.write([domain_record("victim.example", "mailto:d@victim.example,ftp://x,"
                               "mailto:r@fourth.example")])
    submitter = Recorder()
    _outcome, lines = send(store, sending_settings(), zone(), submitter, dry_run=True)
    assert submitter.sent == [] and store.claims() == []
    assert [(t.address, t.action, t.reason) for t in lines[0].targets] == [
        ("ftp://x", "skip", "not_mailto"), ("d@victim.example", "send", ""),
        ("r@fourth.example", "skip", "not_authorised")]


def test_hosts_racing_on_one_store_send_one_report_per_domain(store_location: str) -> None:
    """Several MX hosts run ``reports send`` at once on one store (PostgreSQL: a fleet)."""
    domains = [f"d{i}.example" for i in range(12)]
    first = open_store(store_location)
    first.write([domain_record(d, f"mailto:r@{d}") for d in domains])
    stores = [first] + [open_store(store_location) for _ in range(2)]
    barrier = threading.Barrier(len(stores))
    with SmtpSink() as sink:
        def run(s: ReportStore, host: str) -> None:
            barrier.wait()
            send(s, sending_settings(submit=sink.address), zone(), SmtpSubmitter(sink.address),
                 host=host)

        threads = [threading.Thread(target=run, args=(s, f"mx{i}"))
                   for i, s in enumerate(stores)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        received = sorted(m.recipients[0] for m in sink.state.messages)
    assert received == sorted(f"r@{d}" for d in domains)  # each exactly once
    assert {c.state for c in first.claims()} == {"sent"}
    for s in stores:
        s.close()


# --- the mail as it leaves, read back by parsedmarc ---------------------------------------------

def test_the_submitted_mail_is_what_section_3_5_asks_and_parsedmarc_reads_it(
        store: ReportStore) -> None:
    records = ([domain_record("victim.example", "mailto:d@victim.example")] * 7
               + [domain_record("victim.example", "mailto:d@victim.example",
                                source_ip="2001:db8::5", disposition="reject",
                                dmarc_dkim="fail", dmarc_spf="fail",
                                dkim=(("evil.example", "x", "fail"),),
                                spf=("evil.example", "mfrom", "softfail"))] * 2
               + [domain_record("victim.example", "mailto:d@victim.example",
                                header_from="news.victim.example", source_ip="198.51.100.7",
                                disposition="none", dmarc_dkim="fail", dmarc_spf="pass",
                                reasons=(("mailing_list", "List-Id"),))])
    store.write(records)
    with SmtpSink() as sink:
        outcome, _ = send(store, sending_settings(submit=sink.address), zone(),
                          SmtpSubmitter(sink.address))
        (received,) = sink.state.messages
    assert outcome.sent == 1 and received.recipients == ["d@victim.example"]
    assert received.sender == FROM
    message = email.message_from_bytes(received.data, policy=email.policy.default)
    (attachment,) = list(message.iter_attachments())
    rid = str(message["Subject"]).rsplit(" ", 1)[1]
    assert str(message["Subject"]) == (f"Report Domain: victim.example Submitter: "
                                       f"receiver.example Report-ID: {rid}")
    assert attachment.get_content_type() == "application/gzip"
    assert attachment.get_filename() == (f"receiver.example!victim.example!{PERIOD.begin}!"
                                         f"{PERIOD.end}!{rid}.xml.gz")
    assert message.get_body(("plain",)) is not None
    assert message["Auto-Submitted"] == "auto-generated"

    parsed = parsedmarc.parse_report_email(received.data, offline=True,
                                           always_use_local_files=True)
    assert parsed["report_type"] == "aggregate"
    report = parsed["report"]
    assert report["report_metadata"]["report_id"] == rid
    assert report["report_metadata"]["org_email"] == FROM
    assert report["policy_published"]["domain"] == "victim.example"
    got = sorted((r["source"]["ip_address"], r["count"], r["policy_evaluated"]["disposition"],
                  r["policy_evaluated"]["dkim"], r["policy_evaluated"]["spf"],
                  r["identifiers"]["header_from"],
                  tuple((d["domain"], d["selector"], d["result"])
                        for d in r["auth_results"]["dkim"]),
                  tuple((s["domain"], s["result"]) for s in r["auth_results"]["spf"]),
                  tuple(x["type"] for x in r["policy_evaluated"]["policy_override_reasons"]))
                 for r in report["records"])
    stored = sorted((row.source_ip, row.messages, row.disposition, row.dmarc_dkim,
                     row.dmarc_spf, row.header_from, row.dkim,
                     ((row.spf[0], row.spf[2]),) if row.spf else (),
                     tuple(t for t, _c in row.reasons))
                    for row in store.rows("victim.example", DAY, DAY))
    assert got == stored
    assert sum(r["count"] for r in report["records"]) == len(records)


def test_status_counts_follow_a_run(store: ReportStore, tmp_path: Any) -> None:
    from mailsec_milter.reports.status import add_run, metric_families, read_status

    store.write([domain_record("victim.example", "mailto:d@victim.example,ftp://x")])
    outcome, _ = send(store, sending_settings(), zone(), Recorder())
    path = tmp_path / "reports-status.json"
    add_run(path, outcome, 1000.0, succeeded=True)
    status = add_run(path, outcome, 2000.0, succeeded=True)
    assert (status.sent, status.skipped, status.runs, status.last_success) == (
        2, {"not_mailto": 2}, 2, 2000.0)
    families = {f.name: f for f in metric_families(read_status(path))}
    assert families["mailsec_reports_sent"].samples[0].value == 2
    skipped = families["mailsec_reports_skipped"].samples
    # every known reason is exported from the start (at 0), the one that counted at 2
    assert {s.labels["reason"]: s.value for s in skipped if s.value} == {"not_mailto": 2}
    assert {s.labels["reason"] for s in skipped} >= {"not_mailto", "not_authorised", "daily_cap"}


def test_a_missing_or_corrupt_status_file_reads_as_zero(tmp_path: Any) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from mailsec_milter.reports.status import StatusCollector, read_status

    path = tmp_path / "reports-status.json"
    assert read_status(path).sent == 0
    path.write_text("{not json")
    assert read_status(path).runs == 0
    path.write_text('{"sent": -5, "skipped": {"x": "y"}, "last_success": "no"}')
    assert read_status(path).sent == 0 and read_status(path).skipped == {}
    registry = CollectorRegistry()
    registry.register(StatusCollector(path))
    text = generate_latest(registry).decode()
    assert "mailsec_reports_sent_total 0.0" in text
    assert "mailsec_reports_last_success_timestamp_seconds 0.0" in text


def test_the_report_is_built_for_the_period_asked_only(store: ReportStore) -> None:
    store.write([domain_record("victim.example", "mailto:d@victim.example"),
                 domain_record("victim.example", "mailto:d@victim.example",
                               day=DAY + timedelta(days=1))])
    submitter = Recorder()
    send(store, sending_settings(), zone(), submitter)
    (_, message) = submitter.sent[0]
    assert "Messages:  1 in 1 records" in message.get_body(("plain",)).get_content()


def test_a_dns_result_type_the_check_ignores_is_not_authorisation() -> None:
    resolver = StaticResolver([DnsResult("victim.example._report._dmarc.third.example", "TXT",
                                         DnsOutcome.NODATA)])
    verdict = check_destination("victim.example", Destination("d@third.example",
                                                              "third.example"),
                                resolver, _psl(), 5)
    assert verdict.outcome is Authorisation.REFUSED


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300) | st.lists(
    st.sampled_from(["mailto:a@b.example", "mailto:", "mailto:x@y", "http://x", "mailto:%00@x.ex",
                     "mailto:a@b.example!5m", "MAILTO:Q@R.EXAMPLE", " ", "mailto:a@xn--.example",
                     "mailto:\u00e9@b.example", "mailto:a@b\u00e9.example", "::", "mailto:a@@b"]),
    max_size=60).map(",".join))
def test_any_rua_text_gives_at_most_limit_plain_addresses(rua: str) -> None:
    found, refused = parse_rua(rua, limit=3)
    assert len(found) <= 3 and len(set(found)) == len(found)
    assert len(refused) <= MAX_URIS_READ + 1
    for destination in found:
        local, _, domain = destination.address.rpartition("@")
        assert domain == destination.domain and domain.isascii() and "." in domain
        assert local and local.isascii() and not any(c in local for c in " ,<>\"\r\n")


def test_a_domain_with_10000_source_ips_in_a_day_gives_one_valid_report(
        store: ReportStore) -> None:
    store.write([domain_record("big.example", "mailto:d@big.example",
                               source_ip=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
                 for i in range(10_000)])
    submitter = Recorder()
    outcome, lines = send(store, sending_settings(), zone(), submitter)
    assert outcome.sent == 1 and lines[0].messages == 10_000
    ((_to, message),) = submitter.sent
    (attachment,) = list(message.iter_attachments())
    xml = gzip.decompress(attachment.get_content())
    assert xml.count(b"<record>") == 10_000


def test_dry_run_applies_the_daily_cap_to_what_it_plans(store: ReportStore) -> None:
    store.write([domain_record(f"d{i}.victim.example", "mailto:agg@victim.example")
                 for i in range(3)])
    _outcome, lines = send(store, sending_settings(max_per_destination=2), zone(), Recorder(),
                           dry_run=True)
    actions = sorted(t.action + ":" + t.reason for line in lines for t in line.targets)
    assert actions == ["send:", "send:", "skip:daily_cap"]


def test_a_report_that_does_not_validate_is_not_sent_and_the_others_are(
        store: ReportStore) -> None:
    store.write([domain_record("bad.example", "mailto:d@bad.example", disposition="bogus"),
                 domain_record("good.example", "mailto:d@good.example")])
    submitter = Recorder()
    outcome, lines = send(store, sending_settings(), zone(), submitter)
    assert [to for to, _m in submitter.sent] == ["d@good.example"]
    assert outcome.skipped == {"invalid_report": 1} and outcome.failed == 1
    bad = next(line for line in lines if line.policy_domain == "bad.example")
    assert bad.state == "skipped" and "RFC 9990" in bad.note and "bogus" in bad.note


def test_a_skipped_report_is_claimed_once_and_not_counted_again(store: ReportStore) -> None:
    store.write([domain_record("quiet.example", "")])
    first, _ = send(store, sending_settings(), zone(), Recorder())
    second, lines = send(store, sending_settings(), zone(), Recorder(), host="mx2")
    assert first.skipped == {"no_rua": 1} and second.skipped == {}
    assert lines[0].state == "claimed-elsewhere"
    claim = store.claim_of("quiet.example", DAY)
    assert claim is not None and claim.state == "skipped" and "no_rua" in claim.detail


def test_a_rua_cut_at_its_length_limit_never_yields_a_shortened_address() -> None:
    from mailsec_milter.reports.destinations import MAX_RUA_CHARS

    head = "mailto:a@victim.example,"
    filler = "x" * (MAX_RUA_CHARS - len(head) - len("mailto:b@victim.exam"))
    rua = head + "ftp://" + filler[6:] + ",mailto:b@victim.example.attacker.example"
    assert len(rua) > MAX_RUA_CHARS
    found, refused = parse_rua(rua, limit=5)
    assert [d.address for d in found] == ["a@victim.example"]
    assert any(r.reason is Skip.TOO_MANY for r in refused)


def test_a_non_ascii_org_name_is_encoded_and_reads_back(store: ReportStore) -> None:
    store.write([domain_record("victim.example", "mailto:d@victim.example")])
    submitter = Recorder()
    send(store, sending_settings(org_name="Exämple Mäil"), zone(), submitter)
    ((_to, message),) = submitter.sent
    assert message["From"].addresses[0].display_name == "Exämple Mäil"
    assert message["From"].addresses[0].addr_spec == FROM
    assert "Exämple Mäil" in message.get_body(("plain",)).get_content()
    (attachment,) = list(message.iter_attachments())
    assert b"<org_name>Ex\xc3\xa4mple M\xc3\xa4il</org_name>" in gzip.decompress(
        attachment.get_content())


def test_the_check_through_the_real_resolver_allows_refuses_and_defers() -> None:
    """CachingResolver (the one `reports send` uses, [dns] nameservers) against a loopback
    DNS server: an answer allows, NXDOMAIN refuses, a server that never answers defers."""
    from mailsec_milter.dns import CachingResolver, ResolverSettings
    from tests.support.dnsserver import DnsTestServer

    with DnsTestServer() as server:
        server.add("victim.test._report._dmarc.ok.test", "TXT", "v=DMARC1")
        server.exists("no.test")
        server.drop("victim.test._report._dmarc.dead.test")
        resolver = CachingResolver(ResolverSettings(nameservers=(server.nameserver,),
                                                    timeout=0.5))
        try:
            verdicts = {name: check_destination("victim.test", Destination(f"r@{name}", name),
                                                resolver, _psl(), 5).outcome
                        for name in ("ok.test", "no.test", "dead.test")}
        finally:
            resolver.close()
    assert verdicts == {"ok.test": Authorisation.AUTHORISED,
                        "no.test": Authorisation.REFUSED,
                        "dead.test": Authorisation.DNS_TROUBLE}
