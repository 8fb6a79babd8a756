"""Test mail for the monitoring tests: a DNS zone and a mix of messages that gives every panel
and every rule of monitoring/ something to show (accept, reject, quarantine, tempfail by
SERVFAIL and by timeout, DKIM-signed mail, TLS versions and plaintext, a dry-run milter)."""

from __future__ import annotations

import email.utils
import uuid
from collections import Counter
from dataclasses import dataclass

from tests.support import dkimkeys
from tests.support import milterclient as mc
from tests.support.dnsserver import DnsTestServer

AUTHSERV_ID = "mx.test.example"  # MilterProcess's default [milter] authserv_id
GOOD_NET = "192.0.2.0/24"
GOOD_IP = "192.0.2.10"
FORGER_IP = "198.51.100.66"
ED = dkimkeys.ed25519_key(b"\x07" * 32)

# author domain -> its DMARC record (None: no record; "servfail"/"drop": the DNS fails)
DOMAINS: dict[str, str | None] = {
    "pass.example": "v=DMARC1; p=reject",
    "reject.example": "v=DMARC1; p=reject",
    "quarantine.example": "v=DMARC1; p=quarantine",
    "none.example": "v=DMARC1; p=none",
    "nopolicy.example": None,
    "outage.example": "servfail",
    "broken.example": "servfail",
    "slowdns.example": "drop",
}


def populate(server: DnsTestServer) -> None:
    for domain, dmarc in DOMAINS.items():
        server.add(domain, "TXT", f"v=spf1 ip4:{GOOD_NET} -all")
        server.add(domain, "A", "192.0.2.1")
        name = f"_dmarc.{domain}"
        if dmarc == "servfail":
            server.servfail(name)
        elif dmarc == "drop":
            server.drop(name)
        elif dmarc is not None:
            server.add(name, "TXT", dmarc)
    server.add("forger.example", "TXT", "v=spf1 ip4:198.51.100.0/24 -all")
    server.add("forger.example", "A", "198.51.100.1")
    server.add(dkimkeys.key_name("ed", "pass.example"), "TXT", ED.record())
    rsa = dkimkeys.rsa_key(2048)
    server.add(dkimkeys.key_name("rsa", "pass.example"), "TXT",
               *_split(rsa.record()))


def _split(text: str) -> list[list[bytes]]:
    data = text.encode()
    return [[data[i:i + 255] for i in range(0, len(data), 255)]]


@dataclass(frozen=True)
class Mail:
    author_domain: str
    forged: bool  # sent from the forger's IP with the forger's envelope
    tls: str | None  # the {tls_version} macro, None for plaintext
    signed: bool = False
    forged_authres: bool = False  # carries an Authentication-Results header claiming our id
    outside: bool = False  # the author's own envelope, from an address its SPF does not list


# One round: what each message should get from an enforcing milter.
ROUND: tuple[tuple[Mail, str], ...] = (
    (Mail("pass.example", False, "TLSv1.3", signed=True), "accept"),
    (Mail("pass.example", False, "TLSv1.2", forged_authres=True), "accept"),
    (Mail("nopolicy.example", False, None), "accept"),
    (Mail("none.example", True, "TLSv1.3"), "accept"),
    (Mail("reject.example", True, "TLSv1.2"), "reject"),
    (Mail("reject.example", True, None), "reject"),
    (Mail("quarantine.example", True, "TLSv1.3"), "quarantine"),
    # Sent from outside the domain's SPF (its own envelope, the forger's address): the DMARC
    # record that did not come could have said reject, so the missing answer matters and the
    # message is deferred. (From the domain's own network its aligned SPF pass would be DMARC
    # pass under any record: accepted, docs/POLICY.md "When an answer is missing".)
    (Mail("outage.example", False, None, outside=True), "tempfail"),
    (Mail("broken.example", False, "TLSv1.2", outside=True), "tempfail"),
)
SLOW = (Mail("slowdns.example", False, "TLSv1.3", outside=True), "tempfail")


def raw_message(author: str, signed: bool, forged_authres: bool = False) -> bytes:
    domain = author.split("@")[1]
    forged = (f"Authentication-Results: {AUTHSERV_ID}; dmarc=pass header.from={domain}\r\n"
              if forged_authres else "")
    text = (f"{forged}From: {author}\r\nTo: bob@example.net\r\nSubject: monitoring test\r\n"
            f"Date: {email.utils.formatdate()}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@{domain}>\r\n\r\nHello.\r\n").encode()
    if signed:
        text = dkimkeys.sign(text, ED, "ed", domain)
        text = dkimkeys.sign(text, dkimkeys.rsa_key(2048), "rsa", domain)
    return text


def send(socket_spec: str, mail: Mail, timeout: float = 15.0) -> str:
    """One SMTP session through the milter; returns the action (accept, reject, ...)."""
    author = f"someone@{mail.author_domain}"
    mail_from = "bounce@forger.example" if mail.forged else author
    ip = FORGER_IP if mail.forged or mail.outside else GOOD_IP
    helo = "mail.forger.example" if mail.forged else f"mail.{mail.author_domain}"
    macros: dict[str, dict[str, str]] = {"mail": {"i": uuid.uuid4().hex[:10].upper()}}
    if mail.tls:
        macros["mail"].update({"{tls_version}": mail.tls, "{cipher}": "TLS_AES_256_GCM_SHA384",
                               "{cipher_bits}": "256"})
    with mc.MilterClient.connect(socket_spec, timeout=timeout) as client:
        raw = raw_message(author, mail.signed, mail.forged_authres)
        result = client.send_message(raw, client_ip=ip, helo=helo,
                                     mail_from=mail_from, rcpts=["bob@example.net"],
                                     macros=macros)
    return "accept" if result.action == "continue" else result.action


def send_round(socket_spec: str, slow: bool = False) -> Counter[str]:
    """Send ROUND (and, with ``slow``, the DNS-timeout message) through one milter; returns
    the actions seen, keyed "expected->got"."""
    seen: Counter[str] = Counter()
    for mail, expected in [*ROUND, *([SLOW] if slow else [])]:
        seen[f"{expected}->{send(socket_spec, mail)}"] += 1
    return seen
