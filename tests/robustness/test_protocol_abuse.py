"""Milter protocol abuse against the real daemon (``mailsec-milter run`` as a subprocess).

Every abuse runs on a connection of its own; what the daemon says on it must be a legal reply
(each one is decoded by our protocol client) or nothing, and where libmilter gives up it closes
that one connection. After each abuse a normal session on a fresh connection must still get
its Authentication-Results header with the right results, the daemon must be alive, and its log
must show no untrapped exception. The last test compares the daemon's RSS, threads and file
descriptors with the baseline taken before the first abuse (bounds, not timings).

What libmilter does with each abuse (and which limits are ours) is written up in
tests/robustness/README.md; the expectations below are those observed facts.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from tests.robustness.procstats import Outcome, ProcStats, milter_running, read_outcome
from tests.support import dkimkeys
from tests.support import milterclient as mc
from tests.support.dnsserver import DnsTestServer, wait_for
from tests.support.milterproc import MilterProcess

pytestmark = pytest.mark.timeout(180)

SENDER = "sender.example"
AUTHSERV_ID = "mx.test.example"
ED = dkimkeys.ed25519_key(b"\x05" * 32)
CLIENT_IP = "192.0.2.10"
OPTNEG = struct.pack(">III", mc.SMFI_PROT_VERSION, mc.ACTIONS_ALL, mc.PROTOCOL_POSTFIX)
IDLE_CONNECTIONS = 200
SMFI_V1_ACTS = 0x0F  # libmilter mfdef.h: the actions of protocol version 1


@dataclass
class Daemon:
    process: MilterProcess
    baseline: ProcStats | None = None
    log_offset: int = 0
    abuses: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        assert self.process.process is not None
        return self.process.process.pid

    def connect(self, timeout: float = 5.0) -> mc.MilterClient:
        return mc.MilterClient.connect(self.process.socket_spec, timeout=timeout)

    def stats(self) -> ProcStats:
        return ProcStats.of(self.pid)


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with DnsTestServer() as dns:
        dns.add(SENDER, "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
        dns.add(f"ed._domainkey.{SENDER}", "TXT", ED.record())
        dns.add(f"_dmarc.{SENDER}", "TXT", "v=DMARC1; p=reject")
        with milter_running({"milter": {"authserv_id": AUTHSERV_ID},
                             "dns": {"nameservers": [dns.nameserver], "timeout": "1s"}}) as process:
            yield Daemon(process)


def signed_message(extra: bytes = b"") -> bytes:
    body = (extra + f"From: Alice <a@{SENDER}>\r\nTo: b@example.net\r\nSubject: hello\r\n"
            f"Message-ID: <1@{SENDER}>\r\n\r\nHello.\r\n".encode())
    return dkimkeys.sign(body, ED, "ed", SENDER)


def assert_healthy(daemon: Daemon, abuse: str) -> None:
    """A normal session on a fresh connection gets our header with the right results; the
    daemon lives on and logged no untrapped exception since the last check."""
    assert daemon.process.process is not None
    assert daemon.process.process.poll() is None, f"daemon died after {abuse}"
    if daemon.baseline is not None:  # no worker process died (and was quietly replaced)
        assert daemon.stats().pids == daemon.baseline.pids, f"a process changed after {abuse}"
    with daemon.connect(timeout=10) as client:
        result = client.send_message(
            signed_message(b"Authentication-Results: mx.test.example; dmarc=pass\r\n"),
            client_ip=CLIENT_IP, helo="client.example.net", mail_from=f"a@{SENDER}",
            rcpts=["b@example.net"], macros={"mail": {"i": "HEALTHY"}})
    assert result.action in ("accept", "continue"), (abuse, result)
    inserts = [e for e in result.header_edits if e.kind == "insert"]
    assert len(inserts) == 1, (abuse, result.header_edits)
    value = inserts[0].value
    assert value.startswith(f" {AUTHSERV_ID};")
    for word in ("spf=pass", "dkim=pass", "dmarc=pass"):
        assert word in value, (abuse, value)
    assert [(e.kind, e.index) for e in result.header_edits if e.is_delete] == [("change", 1)]
    log = daemon.process.log()
    fresh, daemon.log_offset = log[daemon.log_offset:], len(log)
    stray = untrapped_output(fresh)
    assert not stray, f"untrapped exception after {abuse}:\n{fresh}"
    daemon.abuses.append(abuse)


_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (\w+) ")


def untrapped_output(log: str) -> list[str]:
    """Lines that are not part of one of our log records: what pymilter prints for an
    exception that escaped a callback (a traceback, or a bare ``UnicodeDecodeError: ...`` when
    its C layer failed to decode an argument). A traceback attached to our own ERROR record
    (``log.exception``) is a handled error, not an untrapped one."""
    stray: list[str] = []
    attached = False
    for line in log.splitlines():
        record = _LOG_RECORD.match(line)
        if record:
            attached = record.group(1) in ("ERROR", "WARNING", "CRITICAL")
        elif line.strip() and not attached:
            stray.append(line)
    return stray


def start_transaction(client: mc.MilterClient, *, headers: bool = True) -> None:
    """Negotiate and go as far as the first header (DATA is the last answered event)."""
    client.negotiate()
    client.smtp_connect("client.example.net", mc.SMFIA_INET, 4321, CLIENT_IP)
    client.helo("client.example.net")
    client.mail_from(f"a@{SENDER}", macros={"i": "ABUSE"})
    client.rcpt("b@example.net")
    assert client.data() is not None
    if headers:
        client.header("From", f" a@{SENDER}")
        client.header("Subject", " abuse")
        client.flush()


def abused(daemon: Daemon, name: str, act: Callable[[mc.MilterClient], None],
           timeout: float = 1.0) -> Outcome:
    with daemon.connect() as client:
        act(client)
        outcome = read_outcome(client, timeout)
    assert_healthy(daemon, name)
    return outcome


# --- the baseline ------------------------------------------------------------------------------


def test_baseline_session(daemon: Daemon) -> None:
    for _ in range(3):  # warm the pools and the DNS cache before measuring
        assert_healthy(daemon, "baseline")
    daemon.baseline = daemon.stats()


# --- truncated packets -------------------------------------------------------------------------

TRUNCATED = {
    "half a length word": b"\x00\x00",
    "length without command": b"\x00\x00\x00\x0d",
    "optneg cut short": b"\x00\x00\x00\x0dO\x00\x00\x00\x06",
    "length promises more than sent": struct.pack(">I", 1000) + b"O" + OPTNEG,
}


@pytest.mark.parametrize("data", list(TRUNCATED.values()), ids=list(TRUNCATED))
def test_truncated_packet_then_close(daemon: Daemon, data: bytes) -> None:
    outcome = abused(daemon, "truncated packet", lambda c: c.send_raw(data), timeout=0.3)
    assert outcome.replies == ()


def test_truncated_packet_mid_message_then_close(daemon: Daemon) -> None:
    def act(client: mc.MilterClient) -> None:
        start_transaction(client)
        client.send_raw(struct.pack(">I", 200) + b"L" + b"Subject\0abc")

    outcome = abused(daemon, "truncated header packet", act, timeout=0.3)
    assert outcome.replies == ()


def test_truncated_packet_held_open_blocks_nobody(daemon: Daemon) -> None:
    with daemon.connect() as held:
        start_transaction(held)
        held.send_raw(struct.pack(">I", 500) + b"B" + b"x" * 100)  # 399 bytes never come
        assert_healthy(daemon, "truncated packet held open")
        assert_healthy(daemon, "truncated packet held open")
        assert read_outcome(held, 0.5) == Outcome((), False)  # still waiting, said nothing


# --- impossible lengths ------------------------------------------------------------------------

LENGTHS = {
    # libmilter reads the length as a signed 32-bit value minus one: 0xFFFFFFFF and 0 are
    # "no data" (a command that needs data then fails the connection), 0x7FFFFFFF and 65537
    # exceed MILTER_MAX_DATA_SIZE (65535) and are refused before anything is allocated.
    "0xFFFFFFFF optneg": b"\xff\xff\xff\xffO" + OPTNEG,
    "0xFFFFFFFF quit": b"\xff\xff\xff\xffQ",
    "0xFFFFFFFF then garbage": b"\xff\xff\xff\xff" + b"\xff" * 64,
    "zero": b"\x00\x00\x00\x00O" + OPTNEG,
    "0x7FFFFFFF": b"\x7f\xff\xff\xffO" + OPTNEG,
    "0x80000000": b"\x80\x00\x00\x00O" + OPTNEG,
    "65537": struct.pack(">I", 65537) + b"O" + OPTNEG,
}


@pytest.mark.parametrize("data", list(LENGTHS.values()), ids=list(LENGTHS))
def test_impossible_length_closes_that_connection(daemon: Daemon, data: bytes) -> None:
    outcome = abused(daemon, "impossible length", lambda c: c.send_raw(data))
    assert outcome == Outcome((), True)


def test_length_0xffffffff_mid_message(daemon: Daemon) -> None:
    def act(client: mc.MilterClient) -> None:
        start_transaction(client)
        client.send_raw(b"\xff\xff\xff\xffB" + b"x" * 100)

    assert abused(daemon, "0xFFFFFFFF body", act) == Outcome((), True)


def test_body_chunk_over_64k_closes_that_connection(daemon: Daemon) -> None:
    def act(client: mc.MilterClient) -> None:
        start_transaction(client)
        client.send_packet(mc.SMFIC_BODY, b"x" * 65536)  # one byte over MILTER_MAX_DATA_SIZE

    assert abused(daemon, "body chunk over 64 KiB", act) == Outcome((), True)


def test_largest_legal_packets_are_served(daemon: Daemon) -> None:
    """65535 data bytes is the limit itself: a header of that size and a body chunk of that
    size are taken, and the message gets its header."""
    def act(client: mc.MilterClient) -> None:
        start_transaction(client)
        client.send_packet(mc.SMFIC_HEADER, b"X-Big\0" + b"y" * (65535 - 7) + b"\0")
        client.send_packet(mc.SMFIC_EOH)  # negotiated (no reply): an MTA always sends it
        client.send_packet(mc.SMFIC_BODY, b"z" * 65535)
        client.send_packet(mc.SMFIC_BODYEOB)

    outcome = abused(daemon, "largest legal packets", act, timeout=5.0)
    assert not outcome.closed
    assert outcome.actions[-1] == "accept" and "insheader" in outcome.actions


# --- unknown commands and wrong order ---------------------------------------------------------


@pytest.mark.parametrize("command", [b"Z", b"\x00", b"\xff", b"r", b"y"])
@pytest.mark.parametrize("negotiated", [False, True], ids=["before-negotiation", "in-session"])
def test_unknown_command_closes_that_connection(daemon: Daemon, command: bytes,
                                                negotiated: bool) -> None:
    def act(client: mc.MilterClient) -> None:
        if negotiated:
            start_transaction(client)
        client.send_packet(command, b"abc\0")

    assert abused(daemon, f"unknown command {command!r}", act) == Outcome((), True)


OUT_OF_ORDER = {
    "end of message before MAIL": [(mc.SMFIC_BODYEOB, b"")],
    "header before MAIL": [(mc.SMFIC_HEADER, b"From\0 evil@attacker.example\0")],
    "rcpt before MAIL": [(mc.SMFIC_RCPT, b"<b@example.net>\0")],
    "body before MAIL": [(mc.SMFIC_BODY, b"body")],
    "connect twice": [(mc.SMFIC_CONNECT, b"x\x004\x10\x00198.51.100.1\0")],
    "negotiation twice": [(mc.SMFIC_OPTNEG, OPTNEG)],
    "data before MAIL": [(mc.SMFIC_DATA, b"")],
    "quit_nc mid-session then body": [(mc.SMFIC_QUIT_NC, b""), (mc.SMFIC_BODY, b"x")],
}


@pytest.mark.parametrize("packets", list(OUT_OF_ORDER.values()), ids=list(OUT_OF_ORDER))
def test_commands_out_of_order_are_ignored(daemon: Daemon,
                                           packets: list[tuple[bytes, bytes]]) -> None:
    """libmilter drops a command its state table does not allow (no reply); the connection
    stays usable and the next proper transaction on it gets our header. No state leaks from
    the dropped commands (the injected From header never reaches the message)."""
    with daemon.connect() as client:
        client.negotiate()
        client.smtp_connect("client.example.net", mc.SMFIA_INET, 4321, CLIENT_IP)
        client.helo("client.example.net")
        for command, payload in packets:
            client.send_packet(command, payload)
        outcome = read_outcome(client, 0.5)
        assert not outcome.closed
        result = client.send_transaction(signed_message(), mail_from=f"a@{SENDER}",
                                         rcpts=["b@example.net"])
    value = next(e.value for e in result.header_edits if e.kind == "insert")
    assert "dkim=pass" in value and "dmarc=pass" in value
    assert "attacker" not in value
    assert_healthy(daemon, "out of order")


def test_second_mail_restarts_the_transaction(daemon: Daemon) -> None:
    """MAIL in the middle of a message: libmilter aborts the first; nothing of it survives."""
    with daemon.connect() as client:
        start_transaction(client)
        client.header("From", " evil@attacker.example")
        client.flush()
        result = client.send_transaction(signed_message(), mail_from=f"a@{SENDER}",
                                         rcpts=["b@example.net"])
    value = next(e.value for e in result.header_edits if e.kind == "insert")
    assert "dmarc=pass" in value and "attacker" not in value
    assert_healthy(daemon, "second MAIL")


# --- macros before negotiation, bad negotiation -------------------------------------------------

MACROS = {
    "connect macros": b"Cj\0mx.example\0{client_addr}\0" + b"203.0.113.9\0",
    "hostile mail macros": b"M{tls_version}\0TLSv1.3\r\nX-Injected: yes\0{cipher_bits}\0"
                           b"99999999999\0{auth_authen}\0" + b"a" * 60000 + b"\0",
    "unknown stage": b"Zj\0x\0",
    "no terminating NUL": b"Mi",
    "odd number of strings": b"Mi\0",
}


@pytest.mark.parametrize("payload", list(MACROS.values()), ids=list(MACROS))
def test_macros_before_negotiation(daemon: Daemon, payload: bytes) -> None:
    """libmilter stores (or ignores) macros that precede negotiation; the session then works
    and none of it is trusted: the client address comes from the connect event, and a
    {auth_authen} from before the session does not exempt the message from DMARC."""
    with daemon.connect() as client:
        client.send_packet(mc.SMFIC_MACRO, payload)
        result = client.send_message(
            signed_message(), client_ip=CLIENT_IP, helo="client.example.net",
            mail_from=f"a@{SENDER}", rcpts=["b@example.net"])
    value = next(e.value for e in result.header_edits if e.kind == "insert")
    assert "spf=pass" in value and "dmarc=pass" in value
    assert "X-Injected" not in value and "\r" not in value
    assert_healthy(daemon, "macros before negotiation")


def test_empty_macro_packet_closes_that_connection(daemon: Daemon) -> None:
    assert abused(daemon, "empty macro", lambda c: c.send_packet(mc.SMFIC_MACRO)) == Outcome(
        (), True)


NEGOTIATIONS = {
    "short": (b"\0\0\0\x06", True),
    "version 1": (struct.pack(">III", 1, mc.ACTIONS_ALL, mc.PROTOCOL_POSTFIX), True),
    "version 2**32-1": (struct.pack(">III", 0xFFFFFFFF, mc.ACTIONS_ALL, mc.PROTOCOL_POSTFIX),
                        True),
    "no actions offered": (struct.pack(">III", 6, 0, mc.PROTOCOL_POSTFIX), False),
    "no protocol steps offered": (struct.pack(">III", 6, mc.ACTIONS_ALL, 0), False),
    "every bit": (b"\xff" * 12, True),
    "trailing junk": (OPTNEG + b"\0" * 100, False),
}


@pytest.mark.parametrize(("payload", "closes"), list(NEGOTIATIONS.values()),
                         ids=list(NEGOTIATIONS))
def test_bad_negotiation(daemon: Daemon, payload: bytes, closes: bool) -> None:
    offered = struct.unpack(">I", payload[4:8])[0] if len(payload) >= 8 else mc.ACTIONS_ALL
    # libmilter reads "no actions offered" as an old MTA and assumes the version 1 set
    offered = offered or SMFI_V1_ACTS
    with daemon.connect() as client:
        client.send_packet(mc.SMFIC_OPTNEG, payload)
        outcome = read_outcome(client, 1.0, offered_actions=offered)
    assert outcome.closed == closes
    if not closes:
        assert outcome.actions == ["optneg"]
    assert_healthy(daemon, "bad negotiation")


def test_mta_without_header_actions_fails_closed(daemon: Daemon) -> None:
    """An MTA that offers no right to delete headers cannot have a forged A-R removed: the
    message is tempfailed, never passed on with the forgery in it."""
    with daemon.connect() as client:
        client.negotiate(actions=mc.SMFIF_ADDHDRS | mc.SMFIF_QUARANTINE)
        result = client.send_message(
            signed_message(b"Authentication-Results: mx.test.example; dmarc=pass\r\n"),
            client_ip=CLIENT_IP, helo="client.example.net", mail_from=f"a@{SENDER}",
            rcpts=["b@example.net"])
    assert result.action == "tempfail", result
    assert not [e for e in result.header_edits if e.kind == "insert"]
    assert_healthy(daemon, "too few actions offered")


# --- slow, idle and vanishing peers ------------------------------------------------------------


def test_peer_sending_one_byte_per_second(daemon: Daemon) -> None:
    """A slowloris peer gets one byte a second into a packet; other sessions go on meanwhile,
    and the slow one is still served once its packet is complete."""
    packet = mc.encode_packet(mc.SMFIC_OPTNEG, OPTNEG)
    with daemon.connect(timeout=10) as slow:
        for byte in packet[:4]:
            slow.send_raw(bytes([byte]))
            started = time.monotonic()
            assert_healthy(daemon, "slow peer")
            time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
        slow.send_raw(packet[4:])
        outcome = read_outcome(slow, 3.0)
    assert outcome.actions == ["optneg"] and not outcome.closed


def test_hundreds_of_idle_connections(daemon: Daemon) -> None:
    """200 connections held open (half never negotiate, half stop mid-message) cost no other
    session anything, and everything they held is released when they go."""
    before = daemon.stats()
    idle: list[mc.MilterClient] = []
    try:
        for number in range(IDLE_CONNECTIONS):
            client = daemon.connect(timeout=10)
            idle.append(client)
            if number % 2:
                start_transaction(client)
        for _ in range(3):
            assert_healthy(daemon, "idle connections")
        during = daemon.stats()
        assert during.fds >= before.fds + IDLE_CONNECTIONS * 0.9  # they really are held
    finally:
        for client in idle:
            client.close()
    assert wait_for(lambda: daemon.stats().fds <= before.fds + 5, timeout=15), daemon.stats()
    assert wait_for(lambda: daemon.stats().threads <= before.threads + 8, timeout=15), (
        before, daemon.stats())
    assert_healthy(daemon, "idle connections closed")


def _vanish(client: mc.MilterClient, reset: bool) -> None:
    if reset:  # RST instead of FIN
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


STAGES = ["after MAIL", "after headers", "after a body chunk", "after end of message"]


@pytest.mark.parametrize("reset", [False, True], ids=["close", "reset"])
@pytest.mark.parametrize("stage", STAGES)
def test_peer_vanishes_mid_message(daemon: Daemon, stage: str, reset: bool) -> None:
    client = daemon.connect()
    try:
        if stage == "after MAIL":
            client.negotiate()
            client.smtp_connect("client.example.net", mc.SMFIA_INET, 4321, CLIENT_IP)
            client.mail_from(f"a@{SENDER}")
            client.flush()
        else:
            start_transaction(client)
            if stage != "after headers":
                client.body(b"Hello.\r\n" * 1000)
                client.flush()
            if stage == "after end of message":
                client.send_packet(mc.SMFIC_BODYEOB)  # and never read the answer
    finally:
        _vanish(client, reset)
    assert_healthy(daemon, f"peer vanished {stage}")


def test_many_peers_vanish_concurrently(daemon: Daemon) -> None:
    """Twenty clients drop their connections at random points at the same time."""
    errors: list[BaseException] = []

    def run(number: int) -> None:
        try:
            client = daemon.connect()
            try:
                start_transaction(client, headers=number % 2 == 0)
                if number % 3 == 0:
                    client.send_packet(mc.SMFIC_BODYEOB)
            finally:
                _vanish(client, reset=number % 2 == 1)
        except (OSError, mc.MilterProtocolError) as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert_healthy(daemon, "concurrent vanishing peers")


# --- the bound over the whole abuse set (keep this test last in the module) -----------------------


def test_memory_threads_and_descriptors_stay_bounded(daemon: Daemon) -> None:
    assert daemon.baseline is not None, "run the whole module: the baseline test comes first"
    assert len(daemon.abuses) > 50
    for _ in range(20):  # plenty of normal traffic after all the abuse
        assert_healthy(daemon, "after the abuse set")
    after = daemon.stats()
    assert after.rss_kb - daemon.baseline.rss_kb < 100 * 1024, (daemon.baseline, after)
    assert after.threads <= daemon.baseline.threads + 8, (daemon.baseline, after)
    assert after.fds <= daemon.baseline.fds + 5, (daemon.baseline, after)


# --- regressions for two session hangs found here (fixed in milter.py and daemon.py) --------


@pytest.fixture(scope="module")
def fresh_daemon() -> Iterator[Daemon]:
    """A daemon of its own: the exceptions below are logged by pymilter as untrapped (that is
    how they reach CONTINUE), which the abuse tests above would count against the daemon."""
    with DnsTestServer() as dns:
        dns.add(SENDER, "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
        with milter_running({"milter": {"authserv_id": AUTHSERV_ID},
                             "dns": {"nameservers": [dns.nameserver], "timeout": "1s"}}) as process:
            yield Daemon(process)


FORGED = b"Authentication-Results: mx.test.example; dmarc=pass\r\n"


def test_non_ascii_digit_cipher_bits_macro(fresh_daemon: Daemon) -> None:
    """Was: '\u00b2'.isdigit() is True but int('\u00b2') raises, in envfrom (a @noreply event);
    pymilter answered TEMPFAIL, libmilter turned that into no reply and reset its state, and
    every later event of the message was dropped: the MTA waited for its milter timeout.
    Fixed in milter.py (_tls_info: isascii; envfrom: errors carried to end of message)."""
    with fresh_daemon.connect(timeout=3) as client:
        result = client.send_message(
            FORGED + b"From: a@sender.example\r\n\r\nbody\r\n", client_ip=CLIENT_IP,
            helo="client.example.net", mail_from=f"a@{SENDER}", rcpts=["b@example.net"],
            macros={"mail": {"{tls_version}": "TLSv1.3", "{cipher_bits}": "\u00b2"}})
    assert result.action == "accept", result
    assert [(e.kind, e.index) for e in result.header_edits] == [("change", 1), ("insert", 0)]
    value = result.header_edits[-1].value
    assert "x-tls=pass" in value and "cipher-bits" not in value


def test_header_name_with_invalid_utf8(fresh_daemon: Daemon) -> None:
    """Was: pymilter decodes a header name as strict UTF-8 in C before our callback runs; the
    UnicodeDecodeError became TEMPFAIL on a @noreply event, and libmilter dropped the end of
    message: no reply until the MTA's timeout. Fixed in daemon.py
    (milter.set_exception_policy(CONTINUE)): that one header is skipped, the message is
    checked, the forged A-R below it still removed."""
    with fresh_daemon.connect(timeout=3) as client:
        start_transaction(client)
        client.header(b"X-\xff\xfe", b" value")
        client.header(b"Authentication-Results", b" mx.test.example; dmarc=pass")
        client.eoh()
        end = client.eom()
    assert end.reply.action == "accept"
    edits = [(m.action, m.index) for m in end.modifications]
    assert edits == [("chgheader", 1), ("insheader", 0)]


def test_message_without_header_fields(fresh_daemon: Daemon) -> None:
    with fresh_daemon.connect(timeout=3) as client:
        result = client.send_message(b"\r\nonly a body\r\n", client_ip=CLIENT_IP,
                                     helo="client.example.net", mail_from=f"a@{SENDER}",
                                     rcpts=["b@example.net"])
    # No From field: not one author domain to evaluate, so [policy] unusable_from decides
    # (quarantine by default; docs/POLICY.md row 5b) — never a crash or a stalled session.
    assert result.action == "quarantine"


def test_untrapped_output_detector() -> None:
    """The log check above tells a handled error from an untrapped one."""
    handled = ("2026-01-01 10:00:00,000 ERROR mailsec_milter.milter: internal error\n"
               "Traceback (most recent call last):\n  File \"x\", line 1\nValueError: x\n"
               "2026-01-01 10:00:00,001 INFO mailsec_milter.milter: queue_id=A\n")
    untrapped = ("2026-01-01 10:00:00,001 INFO mailsec_milter.milter: queue_id=A\n"
                 "Traceback (most recent call last):\nValueError: bad\n"
                 "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff\n")
    assert untrapped_output(handled) == []
    assert len(untrapped_output(untrapped)) == 3
