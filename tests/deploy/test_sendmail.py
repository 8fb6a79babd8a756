"""docs/SENDMAIL.md against a real Sendmail 8.17 (Debian's, unpacked privately: sendmail.py).

One Sendmail instance, built with m4 from the documented ``INPUT_MAIL_FILTER`` /
``confMILTER_MACROS_*`` block, listens on loopback and relays everything to smtp-sink; the
real daemon is the milter. Mail goes in with smtplib (over STARTTLS and in plain text) and the
copy delivered to the sink is checked for our Authentication-Results header.

The first run downloads four packages (plus missing libraries) from the Debian archive with
``apt-get download`` and caches them unpacked; later runs reuse the cache. Without root (the
private host name needs namespaces) or without apt the tests skip, except under CI=true.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.harness import SinkMessage, parse_sink_file, smtp_send
from tests.support import dkimkeys
from tests.support.dnsserver import DnsTestServer
from tests.support.milterproc import MilterProcess, free_tcp_port

from . import sendmail
from .units import need

AUTHSERV_ID = "mx.sendmail.test"
SIGNED = (b"From: Alice <alice@sender.test>\r\nTo: bob@example.net\r\n"
          b"Subject: through Sendmail\r\nMessage-ID: <sm-1@sender.test>\r\n"
          b"Date: Thu, 27 Nov 2025 10:00:00 +0000\r\n"
          b"Authentication-Results: " + AUTHSERV_ID.encode() + b"; dkim=pass (forged)\r\n"
          b"\r\nHello through a real Sendmail.\r\n")


@dataclass
class Stack:
    sendmail: sendmail.SendmailInstance
    milter: MilterProcess
    sink_dir: Path
    dns: DnsTestServer

    def delivered(self, message_id: str, timeout: float = 30.0) -> SinkMessage:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for path in sorted(self.sink_dir.iterdir()):
                data = path.read_bytes()
                if message_id.encode() in data and data.endswith(b"\n"):
                    return parse_sink_file(path, data)
            time.sleep(0.1)
        raise AssertionError(f"{message_id} never reached the sink; queue: "
                             f"{self.sendmail.queued()}\n{self.sendmail.log()}\n"
                             f"milter:\n{self.milter.log()}")


def unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"real Sendmail test cannot run: {reason} (CI=true)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    sink_bin = need("smtp-sink")
    need("openssl")
    if os.geteuid() != 0:
        unavailable("a private Sendmail needs root (UTS and mount namespaces)")
    try:
        root = sendmail.prefix()
    except (sendmail.SendmailUnavailableError, subprocess.TimeoutExpired) as exc:
        unavailable(str(exc))
        raise  # not reached
    ed = dkimkeys.ed25519_key()
    # Not pytest's tmp_path: its parents are 0700, and smtp-sink writes as user postfix.
    sink_dir = Path(tempfile.mkdtemp(prefix="sendmail-sink-"))
    os.chmod(sink_dir, 0o755)
    shutil.chown(sink_dir, user="postfix")
    sink_port = free_tcp_port()
    sink = subprocess.Popen(
        [sink_bin, "-u", "postfix", "-4", "-h", "sink.test.example",
         "-d", str(sink_dir / "msg-%Y%m%d%H%M%S."), f"127.0.0.1:{sink_port}", "64"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    instance: sendmail.SendmailInstance | None = None
    try:
        with DnsTestServer() as dns:
            dns.add("sender.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
            dns.add("_dmarc.sender.test", "TXT", "v=DMARC1; p=reject")
            dns.add(dkimkeys.key_name("ed", "sender.test"), "TXT", ed.record())
            dns.add("_dmarc.strict.test", "TXT", "v=DMARC1; p=reject")
            # Every test client connects from 127.0.0.1: loopback is trusted by default
            # (local submission), so the stack stands in for an MX with nothing trusted.
            milter = MilterProcess({"milter": {"authserv_id": AUTHSERV_ID},
                                    "dns": {"nameservers": [dns.nameserver], "timeout": "2s"},
                                    "policy": {"trusted_networks": []}})
            with milter:
                try:
                    instance = sendmail.SendmailInstance(root, milter.socket_spec, sink_port)
                    started = time.monotonic()
                    instance.start()
                except sendmail.SendmailUnavailableError as exc:
                    unavailable(str(exc))
                assert instance is not None
                print(f"sendmail up in {time.monotonic() - started:.1f}s")
                yield Stack(instance, milter, sink_dir, dns)
    finally:
        if instance is not None:
            instance.cleanup()
        sink.terminate()
        sink.wait(10)
        shutil.rmtree(sink_dir, ignore_errors=True)


def test_the_generated_cf_carries_the_documented_filter_and_macros(stack: Stack) -> None:
    cf = stack.sendmail.cf_path.read_text()
    assert "O InputMailFilters=mailsec" in cf
    filter_line = next(line for line in cf.splitlines() if line.startswith("Xmailsec"))
    assert filter_line == (f"Xmailsec, S={stack.milter.socket_spec}, F=T, "
                           "T=C:30s;S:30s;R:60s;E:5m")
    envfrom = next(line for line in cf.splitlines() if line.startswith("O Milter.macros.envfrom"))
    for macro in ("i", "{auth_authen}", "{tls_version}", "{cipher}", "{cipher_bits}",
                  "{verify}", "{cert_subject}", "{cert_issuer}"):
        assert re.search(rf"(=|, ){re.escape(macro)}(,|$)", envfrom), macro
    eom = next(line for line in cf.splitlines() if line.startswith("O Milter.macros.eom"))
    assert eom.endswith(" i") or ", i," in eom


def test_mail_over_starttls_is_delivered_with_our_header(stack: Stack) -> None:
    message = dkimkeys.sign(SIGNED, dkimkeys.ed25519_key(), "ed", "sender.test")
    outcome = smtp_send("127.0.0.1", stack.sendmail.smtp_port, message, "alice@sender.test",
                        ["bob@example.net"], starttls=True, helo="mail.sender.test",
                        timeout=90)
    assert outcome.accepted, (outcome, stack.sendmail.log(), stack.milter.log())
    assert outcome.tls_version and outcome.tls_version.startswith("TLSv1")
    queue_id = outcome.data.text.split()[1] if outcome.data else ""  # "2.0.0 ID Message ..."
    got = stack.delivered("sm-1@sender.test")
    headers = got.header("Authentication-Results")
    ours = [h for h in headers if h.startswith(AUTHSERV_ID + ";")]
    assert len(ours) == 1, headers  # ours stamped, the forged one removed
    header = ours[0]
    assert "(forged)" not in got.content.decode()
    assert re.search(r"spf=pass \([^)]*\) smtp\.mailfrom=alice@sender\.test", header), header
    assert re.search(r"dkim=pass[^;]*header\.d=sender\.test[^;]*header\.a=ed25519-sha256",
                     header), header
    assert "dmarc=pass" in header, header
    # The TLS macros Sendmail sent: version, cipher, bits and its {verify} (no client cert).
    tls = re.search(r"x-tls=pass \(([^)]*)\) smtp\.tls-version=(\S+)", header)
    assert tls, header
    assert tls.group(2) == outcome.tls_version, header
    assert "verify=NO" in tls.group(1), header
    # The queue id (macro i) reached the milter's log line.
    assert re.search(rf"queue_id={re.escape(queue_id)} ", stack.milter.log()), (
        queue_id, stack.milter.log())
    # Sendmail puts the header the milter inserts at index 0 above its own Received line.
    first = got.content.split(b"\n", 1)[0]
    assert first.startswith(b"Authentication-Results: " + AUTHSERV_ID.encode()), first


def test_plain_text_mail_gets_x_tls_none(stack: Stack) -> None:
    message = (b"From: alice@sender.test\r\nTo: bob@example.net\r\nSubject: plain\r\n"
               b"Message-ID: <sm-2@sender.test>\r\n\r\nno TLS\r\n")
    outcome = smtp_send("127.0.0.1", stack.sendmail.smtp_port, message, "alice@sender.test",
                        ["bob@example.net"], timeout=90)
    assert outcome.accepted, (outcome, stack.milter.log())
    header = next(h for h in stack.delivered("sm-2@sender.test").header("Authentication-Results")
                  if h.startswith(AUTHSERV_ID + ";"))
    assert "x-tls=none" in header and "spf=pass " in header, header


def test_a_reject_verdict_reaches_the_smtp_client_through_sendmail(stack: Stack) -> None:
    message = (b"From: ceo@strict.test\r\nTo: bob@example.net\r\nSubject: forged\r\n"
               b"Message-ID: <sm-3@strict.test>\r\n\r\npay now\r\n")
    outcome = smtp_send("127.0.0.1", stack.sendmail.smtp_port, message, "x@elsewhere.test",
                        ["bob@example.net"], timeout=90)
    assert outcome.data is not None, outcome
    assert outcome.data.code == 550, outcome.data
    assert "DMARC policy of strict.test" in outcome.data.text, outcome.data


def test_with_the_milter_down_sendmail_tempfails_because_of_f_t(stack: Stack) -> None:
    stack.milter.stop()
    try:
        message = (b"From: alice@sender.test\r\nTo: bob@example.net\r\nSubject: down\r\n"
                   b"Message-ID: <sm-4@sender.test>\r\n\r\nmilter down\r\n")
        outcome = smtp_send("127.0.0.1", stack.sendmail.smtp_port, message,
                            "alice@sender.test", ["bob@example.net"], timeout=90)
        reply = outcome.last_reply
        # Sendmail cannot reach the filter at connect and tempfails the transaction.
        assert reply is not None and reply.code == 451, outcome
        assert reply.text.startswith("4.3.2"), reply
        assert not outcome.accepted
    finally:
        stack.milter.start()
