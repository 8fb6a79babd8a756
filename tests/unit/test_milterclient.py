"""Tests for the milter protocol client in tests.support.milterclient.

A tiny fake milter (a thread on 127.0.0.1 answering with canned bytes) checks the wire format and
the NR/NO logic; one test drives a real pymilter/libmilter milter in a subprocess.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from tests.support.milterclient import (
    ACTIONS_ALL,
    MILTER_CHUNK_SIZE,
    PROTOCOL_POSTFIX,
    SMFIP_HDR_LEADSPC,
    SMFIP_NOCONNECT,
    SMFIP_NODATA,
    SMFIP_NOHELO,
    SMFIP_NOUNKNOWN,
    SMFIP_NR_BODY,
    SMFIP_NR_EOH,
    SMFIP_NR_HDR,
    SMFIP_NR_HELO,
    SMFIP_NR_RCPT,
    SMFIP_SKIP,
    ConnectionClosed,
    HeaderEdit,
    MilterClient,
    MilterProtocolError,
    MilterTimeoutError,
    Reply,
    chunk_body,
    decode_reply,
    describe_protocol,
    encode_packet,
    parse_address,
    split_message,
)

TIMEOUT = 5.0

Packet = tuple[bytes, bytes]
Responder = Callable[[bytes, bytes], "bytes | None"]


def pkt(cmd: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I", 1 + len(payload)) + cmd + payload


def optneg_reply(
    protocol: int,
    actions: int = 0x1FF,
    version: int = 6,
    macros: Mapping[int, str] | None = None,
) -> bytes:
    payload = struct.pack(">III", version, actions, protocol)
    for stage, names in (macros or {}).items():
        payload += struct.pack(">I", stage) + names.encode() + b"\0"
    return pkt(b"O", payload)


CLOSE = b"<close>"


class FakeMilter:
    """One-connection milter on 127.0.0.1: records every packet, answers via ``responder``.

    The responder gets (cmd, payload) and returns bytes to send (may be several packets), None
    for no answer, or CLOSE to close the connection.
    """

    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.received: list[Packet] = []
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"inet:{self.port}@127.0.0.1"

    def commands(self) -> list[bytes]:
        return [cmd for cmd, _ in self.received]

    def _recv_exact(self, conn: socket.socket, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def _run(self) -> None:
        try:
            conn, _ = self.listener.accept()
            conn.settimeout(TIMEOUT)
            with conn:
                while True:
                    head = self._recv_exact(conn, 4)
                    if head is None:
                        break
                    (size,) = struct.unpack(">I", head)
                    body = self._recv_exact(conn, size)
                    if body is None:
                        break
                    cmd, payload = body[:1], body[1:]
                    self.received.append((cmd, payload))
                    out = self.responder(cmd, payload)
                    if out == CLOSE:
                        break
                    if out:
                        conn.sendall(out)
        except BaseException as exc:  # reported by stop()
            self.error = exc
        finally:
            self.listener.close()
            self.done.set()

    def stop(self) -> None:
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "fake milter did not finish"
        if self.error is not None and not isinstance(self.error, ConnectionResetError):
            raise self.error


def script(
    protocol: int,
    replies: Mapping[bytes, bytes],
    *,
    actions: int = 0x1FF,
    version: int = 6,
    macros: Mapping[int, str] | None = None,
) -> Responder:
    """Answer OPTNEG with ``protocol`` and each other command from ``replies`` (default none)."""
    opt = optneg_reply(protocol, actions, version, macros)

    def respond(cmd: bytes, payload: bytes) -> bytes | None:
        if cmd == b"O":
            return opt
        return replies.get(cmd)

    return respond


@pytest.fixture
def fake() -> Iterator[Callable[[Responder], FakeMilter]]:
    servers: list[FakeMilter] = []

    def start(responder: Responder) -> FakeMilter:
        server = FakeMilter(responder)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


CONTINUE = pkt(b"c")


# --------------------------------------------------------------------------------------------
# Encoding and decoding
# --------------------------------------------------------------------------------------------


def test_encode_packet_frames_length_command_payload() -> None:
    assert encode_packet(b"H", b"mx.example\0") == b"\x00\x00\x00\x0cHmx.example\0"
    assert encode_packet(b"A") == b"\x00\x00\x00\x01A"
    with pytest.raises(ValueError):
        encode_packet(b"HH")


def test_decode_simple_and_structured_replies() -> None:
    assert decode_reply(b"c", b"").action == "continue"
    assert decode_reply(b"a", b"").disposition == "accept"
    y = decode_reply(b"y", b"550 5.7.1 Go away\0")
    assert (y.smtp_code, y.text, y.smtp_reply, y.disposition) == (
        "550",
        "5.7.1 Go away",
        "550 5.7.1 Go away",
        "reject",
    )
    assert decode_reply(b"y", b"451 4.7.1 Later\0").disposition == "tempfail"
    assert decode_reply(b"q", b"suspicious\0").reason == "suspicious"
    h = decode_reply(b"h", b"X-A\0v 1\0")
    assert (h.name, h.value, h.index) == ("X-A", "v 1", None)
    i = decode_reply(b"i", struct.pack(">I", 0) + b"Authentication-Results\0mx; spf=pass\0")
    assert (i.index, i.name, i.value) == (0, "Authentication-Results", "mx; spf=pass")
    m = decode_reply(b"m", struct.pack(">I", 2) + b"Authentication-Results\0\0")
    assert (m.action, m.index, m.name, m.value) == ("chgheader", 2, "Authentication-Results", "")
    assert decode_reply(b"2", b"<x@y>\0NOTIFY=NEVER\0").args == ("<x@y>", "NOTIFY=NEVER")
    assert decode_reply(b"b", b"new body\r\n").body == b"new body\r\n"
    assert decode_reply(b"s", b"").action == "skip"
    assert decode_reply(b"p", b"").action == "progress"


@pytest.mark.parametrize(
    ("cmd", "payload"),
    [
        (b"Z", b""),  # unknown reply
        (b"c", b"x"),  # continue with data (Postfix: comm error)
        (b"y", b"250 ok\0"),  # not 4xx/5xx
        (b"y", b"550 4.7.1 mismatch\0"),  # enhanced code class differs
        (b"y", b"550 5.7.1 no nul"),
        (b"h", b"X-A\0"),  # missing value
        (b"m", b"\0\0"),  # too short for the index
        (b"O", b"\0\0\0\x06"),  # negotiation too short
        (b"O", struct.pack(">IIII", 6, 0, 0, 1) + b"j"),  # macro list not terminated
    ],
)
def test_decode_rejects_garbage(cmd: bytes, payload: bytes) -> None:
    with pytest.raises(MilterProtocolError):
        decode_reply(cmd, payload)


def test_parse_address_forms() -> None:
    assert parse_address("inet:8891@127.0.0.1") == (socket.AF_INET, "127.0.0.1", 8891)
    assert parse_address("inet:8891") == (socket.AF_INET, "127.0.0.1", 8891)
    assert parse_address("inet:localhost:8891") == (socket.AF_INET, "localhost", 8891)
    assert parse_address("inet6:8891@[::1]") == (socket.AF_INET6, "::1", 8891)
    assert parse_address("unix:/run/m.sock") == (socket.AF_UNIX, "/run/m.sock", 0)
    assert parse_address("/run/m.sock") == (socket.AF_UNIX, "/run/m.sock", 0)
    for bad in ("inet:x@h", "inet:0@h", "tcp:1@h", "nonsense"):
        with pytest.raises(ValueError):
            parse_address(bad)


# --------------------------------------------------------------------------------------------
# Negotiation
# --------------------------------------------------------------------------------------------


def test_negotiation_decodes_flags_and_macro_lists(fake: Callable[[Responder], FakeMilter]) -> None:
    protocol = SMFIP_NR_HELO | SMFIP_NR_HDR | SMFIP_NOUNKNOWN | SMFIP_SKIP
    server = fake(
        script(
            protocol,
            {},
            actions=0x011,
            macros={1: "{tls_version} {cipher}", 5: "i", 2: "{auth_authen}"},
        )
    )
    with MilterClient.connect(server.address, timeout=TIMEOUT) as client:
        reply = client.negotiate()
    server.stop()

    assert server.received[0] == (b"O", struct.pack(">III", 6, ACTIONS_ALL, PROTOCOL_POSTFIX))
    assert (reply.version, reply.actions, reply.protocol) == (6, 0x011, protocol)
    assert dict(reply.macros) == {
        "helo": ("{tls_version}", "{cipher}"),
        "eom": ("i",),
        "mail": ("{auth_authen}",),
    }
    assert describe_protocol(reply.protocol or 0) == ["NR_HDR", "NOUNKNOWN", "SKIP", "NR_HELO"]
    assert client.protocol == protocol


def test_negotiation_refuses_actions_outside_offer(
    fake: Callable[[Responder], FakeMilter],
) -> None:
    server = fake(script(0, {}, actions=0x3FF))
    with (
        MilterClient.connect(server.address, timeout=TIMEOUT) as client,
        pytest.raises(MilterProtocolError, match="actions"),
    ):
        client.negotiate()


def test_negotiation_wrong_reply_is_an_error(fake: Callable[[Responder], FakeMilter]) -> None:
    server = fake(lambda cmd, payload: CONTINUE)
    with (
        MilterClient.connect(server.address, timeout=TIMEOUT) as client,
        pytest.raises(MilterProtocolError, match="negotiation"),
    ):
        client.negotiate()


# --------------------------------------------------------------------------------------------
# NR ("no reply") and NO ("no callback") logic
# --------------------------------------------------------------------------------------------


def test_no_read_is_attempted_for_an_nr_event(
    fake: Callable[[Responder], FakeMilter], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fake never answers HELO or headers; a client that waited would time out.
    server = fake(script(SMFIP_NR_HELO | SMFIP_NR_HDR, {b"M": CONTINUE, b"N": CONTINUE}))
    client = MilterClient.connect(server.address, timeout=0.5)
    client.negotiate()
    reads: list[Reply] = []
    original = client.read_reply

    def counting_read(*, timeout: float | None = None) -> Reply:
        reply = original(timeout=timeout)
        reads.append(reply)
        return reply

    monkeypatch.setattr(client, "read_reply", counting_read)

    assert client.helo("mx.example.org") is None
    assert client.header("Subject", "a") is None
    assert client.header("To", "b") is None
    assert reads == []
    reply = client.mail_from("a@example.org")
    assert reply is not None and reply.action == "continue"
    assert len(reads) == 1
    assert client.eoh() is not None
    assert len(reads) == 2
    client.quit()
    client.close()
    server.stop()
    assert server.commands() == [b"O", b"H", b"L", b"L", b"M", b"N", b"Q"]
    assert [(e.event, e.sent, e.replied) for e in client.events[1:4]] == [
        ("helo", True, False),
        ("header", True, False),
        ("header", True, False),
    ]


def test_connect_sets_tcp_nodelay_by_default(fake: Callable[[Responder], FakeMilter]) -> None:
    first = fake(script(0, {}))
    second = fake(script(0, {}))
    with MilterClient.connect(first.address, timeout=TIMEOUT) as client:
        assert client.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert client.sock.gettimeout() == TIMEOUT
    with MilterClient.connect(second.address, timeout=TIMEOUT, nodelay=False) as client:
        assert client.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0


def test_without_nr_the_client_waits_for_each_reply(
    fake: Callable[[Responder], FakeMilter],
) -> None:
    # Milter asked for no NR bit: a missing HELO reply must be a timeout, not silently skipped.
    server = fake(script(0, {b"M": CONTINUE}))
    with MilterClient.connect(server.address, timeout=0.3) as client:
        client.negotiate()
        with pytest.raises(MilterTimeoutError):
            client.helo("mx.example.org")


def test_no_flag_skips_event_but_sends_its_macros_like_postfix(
    fake: Callable[[Responder], FakeMilter],
) -> None:
    server = fake(script(SMFIP_NOHELO | SMFIP_NOCONNECT, {b"H": CONTINUE}))
    with MilterClient.connect(server.address, timeout=TIMEOUT) as client:
        client.negotiate()
        assert client.smtp_connect("[192.0.2.1]", "4", 25, "192.0.2.1") is None
        assert client.helo("x", macros={"{tls_version}": "TLSv1.3"}) is None
        forced = client.helo("forced", force=True)
        assert forced is not None and forced.action == "continue"
        client.quit()
    server.stop()
    assert server.received[1:] == [
        (b"D", b"H{tls_version}\0TLSv1.3\0"),
        (b"H", b"forced\0"),
        (b"Q", b""),
    ]


def test_events_outside_the_offered_protocol_are_not_sent(
    fake: Callable[[Responder], FakeMilter],
) -> None:
    server = fake(script(0, {b"M": CONTINUE}, version=2, actions=0x3F))
    with MilterClient.connect(server.address, timeout=TIMEOUT) as client:
        client.negotiate(version=2, actions=0x3F, protocol=0x7F)  # v2: no DATA event exists
        assert client.data(macros={"i": "Q1"}) is None
        assert client.mail_from("") is not None
        client.quit()
    server.stop()
    assert server.commands() == [b"O", b"M", b"Q"]
    assert server.received[1] == (b"M", b"<>\0")


def test_connect_payload_and_progress_is_consumed(fake: Callable[[Responder], FakeMilter]) -> None:
    server = fake(script(0, {b"C": pkt(b"p") + pkt(b"p") + CONTINUE}))
    with MilterClient.connect(server.address, timeout=TIMEOUT) as client:
        client.negotiate()
        reply = client.smtp_connect("[2001:db8::1]", "6", 40000, "2001:db8::1")
        assert reply is not None and reply.action == "continue"
        assert client.progress_count == 2
    server.stop()
    assert server.received[1] == (
        b"C",
        b"[2001:db8::1]\x006" + struct.pack(">H", 40000) + b"2001:db8::1\0",
    )


# --------------------------------------------------------------------------------------------
# Header splitting and body chunking
# --------------------------------------------------------------------------------------------

FOLDED = (
    b"Received: from a\r\n\tby b; Tue, 1 Jan 2030 00:00:00 +0000\r\n"
    b"Subject:  two spaces\r\n"
    b"X-Tab:\tvalue\r\n"
    b"DKIM-Signature: v=1; a=rsa-sha256;\r\n"
    b"   d=example.org; s=sel;\r\n"
    b"\tb=abc\r\n"
    b"Odd  : spaced name\r\n"
    b"\r\n"
    b"line 1\r\n"
    b"line 2\n"
    b"no newline at end"
)


def test_split_message_unfolds_like_postfix() -> None:
    headers, body = split_message(FOLDED)
    assert headers == [
        (b"Received", b"from a\n\tby b; Tue, 1 Jan 2030 00:00:00 +0000"),
        (b"Subject", b" two spaces"),
        (b"X-Tab", b"\tvalue"),
        (b"DKIM-Signature", b"v=1; a=rsa-sha256;\n   d=example.org; s=sel;\n\tb=abc"),
        (b"Odd", b"spaced name"),
    ]
    assert body == b"line 1\r\nline 2\r\nno newline at end\r\n"


def test_split_message_leading_space_mode_keeps_value_verbatim() -> None:
    headers, _ = split_message(FOLDED, leading_space=True)
    assert headers[1] == (b"Subject", b"  two spaces")
    assert headers[3] == (
        b"DKIM-Signature",
        b" v=1; a=rsa-sha256;\n   d=example.org; s=sel;\n\tb=abc",
    )


def test_split_message_non_header_line_starts_the_body() -> None:
    headers, body = split_message(b"Subject: x\nnot a header line\nmore\n")
    assert headers == [(b"Subject", b"x")]
    assert body == b"not a header line\r\nmore\r\n"
    assert split_message(b"") == ([], b"")
    assert split_message(b"Subject: x\n\n") == ([(b"Subject", b"x")], b"")


def test_chunk_body() -> None:
    assert chunk_body(b"") == []
    assert [len(c) for c in chunk_body(b"x" * (2 * MILTER_CHUNK_SIZE + 5))] == [65535, 65535, 5]


def test_send_message_unfolds_headers_and_chunks_body(
    fake: Callable[[Responder], FakeMilter],
) -> None:
    protocol = SMFIP_NR_HDR | SMFIP_NR_BODY | SMFIP_NR_EOH | SMFIP_NR_RCPT | SMFIP_NODATA
    eom = (
        pkt(b"h", b"X-Checked\0yes\0")
        + pkt(b"i", struct.pack(">I", 0) + b"Authentication-Results\0mx; none\0")
        + pkt(b"m", struct.pack(">I", 1) + b"Subject\0\0")
        + pkt(b"c")
    )
    replies = {b"C": CONTINUE, b"H": CONTINUE, b"M": CONTINUE, b"E": eom}
    server = fake(script(protocol, replies, macros={1: "{tls_version}"}))
    body_text = b"".join(b"%05d " % i + b"y" * 70 + b"\n" for i in range(1000))  # ~77 KB, LF
    raw = b"Subject: folded\n second line\nFrom: a@example.org\n\n" + body_text

    client = MilterClient.connect(server.address, timeout=TIMEOUT)
    result = client.send_message(
        raw,
        client_ip="192.0.2.7",
        helo="mx.example.org",
        mail_from="a@example.org",
        rcpts=["b@example.net", "c@example.net"],
        macros={
            "connect": {"j": "mx.local", "{daemon_name}": "smtpd"},
            "helo": {"{tls_version}": "TLSv1.3", "{cipher}": "TLS_AES_256_GCM_SHA384"},
            "eoh": {"i": "4ABC"},
            "data": {"i": "4ABC"},
        },
    )
    server.stop()

    assert result.action == "continue"
    assert result.stage == "eom"
    assert result.header_edits == (
        HeaderEdit("add", "X-Checked", "yes"),
        HeaderEdit("insert", "Authentication-Results", "mx; none", 0),
        HeaderEdit("change", "Subject", "", 1),
    )
    assert result.header_edits[2].is_delete

    received = server.received
    headers = [p for c, p in received if c == b"L"]
    assert headers == [b"Subject\0folded\n second line\0", b"From\0a@example.org\0"]
    chunks = [p for c, p in received if c == b"B"]
    expected_body = body_text.replace(b"\n", b"\r\n")
    assert len(expected_body) > 65536
    assert [len(c) for c in chunks] == [65535, len(expected_body) - 65535]
    assert b"".join(chunks) == expected_body
    # Macros: connect as given; helo filtered to the milter's list; eoh before every header
    # and before EOH; DATA skipped (NODATA) but its macros still sent.
    assert (b"D", b"Cj\0mx.local\0{daemon_name}\0smtpd\0") in received
    assert (b"D", b"H{tls_version}\0TLSv1.3\0") in received
    assert received.count((b"D", b"Li\x004ABC\0")) == 2
    assert (b"D", b"Ni\x004ABC\0") in received
    assert (b"D", b"Ti\x004ABC\0") in received
    assert b"T" not in server.commands()
    assert server.commands()[-3:] == [b"A", b"A", b"Q"]
    # Timing: one entry per event sent, replied ones are real round trips.
    names = [name for name, _ in result.timings]
    assert names[:4] == ["negotiate", "connect", "helo", "mail"]
    assert names.count("body") == 2
    assert all(seconds >= 0 for _, seconds in result.timings)


def test_send_message_leading_space_mode_sends_value_verbatim(
    fake: Callable[[Responder], FakeMilter],
) -> None:
    protocol = SMFIP_HDR_LEADSPC | SMFIP_NR_HDR
    server = fake(
        script(
            protocol,
            {
                b"C": CONTINUE,
                b"H": CONTINUE,
                b"M": CONTINUE,
                b"R": CONTINUE,
                b"T": CONTINUE,
                b"N": CONTINUE,
                b"B": CONTINUE,
                b"E": pkt(b"a"),
            },
        )
    )
    with MilterClient.connect(server.address, timeout=TIMEOUT) as client:
        result = client.send_message(
            b"Subject:  x\r\n\ty\r\n\r\nbody\r\n",
            client_ip="192.0.2.1",
            helo="h",
            mail_from="a@b",
            rcpts=["c@d"],
        )
    server.stop()
    assert result.action == "accept"
    assert [p for c, p in server.received if c == b"L"] == [b"Subject\0  x\n\ty\0"]


# --------------------------------------------------------------------------------------------
# Early decisions
# --------------------------------------------------------------------------------------------


def test_all_recipients_rejected_ends_the_transaction(
    fake: Callable[[Responder], FakeMilter],
) -> None:
    replies = {
        b"C": CONTINUE,
        b"H": CONTINUE,
        b"M": CONTINUE,
        b"R": pkt(b"y", b"550 5.1.1 No such user 100%%\0"),
    }
    server = fake(script(0, replies))
    with MilterClient.connect(server.address, timeout=TIMEOUT) as client:
        result = client.send_message(
            b"Subject: x\n\nbody\n",
            client_ip="192.0.2.1",
            helo="h",
            mail_from="a@b",
            rcpts=["x@y", "z@y"],
        )
    server.stop()
    assert (result.action, result.stage) == ("reject", "rcpt")
    assert result.smtp_reply == "550 5.1.1 No such user 100%"
    assert result.reply is not None and result.reply.text == "5.1.1 No such user 100%%"
    assert server.commands() == [b"O", b"C", b"H", b"M", b"R", b"R", b"A", b"A", b"Q"]


def test_connect_reject_closes_without_quit(fake: Callable[[Responder], FakeMilter]) -> None:
    server = fake(script(0, {b"C": pkt(b"t")}))
    client = MilterClient.connect(server.address, timeout=TIMEOUT)
    result = client.send_message(
        b"\n", client_ip="192.0.2.1", helo="h", mail_from="a@b", rcpts=["c@d"]
    )
    server.stop()
    assert (result.action, result.stage) == ("tempfail", "connect")
    assert client.closed
    assert server.commands() == [b"O", b"C"]


def test_quarantine_then_accept_at_eom(fake: Callable[[Responder], FakeMilter]) -> None:
    eom = pkt(b"q", b"held by test\0") + pkt(b"a")
    server = fake(
        script((0x7F & ~0x10) | SMFIP_NODATA, {b"B": CONTINUE, b"E": eom})
    )  # only BODY before EOM
    with MilterClient.connect(server.address, timeout=TIMEOUT) as client:
        result = client.send_message(
            b"Subject: x\n\nbody\n",
            client_ip="192.0.2.1",
            helo="h",
            mail_from="a@b",
            rcpts=["c@d"],
        )
    server.stop()
    assert (result.action, result.quarantine_reason) == ("quarantine", "held by test")
    assert server.commands()[1:3] == [b"B", b"E"]


def test_unexpected_modification_before_eom_is_a_protocol_error(
    fake: Callable[[Responder], FakeMilter],
) -> None:
    server = fake(script(0, {b"H": pkt(b"h", b"X\0y\0")}))
    with MilterClient.connect(server.address, timeout=TIMEOUT) as client:
        client.negotiate()
        with pytest.raises(MilterProtocolError, match="unexpected reply 'addheader'"):
            client.helo("x")


# --------------------------------------------------------------------------------------------
# Broken peers
# --------------------------------------------------------------------------------------------


def test_closed_connection_raises_connection_closed(
    fake: Callable[[Responder], FakeMilter],
) -> None:
    server = fake(script(0, {b"H": CLOSE}))
    with MilterClient.connect(server.address, timeout=TIMEOUT) as client:
        client.negotiate()
        with pytest.raises(ConnectionClosed):
            client.helo("x")


def test_eof_inside_a_packet_is_a_protocol_error_not_a_clean_close(
    fake: Callable[[Responder], FakeMilter],
) -> None:
    truncated = struct.pack(">I", 20) + b"h" + b"X\0"  # announces 20 bytes, sends 3
    server = fake(lambda cmd, payload: truncated if cmd == b"O" else CLOSE)
    with MilterClient.connect(server.address, timeout=TIMEOUT) as client:
        client.send_packet(b"O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF))
        client.send_packet(b"Q")
        with pytest.raises(MilterProtocolError) as info:
            client.read_reply()
        assert not isinstance(info.value, ConnectionClosed)
        assert "EOF inside" in str(info.value)


def test_zero_length_packet_is_garbage(fake: Callable[[Responder], FakeMilter]) -> None:
    server = fake(lambda cmd, payload: b"\0\0\0\0" if cmd == b"O" else None)
    with MilterClient.connect(server.address, timeout=TIMEOUT) as client:
        with pytest.raises(MilterProtocolError, match="length 0"):
            client.negotiate()
        client.send_packet(b"Q")


def test_send_raw_passes_arbitrary_bytes(fake: Callable[[Responder], FakeMilter]) -> None:
    server = fake(lambda cmd, payload: CONTINUE if cmd == b"Z" else None)
    with MilterClient.connect(server.address, timeout=TIMEOUT) as client:
        client.send_raw(pkt(b"Z", b"\0\xff garbage") + pkt(b"Q"))
        assert client.read_reply().action == "continue"
    server.stop()
    assert server.received == [(b"Z", b"\0\xff garbage"), (b"Q", b"")]


def test_high_level_api_refuses_nul_in_strings() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.settimeout(TIMEOUT)
        client = MilterClient(a, timeout=TIMEOUT)
        with pytest.raises(ValueError, match="NUL"):
            client.helo("bad\0name")


# --------------------------------------------------------------------------------------------
# Interop with a real libmilter milter (pymilter)
# --------------------------------------------------------------------------------------------

MILTER_SCRIPT = textwrap.dedent(
    '''
    import sys
    import Milter

    class NoopMilter(Milter.Base):
        """No-op milter with @noreply callbacks and a macro list, like our adapter will be."""

        def __init__(self):
            self.headers = []
            self.body_bytes = 0
            self.chunks = 0

        def setsymlist(self, stage, *macros):
            # pymilter 1.0.5 passes bytes here on Python 3 (TypeError); pass one str.
            return self._ctx.setsymlist(stage, " ".join(macros))

        @Milter.noreply
        def connect(self, hostname, family, hostaddr):
            self.client = hostname
            return Milter.CONTINUE

        @Milter.symlist("{tls_version}", "{cipher}")
        @Milter.noreply
        def hello(self, name):
            self.tls = self.getsymval("{tls_version}")
            return Milter.CONTINUE

        def envfrom(self, sender, *args):
            self.sender = sender
            return Milter.CONTINUE

        @Milter.noreply
        def envrcpt(self, rcpt, *args):
            return Milter.CONTINUE

        def data(self):
            return Milter.CONTINUE

        @Milter.noreply
        def header(self, name, value):
            self.headers.append((name, value))
            return Milter.CONTINUE

        @Milter.noreply
        def eoh(self):
            return Milter.CONTINUE

        @Milter.noreply
        def body(self, chunk):
            self.body_bytes += len(chunk)
            self.chunks += 1
            return Milter.CONTINUE

        def eom(self):
            self.addheader("X-Seen", f"{self.client}|{self.tls}|{self.sender}|"
                           f"{self.body_bytes}|{self.chunks}")
            self.addheader("X-Headers", repr(self.headers), 0)
            self.chgheader("Subject", 1, "")
            return Milter.ACCEPT

    Milter.factory = NoopMilter
    Milter.runmilter("mctest", sys.argv[1], timeout=10)
    '''
)


@pytest.fixture
def pymilter_socket() -> Iterator[str]:
    pytest.importorskip("Milter")
    tmp = tempfile.mkdtemp(prefix="mcl")  # short path: AF_UNIX paths are limited to 107 bytes
    sock_path = os.path.join(tmp, "milter.sock")
    script_path = Path(tmp) / "noop_milter.py"
    script_path.write_text(MILTER_SCRIPT)
    log = open(os.path.join(tmp, "milter.log"), "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, str(script_path), f"unix:{sock_path}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                pytest.fail(f"milter exited with {proc.returncode}")
            if os.path.exists(sock_path):
                with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
                    probe.settimeout(1)
                    probe.connect(sock_path)
                    break
            if time.monotonic() > deadline:
                pytest.fail("milter socket did not appear")
            time.sleep(0.05)
        yield f"unix:{sock_path}"
    finally:
        proc.kill()
        proc.wait(timeout=10)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_real_pymilter_negotiation_and_one_message(pymilter_socket: str) -> None:
    with MilterClient.connect(pymilter_socket, timeout=TIMEOUT) as client:
        negotiated = client.negotiate()
        # pymilter sets NR_* for @noreply callbacks and NO* for callbacks not overridden
        # (unknown); it always adds SKIP. Our macro list reaches the MTA.
        assert negotiated.version == 6
        assert negotiated.actions == ACTIONS_ALL
        assert set(describe_protocol(negotiated.protocol or 0)) == {
            "NR_CONN",
            "NR_HELO",
            "NR_RCPT",
            "NR_HDR",
            "NR_EOH",
            "NR_BODY",
            "NOUNKNOWN",
            "SKIP",
        }
        assert dict(negotiated.macros) == {"helo": ("{tls_version}", "{cipher}")}

        body = b"hello\n" + b"z" * 70000 + b"\n"
        result = client.send_message(
            b"Subject: test\n\tfolded\nFrom: <a@example.org>\n\n" + body,
            client_ip="192.0.2.1",
            helo="mx.example.org",
            mail_from="a@example.org",
            rcpts=["b@example.net"],
            macros={"helo": {"{tls_version}": "TLSv1.3", "{cipher_bits}": "256"}},
        )
    assert (result.action, result.stage) == ("accept", "eom")
    seen, headers, deleted = result.header_edits
    body_len = len(body) + 2  # two lines, CRLF each
    assert seen == HeaderEdit("add", "X-Seen", f"[192.0.2.1]|TLSv1.3|<a@example.org>|{body_len}|2")
    assert headers.kind == "insert" and headers.index == 0
    assert headers.value == repr([("Subject", "test\n\tfolded"), ("From", "<a@example.org>")])
    assert deleted == HeaderEdit("change", "Subject", "", 1)
    sent = {name for name, _ in result.timings}
    assert {"connect", "helo", "mail", "rcpt", "data", "header", "eoh", "body", "eom"} <= sent
    # Only MAIL, DATA and EOM were answered; everything else was NR.
    answered = [e.event for e in result.events if e.replied]
    assert answered == ["mail", "data", "eom"]
