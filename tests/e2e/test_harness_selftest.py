"""Self-test of the e2e harness, without a milter: DNS answers and Postfix relays to the sink."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import dns.exception
import dns.rcode
import dns.resolver
import pytest

from .conftest import HOLD_HEADER
from .harness import DnsServer, PostfixInstance

pytestmark = pytest.mark.e2e

SPF = "v=spf1 ip4:127.0.0.1 -all"
LONG_TXT = "v=DKIM1; k=rsa; p=" + "A" * 600

RECORDS = f"""
example.com. 300 TXT "{SPF}"
; a comment line
sel._domainkey.example.com. TXT "{LONG_TXT}"
_dmarc.example.com. 60 IN TXT "v=DMARC1;" " p=reject"
mx.example.com. A 192.0.2.25
"""


@pytest.fixture(scope="module")
def dns_server(dns_server_factory: Callable[..., DnsServer]) -> DnsServer:
    return dns_server_factory(
        RECORDS, timeout_names=["slow.example."], refuse_names=["broken.example"]
    )


def _message(subject: str, *, extra_headers: str = "") -> tuple[str, bytes]:
    msgid = f"{uuid.uuid4().hex}@example.org"
    text = (
        "From: Sender <sender@example.org>\n"
        "To: User <user@example.net>\n"
        f"Subject: {subject}\n"
        f"Message-ID: <{msgid}>\n"
        f"{extra_headers}"
        "\n"
        "Hello.\n"
        ".a line starting with a dot\n"
    )
    return msgid, text.encode()


def test_dns_txt_answers(dns_server: DnsServer) -> None:
    resolver = dns_server.resolver()
    spf = resolver.resolve("example.com", "TXT")
    assert [b"".join(r.strings).decode() for r in spf] == [SPF]
    assert spf.rrset is not None and spf.rrset.ttl == 300

    dkim = resolver.resolve("sel._domainkey.example.com", "TXT")
    strings = next(iter(dkim)).strings
    assert [len(s) for s in strings] == [255, 255, len(LONG_TXT) - 510]
    assert b"".join(strings).decode() == LONG_TXT

    dmarc = resolver.resolve("_dmarc.example.com", "TXT")
    assert next(iter(dmarc)).strings == (b"v=DMARC1;", b" p=reject")
    assert [r.to_text() for r in resolver.resolve("mx.example.com", "A")] == ["192.0.2.25"]

    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("missing.example.com", "TXT")


def test_dns_timeout_and_refuse(dns_server: DnsServer) -> None:
    with pytest.raises(dns.exception.Timeout):
        dns_server.query("x.slow.example.", "TXT", timeout=0.5)
    reply = dns_server.query("x.broken.example.", "TXT")
    assert reply.rcode() in (dns.rcode.REFUSED, dns.rcode.SERVFAIL)
    with pytest.raises(dns.resolver.NoNameservers):
        dns_server.resolver().resolve("x.broken.example", "TXT")


def test_dns_outage_and_recovery(dns_server: DnsServer) -> None:
    address = dns_server.address
    dns_server.stop()
    try:
        with pytest.raises(dns.exception.Timeout):
            dns_server.query("example.com.", "TXT", timeout=0.3)
    finally:
        dns_server.start()
    assert dns_server.address == address
    assert dns_server.query("example.com.", "TXT").answer


def test_plaintext_delivery(postfix_no_milter: PostfixInstance) -> None:
    msgid, msg = _message("harness plaintext")
    outcome = postfix_no_milter.send(msg, "sender@example.org", ["user@example.net"])
    assert outcome.accepted, outcome
    assert outcome.tls_version is None

    delivered = postfix_no_milter.wait_for_message(message_id=msgid)
    assert delivered.header("Subject") == ["harness plaintext"]
    assert delivered.rcpts == ["user@example.net"]
    assert delivered.mail_from == "sender@example.org"
    assert b"\n.a line starting with a dot\n" in delivered.content
    assert "using TLS" not in delivered.header("Received")[0]
    assert len(postfix_no_milter.wait_delivered(1)) >= 1


def test_starttls_delivery(postfix_no_milter: PostfixInstance) -> None:
    msgid, msg = _message("harness starttls")
    outcome = postfix_no_milter.send(msg, "sender@example.org", ["user@example.net"], starttls=True)
    assert outcome.accepted, outcome
    assert outcome.starttls is not None and outcome.starttls.code == 220
    assert outcome.tls_version is not None and outcome.tls_version.startswith("TLSv1")

    delivered = postfix_no_milter.wait_for_message(message_id=msgid)
    assert delivered.header("Subject") == ["harness starttls"]
    assert "(using TLSv1" in delivered.header("Received")[0]


def test_rejections_are_captured(postfix_no_milter: PostfixInstance) -> None:
    _, msg = _message("harness relay denied")
    outcome = postfix_no_milter.send(
        msg, "sender@example.org", ["user@elsewhere.test"], xclient={"ADDR": "192.0.2.10"}
    )
    assert outcome.error is None
    assert outcome.xclient is not None and outcome.xclient.code == 220
    assert outcome.rcpts["user@elsewhere.test"].code == 554
    assert outcome.data_command is not None and outcome.data_command.code >= 500
    assert not outcome.accepted


def test_hold_queue_and_postcat(postfix_no_milter: PostfixInstance) -> None:
    msgid, msg = _message("harness hold", extra_headers=f"{HOLD_HEADER}: yes\n")
    outcome = postfix_no_milter.send(msg, "sender@example.org", ["user@example.net"])
    assert outcome.accepted and outcome.queue_id, outcome
    try:
        assert outcome.queue_id in postfix_no_milter.hold_queue()
        dump = postfix_no_milter.postcat(outcome.queue_id)
        assert "Subject: harness hold" in dump and msgid in dump
        postfix_no_milter.flush()  # held mail stays held
        assert postfix_no_milter.find_delivered(message_id=msgid) is None
    finally:
        postfix_no_milter.postsuper("-d", outcome.queue_id)
