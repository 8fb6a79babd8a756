"""Log lines: ``mailsec-milter[PID]:`` on stderr and in RFC 3164 syslog datagrams, and one
logfmt quoting for every value of the per-message line (parsed back here)."""

from __future__ import annotations

import logging
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mailsec_milter import logsetup
from mailsec_milter.config import ConfigError, settings_from_mapping
from mailsec_milter.dns import StaticResolver
from mailsec_milter.engine import Engine
from mailsec_milter.milter import log_message
from mailsec_milter.model import Envelope, MessageSnapshot, parse_message
from mailsec_milter.policy import decide

_PAIR = re.compile(r'([a-z_]+)=("(?:[^"\\]|\\.)*"|[^ "]*)(?: |$)')
_UNESCAPE = re.compile(r'\\(x[0-9a-f]{2}|u[0-9a-f]{4}|.)')
_SIMPLE = {'"': '"', "\\": "\\", "n": "\n", "r": "\r", "t": "\t"}


def parse_logfmt(text: str) -> dict[str, str]:
    """A strict logfmt reader: the whole text must be ``key=value`` pairs, nothing else."""
    pairs: dict[str, str] = {}
    position = 0
    while position < len(text):
        match = _PAIR.match(text, position)
        assert match is not None, f"not logfmt at {position}: {text[position:]!r}"
        key, raw = match.groups()
        assert key not in pairs, f"key {key} twice"
        if raw.startswith('"'):
            raw = _UNESCAPE.sub(lambda m: _SIMPLE.get(m.group(1)) or chr(int(m.group(1)[1:], 16)),
                                raw[1:-1])
        pairs[key] = raw
        position = match.end()
    return pairs


HOSTILE = ["plain", "", "two words", 'say "hi"', "a=b", "back\\slash", "line\nbreak",
           "cr\rlf", "tab\there", "nul\x00", "bell\x07", "\x7f", "ünïcödé", "\udcff",
           'x" verdict="accept', "verdict=accept reason=none"]


@pytest.mark.parametrize("value", HOSTILE)
def test_logfmt_reads_back_every_value_and_never_breaks_the_line(value: str) -> None:
    text = logsetup.logfmt_pairs([("helo", value), ("verdict", "reject")])
    assert "\n" not in text and "\r" not in text and "\x00" not in text
    text.encode("utf-8")  # no lone surrogate reaches a handler
    assert parse_logfmt(text) == {"helo": value, "verdict": "reject"}


def test_logfmt_quotes_only_what_needs_it() -> None:
    assert logsetup.logfmt("mail.example.net") == "mail.example.net"
    assert logsetup.logfmt("<a@b.example>") == "<a@b.example>"
    assert logsetup.logfmt("pass:example.com:p=reject") == '"pass:example.com:p=reject"'
    assert logsetup.logfmt("") == '""'
    assert logsetup.logfmt('a "b"') == r'"a \"b\""'


ZONE = """
sender.example. 300 IN TXT "v=spf1 ip4:192.0.2.10 -all"
_dmarc.sender.example. 300 IN TXT "v=DMARC1; p=reject"
"""


def per_message_line(envelope: Envelope, raw: bytes) -> str:
    settings = settings_from_mapping({"milter": {"authserv_id": "mx.test.example"}})
    headers, body = parse_message(raw)
    with ThreadPoolExecutor(max_workers=2) as pool:
        analysis = Engine(settings, StaticResolver.from_zone_text(ZONE), pool).analyse(
            MessageSnapshot(envelope, headers, body))
    verdict = decide(analysis, envelope, settings)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("mailsec_milter.milter")
    keep, level = Keep(), logger.level
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)
    try:
        log_message(envelope, analysis, verdict, 1)
    finally:
        logger.removeHandler(keep)
        logger.setLevel(level)
    assert len(records) == 1
    return records[0].getMessage()


def test_the_per_message_line_starts_with_the_queue_id_and_every_value_reads_back() -> None:
    helo = 'evil host" verdict="accept'
    envelope = Envelope(client_ip="198.51.100.66", client_name="mail.forger.example", helo=helo,
                        mail_from='"john doe"@sender.example', queue_id="4AbCdE1",
                        rcpt_to=("b@example.net",))
    raw = (b"From: a@sender.example\r\nTo: b@example.net\r\nSubject: x\r\n\r\nbody\r\n")
    line = per_message_line(envelope, raw)
    assert line.startswith("4AbCdE1: queue_id=4AbCdE1 "), line
    fields = parse_logfmt(line.split(": ", 1)[1])
    assert fields == {
        "queue_id": "4AbCdE1",
        "client": "mail.forger.example[198.51.100.66]",
        "helo": helo,
        "mail_from": '<"john doe"@sender.example>',
        "auth": "no",
        "spf": "fail",
        "spf_helo": fields["spf_helo"],
        "dkim": "none",
        "dmarc": "fail:sender.example:p=reject",
        "arc": "none",
        "tls": "none",
        "forged_ar_removed": "1",
        "verdict": "reject",
        "reason": "dmarc_policy",
        "detail": fields["detail"],
    }
    assert "sender.example" in fields["detail"]


def test_without_a_queue_id_the_line_starts_like_postfixs_noqueue() -> None:
    envelope = Envelope(client_ip="192.0.2.10", client_name="", helo="h", mail_from="",
                        queue_id=None)
    line = per_message_line(envelope, b"From: a@sender.example\r\n\r\nbody\r\n")
    assert line.startswith("NOQUEUE: queue_id=- client=-[192.0.2.10] helo=h mail_from=<> ")
    parse_logfmt(line.split(": ", 1)[1])


# --------------------------------------------------------------------------------------------
# formatters and handlers


def _record(level: int, message: str, created: float = 1795830000.25) -> logging.LogRecord:
    record = logging.LogRecord("mailsec_milter.milter", level, __file__, 1, "%s", (message,), None)
    record.created, record.msecs = created, 250.0
    return record


def test_stderr_lines_carry_time_level_ident_and_pid() -> None:
    line = logsetup.StderrFormatter().format(_record(logging.INFO, "Q1: queue_id=Q1"))
    stamp = logging.Formatter().formatTime(_record(logging.INFO, ""), "%Y-%m-%d %H:%M:%S")
    assert line == f"{stamp},250 INFO mailsec-milter[{os.getpid()}]: Q1: queue_id=Q1"


def test_a_forked_worker_logs_its_own_pid() -> None:
    formatter = logsetup.StderrFormatter()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what a worker forked by the supervisor does
        try:
            os.write(write, formatter.format(_record(logging.INFO, "x")).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_line = pipe.read()
    os.waitpid(pid, 0)
    assert f"mailsec-milter[{pid}]: x" in child_line
    assert f"mailsec-milter[{os.getpid()}]: x" in formatter.format(_record(logging.INFO, "x"))


@pytest.fixture
def syslog_socket() -> Iterator[tuple[socket.socket, str]]:
    """A real unix datagram socket, as rsyslog or journald bind /dev/log."""
    folder = Path(tempfile.mkdtemp(prefix="syslog-"))
    path = str(folder / "log")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield sock, path
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        sock.close()
        os.unlink(path)
        folder.rmdir()


RFC3164 = re.compile(r"<(\d+)>([A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) ([\w-]+)\[(\d+)\]: (.*)",
                     re.S)


def test_syslog_target_sends_rfc3164_datagrams_with_facility_ident_and_pid(
        syslog_socket: tuple[socket.socket, str]) -> None:
    sock, path = syslog_socket
    logsetup.setup_logging("info", "syslog", "mail", path)
    log = logging.getLogger("mailsec_milter.test")
    log.info("Q1: queue_id=Q1 verdict=accept")
    log.warning("something odd")
    log.debug("not sent at level info")
    first = RFC3164.fullmatch(sock.recv(4096).decode())
    second = RFC3164.fullmatch(sock.recv(4096).decode())
    assert first is not None and second is not None
    assert int(first.group(1)) == 2 * 8 + 6  # LOG_MAIL, LOG_INFO
    assert int(second.group(1)) == 2 * 8 + 4  # LOG_MAIL, LOG_WARNING
    assert first.group(3) == second.group(3) == "mailsec-milter"
    assert first.group(4) == str(os.getpid())
    assert first.group(5) == "Q1: queue_id=Q1 verdict=accept"
    assert second.group(5) == "warning: something odd"
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)


def test_syslog_facility_is_configurable(syslog_socket: tuple[socket.socket, str]) -> None:
    sock, path = syslog_socket
    logsetup.setup_logging("info", "syslog", "local3", path)
    logging.getLogger("mailsec_milter.test").error("broken")
    match = RFC3164.fullmatch(sock.recv(4096).decode())
    assert match is not None
    assert int(match.group(1)) == (16 + 3) * 8 + 3  # LOG_LOCAL3, LOG_ERR
    assert match.group(5) == "error: broken"


def test_a_missing_syslog_socket_is_named_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(logsetup.LogSetupError) as caught:
        logsetup.setup_logging("info", "syslog", "mail", str(tmp_path / "no-such-log"))
    assert str(tmp_path / "no-such-log") in str(caught.value)
    assert "[log] syslog_socket" in str(caught.value)


def test_log_keys_are_validated() -> None:
    settings = settings_from_mapping({})
    assert (settings.log_target, settings.log_facility, settings.log_syslog_socket) == (
        "stderr", "mail", "/dev/log")
    for table, key in (({"target": "journal"}, "[log] target"),
                       ({"facility": "kern"}, "[log] facility"),
                       ({"syslog_socket": "dev/log"}, "[log] syslog_socket")):
        with pytest.raises(ConfigError, match=re.escape(key)):
            settings_from_mapping({"log": table})
    assert set(logsetup.FACILITIES) == set(
        settings_from_mapping.__globals__["FACILITY_NAMES"])


def test_dry_run_and_override_keys_read_back_too() -> None:
    envelope = Envelope(client_ip="198.51.100.66", client_name="", helo="h",
                        mail_from="x@forger.example", queue_id="Q2")
    raw = b"From: a@sender.example\r\nTo: b@example.net\r\n\r\nbody\r\n"
    settings = settings_from_mapping({"milter": {"authserv_id": "mx.test.example"},
                                      "policy": {"dry_run": True}})
    headers, body = parse_message(raw)
    with ThreadPoolExecutor(max_workers=2) as pool:
        analysis = Engine(settings, StaticResolver.from_zone_text(ZONE), pool).analyse(
            MessageSnapshot(envelope, headers, body))
    verdict = decide(analysis, envelope, settings)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("mailsec_milter.milter")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        log_message(envelope, analysis, verdict, 0)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    fields = parse_logfmt(records[0].getMessage().split(": ", 1)[1])
    assert fields["verdict"] == "accept" and fields["dry_run_would"] == "reject", fields
    assert list(fields)[-1] == "detail"
