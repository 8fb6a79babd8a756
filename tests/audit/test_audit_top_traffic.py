"""``audit --top`` against a report store filled by real mail through the milter (the
recorder writes it; no hand-made rows): the senders ranked by messages, each one's share, and
the share of mail from domains at p=none."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from mailsec_milter.cli import main
from tests.support import milterclient as mc
from tests.support.dnsserver import DnsTestServer
from tests.support.milterproc import MilterProcess

SENDERS = {"lax.example": ("none", 6), "strict.example": ("reject", 3),
           "middle.example": ("quarantine", 1)}


@pytest.fixture
def dns() -> Iterator[DnsTestServer]:
    with DnsTestServer() as server:
        for domain, (policy, _) in SENDERS.items():
            server.add(domain, "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
            server.add(f"_dmarc.{domain}", "TXT",
                       f"v=DMARC1; p={policy}; rua=mailto:dmarc@{domain}")
        yield server


def test_top_ranks_the_senders_the_milter_recorded(dns: DnsTestServer,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    milter = MilterProcess({"dns": {"nameservers": [dns.nameserver], "timeout": "1s"}}).start()
    try:
        audit_top(milter, dns, capsys)
    finally:
        milter.cleanup()


def audit_top(milter: MilterProcess, dns: DnsTestServer,
              capsys: pytest.CaptureFixture[str]) -> None:
    try:
        n = 0
        for domain, (_, count) in SENDERS.items():
            for _ in range(count):
                message = (f"From: someone@{domain}\r\nTo: bob@example.net\r\nSubject: {n}\r\n"
                           f"Message-ID: <{n}@{domain}>\r\n\r\nbody\r\n").encode()
                with mc.MilterClient.connect(milter.socket_spec) as client:
                    client.send_message(message, client_ip="192.0.2.10", helo="mail.example",
                                        mail_from=f"bounce@{domain}", rcpts=["bob@example.net"])
                n += 1
    finally:
        milter.stop()  # graceful: the recorder flushes its queue into the store
    store = str(milter.config["reports"]["store"])
    config = milter.workdir / "audit.toml"
    config.write_text(f'[dns]\nnameservers = ["{dns.nameserver}"]\ntimeout = "5s"\n'
                      f'[reports]\nstore = "{store}"\n')
    status = main(["audit", "--top", "2", "--json", "--config", str(config)])
    document = json.loads(capsys.readouterr().out)
    top = document["top"]
    # recorded today: yesterday has no rows, so the last day with rows is read (and said)
    assert "last day with records" in top["period"]
    assert top["total_messages"] == 10
    assert [(s["domain"], s["messages"], s["published_p"], s["share_percent"])
            for s in top["senders"]] == [("lax.example", 6, "none", 60.0),
                                         ("strict.example", 3, "reject", 30.0)]
    assert top["share_percent_by_policy"]["none"] == 60.0
    # the top senders are audited too: lax.example is below the baseline
    assert [d["domain"] for d in document["domains"]] == ["lax.example", "strict.example"]
    assert status == 1
