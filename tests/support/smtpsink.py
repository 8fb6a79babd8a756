"""A tiny SMTP sink on loopback for tests: accepts mail and keeps it, or refuses chosen
recipients (``refuse`` → 550, ``tempfail`` → 451). No aiosmtpd / smtpd (neither is available);
a socketserver thread speaking just enough RFC 5321 for smtplib. Stops with its ``with``."""

from __future__ import annotations

import socketserver
import threading
from dataclasses import dataclass, field
from types import TracebackType


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes


@dataclass
class SinkState:
    messages: list[Received] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)
    tempfail: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(socketserver.StreamRequestHandler):
    state: SinkState

    def _reply(self, text: str) -> None:
        self.wfile.write(text.encode() + b"\r\n")
        self.wfile.flush()

    def handle(self) -> None:
        self._reply("220 sink.test ESMTP")
        sender, recipients = "", []
        while True:
            line = self.rfile.readline(65536)
            if not line:
                return
            command = line.decode("latin-1").strip()
            verb = command[:4].upper()
            if verb in ("EHLO", "HELO"):
                self._reply("250-sink.test\r\n250 8BITMIME" if verb == "EHLO" else "250 sink")
            elif verb == "MAIL":
                sender, recipients = command.partition(":")[2].strip().strip("<>").split(">")[0], []
                self._reply("250 ok")
            elif verb == "RCPT":
                address = command.partition(":")[2].strip().strip("<>").split(">")[0]
                if address in self.state.refuse:
                    self._reply("550 5.1.1 no such user")
                elif address in self.state.tempfail:
                    self._reply("451 4.3.0 try later")
                else:
                    recipients.append(address)
                    self._reply("250 ok")
            elif verb == "DATA":
                if not recipients:
                    self._reply("554 no valid recipients")
                    continue
                self._reply("354 go ahead")
                lines = []
                while True:
                    data = self.rfile.readline(1 << 20)
                    if not data or data in (b".\r\n", b".\n"):
                        break
                    lines.append(data[1:] if data.startswith(b"..") else data)
                with self.state.lock:
                    self.state.messages.append(Received(sender, recipients, b"".join(lines)))
                self._reply("250 queued")
            elif verb == "RSET":
                sender, recipients = "", []
                self._reply("250 ok")
            elif verb == "QUIT":
                self._reply("221 bye")
                return
            else:
                self._reply("250 ok")


class SmtpSink:
    """``with SmtpSink() as sink: sink.address`` ("127.0.0.1:PORT"), ``sink.state.messages``."""

    def __init__(self) -> None:
        self.state = SinkState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> SmtpSink:
        self.thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
