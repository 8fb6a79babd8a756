"""The benchmark's DNS server, run as its own process (``python -m bench.dns_server``).

It is ``tests/support/dnsserver.DnsTestServer`` (dnslib, UDP+TCP, per-query thread) with three
additions made by subclassing: a fixed latency added to every query, a chosen bind address (the
peers' resolv.conf can only name port 53), and a control name that answers the number of
queries served so far. A separate process keeps its CPU out of the driver's figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from dnslib import QTYPE, RR, TXT, DNSRecord
from dnslib.dns import DNSError

from bench import REPO
from tests.support.dnsserver import DnsTestServer

CONTROL_NAME = "_bench-query-count.invalid"


class LatencyDnsServer(DnsTestServer):
    """DnsTestServer on ``host:port`` that waits ``latency_ms`` before answering any query."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, latency_ms: float = 0.0,
                 negative_ttl: int = 60) -> None:
        super().__init__(negative_ttl)
        self.host = host
        self.wanted_port = port
        self.latency = latency_ms / 1000.0

    @property
    def nameserver(self) -> str:
        return f"{self.host}:{self.port}"

    def _bind(self, port: int = 0) -> tuple[socket.socket, socket.socket]:  # type: ignore[override]
        """Our own host and port (``port``, the base class's choice, is not used)."""
        for _ in range(50):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind((self.host, self.wanted_port))
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((self.host, udp.getsockname()[1]))
            except OSError:
                udp.close()
                tcp.close()
                if self.wanted_port:
                    raise
                continue
            tcp.listen(128)
            return udp, tcp
        raise RuntimeError(f"no free UDP+TCP port pair on {self.host}")

    def served(self) -> int:
        with self._lock:
            return len(self._queries)

    def _reply(self, data: bytes, protocol: str) -> bytes | None:
        try:
            request = DNSRecord.parse(data)
        except DNSError:
            return None
        if str(request.q.qname).rstrip(".").lower() == CONTROL_NAME:
            reply = request.reply()
            reply.add_answer(RR(CONTROL_NAME + ".", QTYPE.TXT, rdata=TXT(str(self.served())),
                                ttl=0))
            return bytes(reply.pack())
        if self.latency > 0 and self._stop.wait(self.latency):
            return None
        return super()._reply(data, protocol)


def load_zone(server: DnsTestServer, path: Path) -> int:
    """Add the records of a JSON zone file ``[[name, type, value, ttl], ...]``."""
    records = json.loads(path.read_text())
    for name, rdtype, value, ttl in records:
        if rdtype == "TXT":
            data = value.encode()
            chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
            server.add(name, "TXT", chunks, ttl=ttl)
        else:
            server.add(name, rdtype, value, ttl=ttl)
    return len(records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--zone", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    server = LatencyDnsServer(args.host, args.port, args.latency_ms)
    count = load_zone(server, args.zone)
    server.start()
    print(f"READY {server.host} {server.port} {count}", flush=True)
    try:
        while not done.wait(1.0):
            pass
    finally:
        server.stop()
    return 0


class DnsProcess:
    """Client side: start the server process, ask its query count, stop it by PID."""

    def __init__(self, zone_path: Path, *, host: str = "127.0.0.1", port: int = 0,
                 latency_ms: float = 0.0, log_path: Path | None = None) -> None:
        self.zone_path = zone_path
        self.args = ["--zone", str(zone_path), "--host", host, "--port", str(port),
                     "--latency-ms", str(latency_ms)]
        self.log_path = log_path or zone_path.with_suffix(".log")
        self.process: subprocess.Popen[str] | None = None
        self.host = host
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def nameserver(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> DnsProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bench.dns_server", *self.args],
                stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
                cwd=REPO)
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline and self.process.poll() is None:
            line = self.process.stdout.readline()
            if line.startswith("READY "):
                _, self.host, port, _count = line.split()
                self.port = int(port)
                return self
        self.stop()
        raise RuntimeError(f"DNS server did not start: {line!r} (see {self.log_path})")

    def query_count(self) -> int | None:
        """Queries served so far (the control query itself is not counted)."""
        import dns.message
        import dns.query

        query = dns.message.make_query(CONTROL_NAME + ".", "TXT")
        try:
            answer = dns.query.udp(query, self.host, port=self.port, timeout=2.0)
            return int(b"".join(answer.answer[0][0].strings).decode())
        except Exception:
            return None

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stdout is not None:
            with contextlib.suppress(OSError):
                self.process.stdout.close()
        self.process = None


if __name__ == "__main__":
    sys.exit(main())
