"""The milter adapter over a real socket: the real daemon, spoken to by our protocol client.

Also the regression tests for the pymilter pitfalls in LIBRARY-NOTES.md: macro requests,
the answered DATA event, TCP_NODELAY on the listener, and the signal mask of every thread.
"""

from __future__ import annotations

import ctypes
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import dkimkeys
from tests.support import milterclient as mc
from tests.support.dnsserver import DnsTestServer
from tests.support.milterproc import MilterProcess

SENDER = "sender.example"
ED = dkimkeys.ed25519_key(b"\x02" * 32)


@pytest.fixture(scope="module")
def dns_zone_server() -> Iterator[str]:
    """A real UDP/TCP DNS server on loopback with the sender's SPF record and DKIM key."""
    with DnsTestServer() as server:
        server.add(SENDER, "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
        server.add(f"ed._domainkey.{SENDER}", "TXT", ED.record())
        yield server.nameserver


@pytest.fixture(scope="module")
def milter(dns_zone_server: str) -> Iterator[MilterProcess]:
    process = MilterProcess({"milter": {"authserv_id": "mx.test.example"},
                             "dns": {"nameservers": [dns_zone_server], "timeout": "1s"}})
    with process:
        yield process


def message(extra: str = "") -> bytes:
    return (f"{extra}From: a@{SENDER}\r\nTo: b@example.net\r\nSubject: hi\r\n"
            "Message-ID: <1@sender.example>\r\n\r\nbody\r\n").encode()


def session(milter: MilterProcess, raw: bytes, *, client_ip: str = "192.0.2.10",
            macros: dict[str, dict[str, str]] | None = None) -> mc.SessionResult:
    with mc.MilterClient.connect(milter.socket_spec) as client:
        return client.send_message(raw, client_ip=client_ip, helo="client.test.example",
                                   mail_from=f"a@{SENDER}", rcpts=["b@example.net"],
                                   macros=macros or {"mail": {"i": "4AbCdE"}})


def test_negotiation_requests_macros_and_noreply_flags(milter: MilterProcess) -> None:
    """Fails without our setsymlist override: pymilter then falls back to 'all options'."""
    with mc.MilterClient.connect(milter.socket_spec) as client:
        reply = client.negotiate()
    assert reply.protocol is not None
    mail_macros = set(reply.macros.get("mail", ()))
    assert {"i", "{auth_authen}", "{tls_version}", "{cipher}", "{cipher_bits}"} <= mail_macros
    assert set(reply.macros.get("eom", ())) == {"i"}
    for flag in (mc.SMFIP_NR_HELO, mc.SMFIP_NR_MAIL, mc.SMFIP_NR_RCPT,
                 mc.SMFIP_NR_HDR, mc.SMFIP_NR_BODY):
        assert reply.protocol & flag, hex(flag)
    # CONNECT is answered (a draining worker refuses new connections with it), once per
    # connection; DATA is answered (the Postfix-side Nagle stall fix); EOH is sent but not
    # answered (a message without header fields needs it to reach the body).
    assert not reply.protocol & mc.SMFIP_NR_DATA
    assert not reply.protocol & mc.SMFIP_NODATA
    assert not reply.protocol & mc.SMFIP_NOEOH
    assert reply.protocol & mc.SMFIP_NR_EOH
    assert not reply.protocol & mc.SMFIP_NR_CONN
    assert reply.protocol & mc.SMFIP_HDR_LEADSPC


def test_header_inserted_at_top_with_tls_from_mail_macros(milter: MilterProcess) -> None:
    raw = dkimkeys.sign(message(), ED, "ed", SENDER)
    result = session(milter, raw, macros={"mail": {
        "i": "4AbCdE", "{tls_version}": "TLSv1.3", "{cipher}": "TLS_AES_256_GCM_SHA384",
        "{cipher_bits}": "256"}})
    assert result.action in ("accept", "continue")
    inserts = [e for e in result.header_edits if e.kind == "insert"]
    assert len(inserts) == 1 and inserts[0].index == 0
    value = inserts[0].value
    assert value.startswith(" mx.test.example;")  # leading space: SMFIP_HDR_LEADSPC
    assert "spf=pass" in value and "dkim=pass" in value
    assert "x-tls=pass" in value and "smtp.tls-version=TLSv1.3" in value
    assert "\r" not in value


def test_plaintext_session_is_recorded_as_such(milter: MilterProcess) -> None:
    result = session(milter, message())
    value = next(e for e in result.header_edits if e.kind == "insert").value
    assert "x-tls=none (plaintext session)" in value


def test_ipv4_mapped_client_address_is_normalised(milter: MilterProcess) -> None:
    result = session(milter, message(), client_ip="::ffff:192.0.2.10")
    value = next(e for e in result.header_edits if e.kind == "insert").value
    assert "spf=pass" in value and "192.0.2.10 is authorized" in value


def test_forged_headers_deleted_highest_index_first(milter: MilterProcess) -> None:
    forged = ("Authentication-Results: mx.test.example; dkim=pass\r\n"
              "Authentication-Results: foreign.example; spf=pass\r\n"
              "Authentication-Results: MX.TEST.EXAMPLE; dmarc=pass\r\n"
              "Authentication-Results: (c) mx.test.example; spf=pass\r\n")
    result = session(milter, message(forged))
    deletes = [e for e in result.header_edits if e.is_delete]
    assert [(e.name, e.index) for e in deletes] == [
        ("Authentication-Results", 4), ("Authentication-Results", 3),
        ("Authentication-Results", 1)]
    # All deletions come before our insertion.
    kinds = [e.kind for e in result.header_edits]
    assert kinds.index("insert") > max(i for i, k in enumerate(kinds) if k == "change")


def test_hostile_tls_macro_cannot_inject_a_header(milter: MilterProcess) -> None:
    result = session(milter, message(), macros={"mail": {
        "{tls_version}": "TLSv1.3\r\nX-Injected: yes", "{cipher}": "a;dkim=pass (x",
        "{cipher_bits}": "99999999999"}})
    value = next(e for e in result.header_edits if e.kind == "insert").value
    assert "\r" not in value and "X-Injected:" not in value and "\nX-" not in value
    assert "dkim=pass" not in value


def test_one_session_carries_several_messages(milter: MilterProcess) -> None:
    with mc.MilterClient.connect(milter.socket_spec) as client:
        first = client.send_message(message(), client_ip="192.0.2.10", helo="client.test.example",
                                    mail_from=f"a@{SENDER}", rcpts=["b@example.net"], quit=False)
        second = client.send_transaction(message(), mail_from="", rcpts=["c@example.net"])
    first_value = next(e for e in first.header_edits if e.kind == "insert").value
    second_value = next(e for e in second.header_edits if e.kind == "insert").value
    assert f"smtp.mailfrom=a@{SENDER}" in first_value
    # Per-message state was reset: the null sender is checked as postmaster@HELO.
    assert "smtp.mailfrom=postmaster@client.test.example" in second_value


def _pidfd_getfd(pid: int, fd: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        new_fd = libc.syscall(438, pidfd, fd, 0)  # SYS_pidfd_getfd (x86-64 and arm64)
        if new_fd < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd failed")
        return int(new_fd)
    finally:
        os.close(pidfd)


def test_listening_socket_has_tcp_nodelay(milter: MilterProcess) -> None:
    """Fails without set_nodelay_on_listeners(): libmilter never sets TCP_NODELAY."""
    assert milter.process is not None
    pid = milter.process.pid
    port = int(milter.socket_spec.split(":")[1].split("@")[0])
    checked = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if not target.startswith("socket:"):
            continue
        try:
            fd = _pidfd_getfd(pid, int(name))
        except OSError as exc:
            pytest.skip(f"pidfd_getfd not permitted here: {exc}")
        sock = socket.socket(fileno=fd)
        try:
            if sock.family == socket.AF_INET and sock.getsockname()[1] == port and \
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
                checked += 1
        finally:
            sock.close()
    assert checked == 1


def _blocked_mask(task: Path) -> int:
    status = (task / "status").read_text()
    match = re.search(r"SigBlk:\s*([0-9a-f]+)", status)
    assert match is not None
    return int(match.group(1), 16)


def test_every_thread_blocks_the_signals_libmilter_waits_for(milter: MilterProcess) -> None:
    """SIGTERM/SIGINT/SIGHUP must reach only a thread that waits for them (LIBRARY-NOTES).

    The supervisor is one thread that takes them all itself (it never runs libmilter, whose
    signal thread would treat SIGHUP as "stop"). In each worker, libmilter's signal thread is
    the only one waiting for them, and every other thread — the metrics server and the pools
    started before libmilter's loop among them — blocks them.
    """
    session(milter, message())  # make the pools start their threads
    assert milter.process is not None
    wanted = (1 << (1 - 1)) | (1 << (2 - 1)) | (1 << (15 - 1))
    supervisor = list(Path(f"/proc/{milter.process.pid}/task").iterdir())
    assert len(supervisor) == 1
    assert _blocked_mask(supervisor[0]) & wanted == wanted
    workers = milter.worker_pids()
    assert workers
    for pid in workers:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        assert len(tasks) >= 3
        waiting = []
        for task in tasks:
            if "sigtimedwait" in (task / "wchan").read_text():
                waiting.append(task.name)
                continue
            blocked = _blocked_mask(task)
            assert blocked & wanted == wanted, f"{task.name} leaves {hex(wanted & ~blocked)} open"
        assert len(waiting) == 1  # libmilter's signal thread


def test_sigterm_stops_cleanly(dns_zone_server: str) -> None:
    process = MilterProcess({"dns": {"nameservers": [dns_zone_server]}}).start()
    session(process, message())
    assert process.stop() == 0
    assert "stopped" in process.log()


def test_metrics_endpoint_counts_messages(milter: MilterProcess) -> None:
    import urllib.request

    assert milter.metrics_url is not None
    assert milter.metrics_url.startswith("http://127.0.0.1:")

    def scrape() -> str:
        with urllib.request.urlopen(milter.metrics_url, timeout=5) as response:
            return response.read().decode()

    def accepted(text: str) -> float:
        for line in text.splitlines():
            if (line.startswith("mailsec_messages_total{") and 'verdict="accept"' in line
                    and 'reason="no_policy"' in line):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = accepted(scrape())
    session(milter, message())
    # The workers push their numbers about once a second; /metrics does not wait for them.
    deadline = time.monotonic() + 20
    while accepted(after_text := scrape()) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert accepted(after_text) == before + 1
    assert 'mailsec_dns_queries_total{outcome="answer",type="TXT"}' in after_text
    assert "mailsec_connections_total" in after_text


@pytest.fixture(scope="module")
def policy_dns() -> Iterator[str]:
    with DnsTestServer() as server:
        server.add("shop.example", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
        server.add("shop.example", "A", "192.0.2.1")
        server.add("_dmarc.shop.example", "TXT", "v=DMARC1; p=quarantine")
        server.add("bank.example", "A", "192.0.2.2")
        server.add("_dmarc.bank.example", "TXT", "v=DMARC1; p=reject")
        yield server.nameserver


def forged(author: str, extra: str = "") -> bytes:
    return (f"{extra}From: {author}\r\nTo: b@example.net\r\nSubject: forged\r\n\r\nx\r\n"
            ).encode()


def forge(process: MilterProcess, raw: bytes) -> mc.SessionResult:
    with mc.MilterClient.connect(process.socket_spec) as client:
        return client.send_message(raw, client_ip="198.51.100.66", helo="evil.example",
                                   mail_from="x@evil.example", rcpts=["b@example.net"])


@pytest.mark.parametrize("method", ["hold", "tag", "both"])
def test_quarantine_methods(policy_dns: str, method: str) -> None:
    config = {"dns": {"nameservers": [policy_dns]}, "policy": {"quarantine_method": method}}
    with MilterProcess(config) as process:
        result = forge(process, forged("billing@shop.example",
                                       "X-Mailsec-Quarantine: no (set by the sender)\r\n"))
    inserts = {e.name: e.value for e in result.header_edits if e.kind == "insert"}
    deletes = [(e.name, e.index) for e in result.header_edits if e.is_delete]
    assert "dmarc=fail" in inserts["Authentication-Results"]
    assert ("X-Mailsec-Quarantine", 1) in deletes  # nobody outside may set our tag
    if method in ("tag", "both"):
        assert inserts["X-Mailsec-Quarantine"].startswith(" yes (DMARC fail for shop.example")
    else:
        assert "X-Mailsec-Quarantine" not in inserts
    assert (result.quarantine_reason is not None) == (method in ("hold", "both"))
    assert result.action == ("quarantine" if method in ("hold", "both") else "accept")


def test_reject_reply_and_dry_run(policy_dns: str) -> None:
    with MilterProcess({"dns": {"nameservers": [policy_dns]}}) as process:
        rejected = forge(process, forged("ceo@bank.example"))
    assert rejected.action == "reject"
    assert rejected.smtp_reply is not None
    assert rejected.smtp_reply.startswith("550 5.7.1 Rejected by the DMARC policy of bank.example")
    assert not rejected.header_edits
    with MilterProcess({"dns": {"nameservers": [policy_dns]},
                        "policy": {"dry_run": True}}) as process:
        dry = forge(process, forged("ceo@bank.example"))
        log = process.log()
    assert dry.action == "accept"
    header = next(e.value for e in dry.header_edits if e.kind == "insert")
    assert "dry run: would reject" in header and "policy.applied-disposition=none" in header
    assert "dry_run_would=reject" in log
