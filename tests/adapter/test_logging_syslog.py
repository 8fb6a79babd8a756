"""The daemon with ``[log] target = "syslog"`` against a real syslog socket: what lands in
mail.log is RFC 3164, facility mail, ident mailsec-milter, the PID of the supervisor or of the
worker that logged, and the per-message line starts with the queue id (as Postfix's do)."""

from __future__ import annotations

import os
import re
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import milterclient as mc
from tests.support.dnsserver import DnsTestServer
from tests.support.milterproc import MilterProcess, render_toml
from tests.unit.test_logging_setup import RFC3164, parse_logfmt

LOG_MAIL = 2
LOG_INFO = 6


class SyslogReceiver:
    """A unix datagram socket bound like /dev/log; keeps every datagram it receives."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "log"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        os.chmod(self.path, 0o666)  # the daemon may run as nobody
        self.sock.settimeout(0.2)
        self.datagrams: list[str] = []
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._receive, name="syslog", daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        while not self.closing.is_set():
            try:
                self.datagrams.append(self.sock.recv(65536).decode("utf-8"))
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        self.closing.set()
        self.thread.join(5)
        self.sock.close()


class SyslogMilter(MilterProcess):
    """The daemon logging to ``receiver``; log() shows the datagrams (start() waits on it)."""

    def __init__(self, config: dict[str, dict[str, Any]], receiver: SyslogReceiver) -> None:
        config = {**config, "log": {"target": "syslog", "syslog_socket": str(receiver.path)}}
        super().__init__(config)
        self.receiver = receiver

    def log(self) -> str:
        return super().log() + "\n".join(self.receiver.datagrams)


@pytest.fixture
def receiver() -> Iterator[SyslogReceiver]:
    folder = Path(tempfile.mkdtemp(prefix="syslog-"))
    folder.chmod(0o755)
    receiver = SyslogReceiver(folder)
    try:
        yield receiver
    finally:
        receiver.close()
        receiver.path.unlink()
        folder.rmdir()


def test_the_daemon_logs_to_a_real_syslog_socket(receiver: SyslogReceiver) -> None:
    with DnsTestServer() as dns:
        dns.add("sender.example", "TXT", "v=spf1 ip4:192.0.2.10 -all")
        process = SyslogMilter({"dns": {"nameservers": [dns.nameserver], "timeout": "1s"},
                                "milter": {"workers": 2}}, receiver)
        with process:
            helo = 'odd "helo" name=x'
            with mc.MilterClient.connect(process.socket_spec) as client:
                client.send_message(
                    b"From: a@sender.example\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nbody\r\n",
                    client_ip="192.0.2.10", helo=helo, mail_from="a@sender.example",
                    rcpts=["b@example.net"], macros={"mail": {"i": "4QsYsL0g1"}})
            supervisor = process.process.pid if process.process else 0
            workers = process.worker_pids()
            stderr = Path(process.log_path).read_text()
    assert stderr == "", "with target syslog nothing goes to stderr"
    parsed = [RFC3164.fullmatch(datagram) for datagram in receiver.datagrams]
    assert all(parsed), receiver.datagrams
    lines = [match for match in parsed if match is not None]
    for match in lines:
        assert int(match.group(1)) // 8 == LOG_MAIL, match.group(0)
        assert match.group(3) == "mailsec-milter"
    started = [m for m in lines if "listening on" in m.group(5)]
    assert started and int(started[0].group(4)) == supervisor
    assert int(started[0].group(1)) == LOG_MAIL * 8 + LOG_INFO
    per_message = [m for m in lines if m.group(5).startswith("4QsYsL0g1: ")]
    assert len(per_message) == 1, receiver.datagrams
    line = per_message[0]
    assert int(line.group(4)) in workers and int(line.group(4)) != supervisor
    fields = parse_logfmt(line.group(5).split(": ", 1)[1])
    assert fields["queue_id"] == "4QsYsL0g1"
    assert fields["helo"] == helo
    assert fields["mail_from"] == "<a@sender.example>"
    assert fields["spf"] == "pass" and fields["verdict"] == "accept"
    # The supervisor's "stopped" line arrives too: every process keeps its log socket.
    assert re.search(r"mailsec-milter stopped", "\n".join(receiver.datagrams))


def test_an_unreachable_syslog_socket_is_a_clear_start_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-log"
    process = MilterProcess({"log": {"target": "syslog", "syslog_socket": str(missing)}})
    with pytest.raises(RuntimeError, match="exited early"):
        process.start(timeout=20)
    assert f"cannot reach the syslog socket {missing}" in process.log()


def test_a_reload_changes_the_log_level_in_the_workers(receiver: SyslogReceiver) -> None:
    """[log] level takes effect on reload (target, facility and socket need a restart)."""
    with DnsTestServer() as dns:
        config: dict[str, dict[str, Any]] = {
            "dns": {"nameservers": [dns.nameserver], "timeout": "1s"}}
        process = SyslogMilter(config, receiver)
        with process:
            assert process.process is not None

            def send(queue_id: str) -> None:
                with mc.MilterClient.connect(process.socket_spec) as client:
                    client.send_message(
                        b"From: a@sender.example\r\nTo: b@example.net\r\n\r\nbody\r\n",
                        client_ip="192.0.2.10", helo="h.example", mail_from="a@sender.example",
                        rcpts=["b@example.net"], macros={"mail": {"i": queue_id}})

            send("BEFORE1")
            quiet = {k: dict(v) for k, v in process.config.items()}
            quiet["log"]["level"] = "warning"
            process.write_config(render_toml(quiet))
            process.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 20
            while "configuration reloaded" not in process.log():
                assert time.monotonic() < deadline, process.log()
                time.sleep(0.05)
            send("AFTER1")
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and "AFTER1" not in process.log():
                time.sleep(0.05)
    text = process.log()
    assert "BEFORE1: queue_id=BEFORE1" in text
    assert "AFTER1" not in text
