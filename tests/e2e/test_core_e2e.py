"""End to end through a real Postfix, a real DNS server (Unbound) and the real milter daemon.

Messages go in over SMTP (plaintext and STARTTLS), come out at smtp-sink, and we assert on the
Authentication-Results header the milter put on them.
"""

from __future__ import annotations

import email.utils
import re
import uuid
from collections.abc import Callable, Iterator

import authres
import pytest

from tests.support import dkimkeys
from tests.support.milterproc import MilterProcess

from .harness import DnsServer, PostfixInstance, SinkMessage
from .milters import AUTHSERV_ID, milter_for

CLIENT = {"ADDR": "192.0.2.10"}  # XCLIENT: Postfix presents this as the SMTP client address
SENDER_DOMAIN = "sender.example"
RSA = dkimkeys.rsa_key(2048)
ED = dkimkeys.ed25519_key(b"\x01" * 32)


def zone() -> list[str]:
    return [
        f'{SENDER_DOMAIN}. 300 TXT "v=spf1 ip4:192.0.2.0/24 -all"',
        f"{SENDER_DOMAIN}. 300 A 192.0.2.1",
        'client.test.example. 300 TXT "v=spf1 ip4:192.0.2.10 -all"',
        f'{SENDER_DOMAIN}. 300 MX 10 mx.{SENDER_DOMAIN}.',
        _txt(f"rsa._domainkey.{SENDER_DOMAIN}", RSA.record()),
        _txt(f"ed._domainkey.{SENDER_DOMAIN}", ED.record()),
    ]


def _txt(name: str, text: str) -> str:
    """A TXT record line for the harness; it splits long text into 255-byte strings itself."""
    return f'{name}. 300 TXT "{text}"'


@pytest.fixture(scope="module")
def dns(dns_server_factory: Callable[..., DnsServer]) -> DnsServer:
    return dns_server_factory(zone(), timeout_names=[f"slow._domainkey.{SENDER_DOMAIN}"])


@pytest.fixture(scope="module")
def milter(dns: DnsServer) -> Iterator[MilterProcess]:
    process = milter_for(dns)
    with process:
        yield process


def message(subject: str, *, extra_headers: str = "", body: str = "Hello.\n") -> tuple[bytes, str]:
    marker = uuid.uuid4().hex
    msg_id = f"<{marker}@{SENDER_DOMAIN}>"
    text = (
        f"{extra_headers}"
        f"From: Alice <alice@{SENDER_DOMAIN}>\r\n"
        "To: Bob <bob@example.net>\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {email.utils.formatdate()}\r\n"
        f"Message-ID: {msg_id}\r\n"
        "\r\n"
        f"{body}".replace("\n", "\r\n").replace("\r\r\n", "\r\n")
    )
    return text.encode(), msg_id


def signed(raw: bytes, key: dkimkeys.KeyPair, selector: str) -> bytes:
    return dkimkeys.sign(raw, key, selector, SENDER_DOMAIN,
                         include_headers=["from", "to", "subject", "date", "message-id"])


def deliver(postfix: PostfixInstance, raw: bytes, msg_id: str, *, starttls: bool = False,
            mail_from: str = f"alice@{SENDER_DOMAIN}", helo: str = "client.test.example"
            ) -> SinkMessage:
    outcome = postfix.send(raw, mail_from, ["bob@example.net"], starttls=starttls,
                           helo=helo, xclient=CLIENT)
    assert outcome.accepted, outcome
    return postfix.wait_for_message(message_id=msg_id, timeout=30)


def our_headers(delivered: SinkMessage) -> list[str]:
    values = delivered.header("Authentication-Results")
    return [v for v in values if v.strip().lower().startswith(AUTHSERV_ID)]


def parsed(value: str) -> authres.AuthenticationResultsHeader:
    return authres.AuthenticationResultsHeader.parse_value(
        re.sub(r"\r?\n", " ", value))


def results_by_method(value: str) -> dict[str, list[authres.core.AuthenticationResult]]:
    out: dict[str, list[authres.core.AuthenticationResult]] = {}
    for result in parsed(value).results:
        out.setdefault(result.method, []).append(result)
    return out


def props(result: authres.core.AuthenticationResult) -> dict[str, str]:
    return {f"{p.type}.{p.name}": p.value for p in result.properties}


def test_signed_plaintext_message_gets_one_header_at_the_top(postfix: PostfixInstance) -> None:
    raw, msg_id = message("signed twice")
    raw = signed(signed(raw, RSA, "rsa"), ED, "ed")
    delivered = deliver(postfix, raw, msg_id)

    ours = our_headers(delivered)
    assert len(ours) == 1, delivered.header_block
    first_header = delivered.header_block.decode().split("\n", 1)[0]
    # Postfix puts its own Received: first; ours is the first header the milter could place.
    assert first_header.startswith(("Authentication-Results:", "Received:"))
    block = delivered.header_block.decode()
    assert block.index("Authentication-Results:") < block.index("DKIM-Signature:")

    results = results_by_method(ours[0])
    spf = {props(r).get("smtp.mailfrom", props(r).get("smtp.helo")): r.result
           for r in results["spf"]}
    assert spf[f"alice@{SENDER_DOMAIN}"] == "pass"
    assert spf["client.test.example"] == "pass"
    dkim = {props(r)["header.s"]: (r.result, props(r)) for r in results["dkim"]}
    assert dkim["rsa"][0] == "pass" and dkim["ed"][0] == "pass"
    assert dkim["rsa"][1]["header.a"] == "rsa-sha256"
    assert dkim["ed"][1]["header.a"] == "ed25519-sha256"
    assert dkim["rsa"][1]["header.d"] == SENDER_DOMAIN
    assert results["x-tls"][0].result == "none"
    assert "plaintext" in ours[0]


def test_starttls_session_is_recorded(postfix: PostfixInstance) -> None:
    raw, msg_id = message("over tls")
    delivered = deliver(postfix, signed(raw, ED, "ed"), msg_id, starttls=True)
    ours = our_headers(delivered)
    assert len(ours) == 1
    tls = results_by_method(ours[0])["x-tls"][0]
    assert tls.result == "pass"
    assert props(tls)["smtp.tls-version"].startswith("TLSv1.")
    assert int(props(tls)["smtp.cipher-bits"]) >= 128


def test_spf_fail_and_broken_body_are_reported(postfix: PostfixInstance) -> None:
    raw, msg_id = message("tampered", body="original body\n")
    raw = signed(raw, RSA, "rsa").replace(b"original body", b"tampered body")
    outcome = postfix.send(raw, f"alice@{SENDER_DOMAIN}", ["bob@example.net"],
                           helo="client.test.example", xclient={"ADDR": "198.51.100.7"})
    assert outcome.accepted, outcome  # no DMARC policy yet: reported, not enforced
    delivered = postfix.wait_for_message(message_id=msg_id, timeout=30)
    results = results_by_method(our_headers(delivered)[0])
    mailfrom = next(r for r in results["spf"] if "smtp.mailfrom" in props(r))
    assert mailfrom.result == "fail"
    assert results["dkim"][0].result == "fail"
    assert "body hash" in our_headers(delivered)[0]


def test_forged_headers_claiming_our_id_are_all_removed(postfix: PostfixInstance) -> None:
    forged = (
        f"Authentication-Results: {AUTHSERV_ID}; dkim=pass header.d=bank.example\r\n"
        "Authentication-Results: other.example; spf=pass smtp.mailfrom=x@other.example\r\n"
        f"Authentication-Results: {AUTHSERV_ID.upper()};\r\n"
        "\tdmarc=pass header.from=bank.example\r\n"
        "Received: from somewhere by somewhere; Thu, 1 Jan 2026 00:00:00 +0000\r\n"
        f"Authentication-Results: (sneaky) {AUTHSERV_ID}; spf=pass\r\n"
        f"ARC-Authentication-Results: i=1; {AUTHSERV_ID}; spf=pass\r\n"
    )
    raw, msg_id = message("forged", extra_headers=forged)
    delivered = deliver(postfix, raw, msg_id)
    values = delivered.header("Authentication-Results")
    ours = our_headers(delivered)
    assert len(ours) == 1
    assert "bank.example" not in " ".join(values)
    assert "sneaky" not in " ".join(values)
    assert any(v.strip().startswith("other.example") for v in values)
    assert len(values) == 2
    assert len(delivered.header("ARC-Authentication-Results")) == 1


def test_dns_timeout_on_dkim_key_is_temperror(postfix: PostfixInstance) -> None:
    raw, msg_id = message("slow key")
    delivered = deliver(postfix, signed(raw, ED, "slow"), msg_id)
    dkim = results_by_method(our_headers(delivered)[0])["dkim"][0]
    assert dkim.result == "temperror"


def test_null_sender_is_checked_as_postmaster_at_helo(postfix: PostfixInstance) -> None:
    raw, msg_id = message("bounce")
    delivered = deliver(postfix, raw, msg_id, mail_from="")
    spf = results_by_method(our_headers(delivered)[0])["spf"]
    mailfrom = next(r for r in spf if "smtp.mailfrom" in props(r))
    assert mailfrom.result == "pass"  # client.test.example authorises 192.0.2.10
    assert props(mailfrom)["smtp.mailfrom"] == "postmaster@client.test.example"


def test_milter_log_has_one_line_per_message(milter: MilterProcess,
                                             postfix: PostfixInstance) -> None:
    raw, msg_id = message("logged")
    deliver(postfix, raw, msg_id)
    lines = [line for line in milter.log().splitlines() if "verdict=" in line]
    assert lines, milter.log()
    last = lines[-1]
    for field in ("queue_id=", "client=", "192.0.2.10", "spf=pass", "dkim=", "verdict=accept"):
        assert field in last, last
    assert "queue_id=-" not in last
