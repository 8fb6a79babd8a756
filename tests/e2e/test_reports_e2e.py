"""DMARC aggregate reports end to end: ``mailsec-milter reports send`` (the real command, its
own process) checks destinations in a real DNS server (Unbound) and submits to a real Postfix,
which relays to smtp-sink; each report that arrives is parsed with parsedmarc, and its counts,
IPs and results equal what the store holds. A third-party destination that does not
authorise the policy domain (RFC 9990 §4) gets nothing.

The store is filled directly (ReportStore.write, as the daemon's recorder writes it), so this
test covers sending; recording through the milter has its own tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import parsedmarc
import pytest

from mailsec_milter.reports.record import ReportRecord
from mailsec_milter.reports.store import open_store
from tests.reports.test_store import POLICY, record
from tests.support.milterproc import REPO

from .harness import DnsServer, PostfixInstance, SinkMessage

pytestmark = pytest.mark.e2e

ZONE = [
    'victim.example._report._dmarc.reports.example.net. 300 TXT "v=DMARC1"',
    'other.example._report._dmarc.reports.example.net. 300 TXT "v=spf1 -all"',
]


def _record(domain: str, rua: str, day: object, **changes: object) -> ReportRecord:
    fields: dict[str, object] = {"header_from": domain, **changes}
    return record(policy_domain=domain, rua=rua, published=replace(POLICY, domain=domain),
                  day=day, **fields)  # type: ignore[arg-type]


def test_reports_arrive_through_postfix_and_parsedmarc_reads_what_was_stored(
        tmp_path: Path, dns_server_factory: Callable[..., DnsServer],
        postfix_factory: Callable[..., PostfixInstance]) -> None:
    dns = dns_server_factory(ZONE)
    postfix = postfix_factory(None, relay_domains=("example.net", "victim.example",
                                                   "other.example"))
    day = datetime.now(UTC).date() - timedelta(days=1)
    store_path = tmp_path / "reports.sqlite"
    store = open_store(str(store_path))
    store.write(
        [_record("victim.example", "mailto:dmarc@victim.example,"
                 "mailto:agg@reports.example.net", day)] * 5
        + [_record("victim.example", "mailto:dmarc@victim.example,"
                   "mailto:agg@reports.example.net", day, source_ip="203.0.113.7",
                   disposition="reject", dmarc_dkim="fail", dmarc_spf="fail",
                   dkim=(("forger.example", "k", "fail"),),
                   spf=("forger.example", "mfrom", "pass"))] * 3
        + [_record("other.example", "mailto:agg@reports.example.net,"
                   "mailto:postmaster@other.example", day, source_ip="2001:db8::7")] * 2)
    expected = {domain: sorted((r.source_ip, r.messages, r.disposition, r.dmarc_dkim,
                                r.dmarc_spf) for r in store.rows(domain, day, day))
                for domain in ("victim.example", "other.example")}
    store.close()
    host, port = postfix.smtp_address
    config = tmp_path / "mailsec-milter.toml"
    config.write_text(
        f'[dns]\nnameservers = ["{dns.address}"]\ntimeout = "2s"\n'
        f'[reports]\nstore = "{store_path}"\norg_name = "Example Receiver"\n'
        f'from = "dmarc-reports@receiver.example"\nsubmit = "{host}:{port}"\n')
    result = subprocess.run(
        [sys.executable, "-m", "mailsec_milter", "reports", "send", "--config", str(config),
         "--period", day.isoformat()], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skip agg@reports.example.net (not_authorised" in result.stdout, result.stdout

    deadline = time.monotonic() + 60
    arrived: list[SinkMessage] = []
    while time.monotonic() < deadline and len(arrived) < 3:
        arrived = postfix.sink_messages()
        time.sleep(0.2)
    by_rcpt = {m.rcpts[0]: m for m in arrived}
    # victim.example authorised reports.example.net; other.example did not (v=spf1 ...)
    assert sorted(by_rcpt) == ["agg@reports.example.net", "dmarc@victim.example",
                               "postmaster@other.example"], result.stdout
    for rcpt, message in by_rcpt.items():
        parsed = parsedmarc.parse_report_email(message.content, offline=True,
                                               always_use_local_files=True)
        assert parsed["report_type"] == "aggregate"
        report = parsed["report"]
        domain = report["policy_published"]["domain"]
        got = sorted((r["source"]["ip_address"], r["count"],
                      r["policy_evaluated"]["disposition"], r["policy_evaluated"]["dkim"],
                      r["policy_evaluated"]["spf"]) for r in report["records"])
        assert got == expected[domain], rcpt
        subject = str(message.parsed()["Subject"]).replace("\n", "").split()
        assert subject[-1] == report["report_metadata"]["report_id"]
    # a second run sends nothing again
    again = subprocess.run(
        [sys.executable, "-m", "mailsec_milter", "reports", "send", "--config", str(config),
         "--period", day.isoformat()], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert again.returncode == 0 and "0 sent" in again.stdout, again.stdout
    time.sleep(1)
    assert len(postfix.sink_messages()) == 3
