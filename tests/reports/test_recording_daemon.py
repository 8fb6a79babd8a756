"""Recording through the real daemon over the milter protocol: every message of several
domains and client IPs lands in the store (SQLite; two daemons into one REAL PostgreSQL), and a
PostgreSQL stopped in the middle of a load never costs a message: no tempfail, the drops are
counted, recording resumes when the store returns."""

from __future__ import annotations

import gzip
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from xml.etree import ElementTree

import pytest

from mailsec_milter.cli import main
from mailsec_milter.reports.store import open_store
from tests.support import milterclient as mc
from tests.support.dnsserver import DnsTestServer
from tests.support.milterproc import MilterProcess
from tests.support.pgserver import PostgresServer

DOMAINS = ("alpha.example", "beta.example", "gamma.example")
NS = "{urn:ietf:params:xml:ns:dmarc-2.0}"
IPS = ("192.0.2.10", "198.51.100.20", "203.0.113.30")


@pytest.fixture(scope="module")
def nameserver() -> Iterator[str]:
    with DnsTestServer() as server:
        for domain in DOMAINS:
            server.add(domain, "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
            server.add(f"_dmarc.{domain}", "TXT",
                       f"v=DMARC1; p=quarantine; rua=mailto:dmarc@{domain}")
        yield server.nameserver


def send(milter: MilterProcess, domain: str, ip: str, n: int) -> str:
    message = (f"From: someone@{domain}\r\nTo: bob@example.net\r\nSubject: {n}\r\n"
               f"Message-ID: <{n}@{domain}>\r\n\r\nbody\r\n").encode()
    with mc.MilterClient.connect(milter.socket_spec) as client:
        result = client.send_message(message, client_ip=ip, helo="mail.example",
                                     mail_from=f"bounce@{domain}", rcpts=["bob@example.net"])
    return result.action


def load(milters: list[MilterProcess], rounds: int) -> Counter[tuple[str, str]]:
    """Send ``rounds`` messages per (domain, IP), spread over the daemons."""
    sent: Counter[tuple[str, str]] = Counter()
    n = 0
    for _ in range(rounds):
        for domain in DOMAINS:
            for ip in IPS:
                action = send(milters[n % len(milters)], domain, ip, n)
                assert action in ("accept", "continue", "quarantine"), action
                sent[(domain, ip)] += 1
                n += 1
    return sent


def stored(location: str) -> Counter[tuple[str, str]]:
    today = datetime.now(UTC).date()
    store = open_store(location)
    try:
        counts: Counter[tuple[str, str]] = Counter()
        for domain in DOMAINS:
            for row in store.rows(domain, today, today):
                counts[(row.header_from, row.source_ip)] += row.messages
        return counts
    finally:
        store.close()


def metric(milter: MilterProcess, name: str) -> float:
    url = milter.metrics_url
    assert url is not None
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return sum(float(m.group(1)) for m in re.finditer(
        rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def daemon(nameserver: str, store: str | None = None) -> MilterProcess:
    config = {"dns": {"nameservers": [nameserver], "timeout": "1s"}}
    process = MilterProcess(config)
    if store is not None:
        process.config["reports"]["store"] = store
        process.write_config(process.config)
    return process.start()


def test_every_message_is_recorded_once_per_tuple(nameserver: str) -> None:
    milter = daemon(nameserver)
    try:
        sent = load([milter], rounds=4)
    finally:
        milter.stop()  # graceful: the queue is flushed before the worker ends
    assert stored(str(milter.config["reports"]["store"])) == sent


def test_two_daemons_share_one_postgresql_store(nameserver: str, postgres: PostgresServer,
                                                tmp_path: Path) -> None:
    postgres.psql("CREATE DATABASE fleet OWNER mailsec")
    url = postgres.url.rsplit("/", 1)[0] + "/fleet"
    first, second = daemon(nameserver, url), daemon(nameserver, url)
    try:
        sent = load([first, second], rounds=3)
    finally:
        first.stop()
        second.stop()
    assert stored(url) == sent
    # ONE report per policy domain, whose counts are the sum of both hosts' messages.
    config = tmp_path / "reports.toml"
    config.write_text(f'[reports]\nstore = "{url}"\n')
    out = tmp_path / "out"
    today = datetime.now(UTC).date().isoformat()
    assert main(["reports", "send", "--config", str(config), "--period", today,
                 "--out", str(out)]) == 0
    files = sorted(out.iterdir())
    assert sorted(f.name.split("!")[1] for f in files) == sorted(DOMAINS)
    for path in files:
        root = ElementTree.fromstring(gzip.decompress(path.read_bytes()))
        domain = path.name.split("!")[1]
        counts: Counter[str] = Counter()
        for record in root.iter(f"{NS}record"):
            ip = record.findtext(f"{NS}row/{NS}source_ip") or ""
            counts[ip] += int(record.findtext(f"{NS}row/{NS}count") or 0)
        assert counts == Counter({ip: n for (d, ip), n in sent.items() if d == domain})


def test_postgresql_down_mid_load_costs_no_mail(nameserver: str,
                                                postgres: PostgresServer) -> None:
    postgres.psql("CREATE DATABASE outage OWNER mailsec")
    url = postgres.url.rsplit("/", 1)[0] + "/outage"
    milter = daemon(nameserver, url)
    try:
        before = load([milter], rounds=2)
        postgres.stop()
        during = load([milter], rounds=2)  # every message still gets its verdict (asserted)
        assert "tempfail" not in milter.log()
        for _ in range(300):  # the writer's next flush meets the dead store (bounded wait)
            if metric(milter, "mailsec_report_records_dropped_total") > 0:
                break
            time.sleep(0.1)
        postgres.restart()
        # Recording resumes once the store is back (after the recorder's backoff).
        after: Counter[tuple[str, str]] = Counter()
        for _ in range(60):
            after += load([milter], rounds=1)
            time.sleep(0.5)
            if metric(milter, "mailsec_report_records_dropped_total") > 0 and \
                    sum(stored(url).values()) > sum(before.values()):
                break
        dropped = metric(milter, "mailsec_report_records_dropped_total")
    finally:
        milter.stop()
    total = stored(url)
    assert dropped > 0
    assert sum(total.values()) + dropped >= sum((before + during + after).values())
    assert sum(total.values()) > sum(before.values())  # resumed
