"""Sendmail's macro set at the protocol level: what Sendmail 8.17 sends, stage by stage.

test_sendmail.py runs a real Sendmail, but only as root and with Debian's packages at hand,
and a Sendmail without client certificates only ever says ``{verify}=NO``. These tests send
the macros as Sendmail does with the docs/SENDMAIL.md configuration (and with Sendmail's
defaults), including client-certificate values, to the real daemon over the milter protocol.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from mailsec_milter import milter as adapter
from mailsec_milter.config import Settings
from tests.support import milterclient as mc
from tests.support.dnsserver import DnsTestServer
from tests.support.milterproc import MilterProcess

from . import sendmail

MESSAGE = (b"From: Alice <alice@sender.test>\r\nTo: bob@example.net\r\nSubject: macros\r\n"
           b"Message-ID: <macros@sender.test>\r\n\r\nbody\r\n")
QUEUE_ID = "5ARAbc12001234"
CONNECT = {"j": "mta.example.net", "_": "mail.sender.test [192.0.2.10]",
           "{daemon_name}": "MTA", "{if_name}": "mta.example.net", "{if_addr}": "198.51.100.1",
           "{client_addr}": "192.0.2.10"}
TLS = {"{tls_version}": "TLSv1.3", "{cipher}": "TLS_AES_256_GCM_SHA384",
       "{cipher_bits}": "256", "{cert_subject}": "/CN=mail.sender.test",
       "{cert_issuer}": "/C=US/O=Example CA/CN=Example Issuing CA", "{verify}": "OK"}
ENVFROM_BASE = {"i": QUEUE_ID, "{auth_type}": "", "{auth_authen}": "", "{auth_ssf}": "",
                "{auth_author}": "", "{mail_mailer}": "esmtp", "{mail_host}": "sender.test",
                "{mail_addr}": "alice@sender.test"}
EOM = {"{msg_id}": "<macros@sender.test>", "i": QUEUE_ID}


@pytest.fixture(scope="module")
def milter() -> Iterator[MilterProcess]:
    with DnsTestServer() as dns:
        dns.add("sender.test", "TXT", "v=spf1 ip4:192.0.2.10 -all")
        process = MilterProcess({"milter": {"authserv_id": "mx.example.net"},
                                 "dns": {"nameservers": [dns.nameserver], "timeout": "2s"}})
        with process:
            yield process


def send(milter: MilterProcess, macros: dict[str, dict[str, str]]) -> str:
    with mc.MilterClient.connect(milter.socket_spec) as client:
        result = client.send_message(MESSAGE, client_ip="192.0.2.10", helo="mail.sender.test",
                                     client_name="mail.sender.test",
                                     mail_from="alice@sender.test", rcpts=["bob@example.net"],
                                     macros=macros, filter_macros=False)
    header = next(e.value for e in result.header_edits if e.kind == "insert")
    return " ".join(header.split())


def test_the_documented_macro_lists_give_the_tls_result_with_verify(
        milter: MilterProcess) -> None:
    # docs/SENDMAIL.md: TLS macros at HELO (after STARTTLS) and again at MAIL FROM.
    header = send(milter, {"connect": CONNECT, "helo": TLS, "mail": {**ENVFROM_BASE, **TLS},
                           "eom": EOM})
    assert header.startswith("mx.example.net;"), header
    assert "spf=pass" in header, header
    assert re.search(r"x-tls=pass \(TLSv1\.3 with TLS_AES_256_GCM_SHA384, 256 bits, "
                     r"verify=OK\) smtp\.tls-version=TLSv1\.3 "
                     r"smtp\.cipher=TLS_AES_256_GCM_SHA384 smtp\.cipher-bits=256", header), header
    assert f"queue_id={QUEUE_ID}" in milter.log()


def test_sendmail_defaults_send_tls_macros_at_helo_only_and_that_is_enough(
        milter: MilterProcess) -> None:
    # Sendmail's own confMILTER_MACROS_ENVFROM has no TLS macros; libmilter still answers
    # the milter's lookups at MAIL FROM from the HELO stage's macros.
    helo_only = {k: v for k, v in TLS.items() if k != "{verify}"}
    header = send(milter, {"connect": CONNECT, "helo": helo_only, "mail": ENVFROM_BASE,
                           "eom": EOM})
    assert "x-tls=pass (TLSv1.3 with TLS_AES_256_GCM_SHA384, 256 bits)" in header, header


@pytest.mark.parametrize("verify", ["NO", "FAIL", "NONE", "TEMP", "PROTOCOL", "SOFTWARE"])
def test_every_sendmail_verify_value_is_reported(milter: MilterProcess, verify: str) -> None:
    tls = {**TLS, "{verify}": verify}
    header = send(milter, {"connect": CONNECT, "helo": tls, "mail": {**ENVFROM_BASE, **tls},
                           "eom": EOM})
    assert f"verify={verify})" in header, header


def test_hostile_certificate_macros_cannot_break_the_header(milter: MilterProcess) -> None:
    # cert_subject/issuer come from the client's certificate: attacker-controlled text.
    tls = {**TLS, "{cert_subject}": "/CN=x;\r\n dkim=pass header.d=bank.example",
           "{verify}": "OK; dmarc=pass", "{cipher}": "AES(256) ; x=y"}
    header = send(milter, {"connect": CONNECT, "helo": tls, "mail": {**ENVFROM_BASE, **tls},
                           "eom": EOM})
    assert "bank.example" not in header and "dmarc=pass" not in header, header
    assert header.count("dkim=") == 1 and header.count("dmarc=") == 1, header
    assert re.search(r"x-tls=pass \([^()]*verify=OK_[^()]*\)", header), header


def test_a_plain_session_without_tls_macros_is_x_tls_none(milter: MilterProcess) -> None:
    header = send(milter, {"connect": CONNECT, "mail": ENVFROM_BASE, "eom": EOM})
    assert "x-tls=none" in header, header


def test_the_documented_macro_lists_cover_what_the_milter_asks_for() -> None:
    """docs/SENDMAIL.md's confMILTER_MACROS_* include every macro the milter reads."""
    snippet = sendmail.documented_snippet("inet:8894@127.0.0.1")
    lists = {name: {m.strip() for m in value.split(",")} for name, value in
             re.findall(r"define\(`confMILTER_MACROS_(\w+)', `([^']*)'\)", snippet)}
    assert set(adapter.CONNECT_MACROS) <= lists["CONNECT"]
    assert set(adapter.ENVFROM_MACROS) <= lists["ENVFROM"]
    assert set(adapter.EOM_MACROS) <= lists["EOM"]
    tls = {"{tls_version}", "{cipher}", "{cipher_bits}", "{cert_subject}", "{cert_issuer}",
           "{verify}"}
    assert tls <= lists["HELO"] and tls <= lists["ENVFROM"]
    # F=T (tempfail when the milter is unreachable) and a reply timeout above the DNS wait.
    line = next(x for x in snippet.splitlines() if x.startswith("INPUT_MAIL_FILTER"))
    assert "F=T" in line
    reply = re.search(r"R:(\d+)s", line)
    assert reply and int(reply.group(1)) > Settings.defaults().message_deadline
