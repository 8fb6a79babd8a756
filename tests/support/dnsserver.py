"""A small authoritative DNS server on loopback for tests (dnslib for the wire format).

Binds 127.0.0.1 only, UDP and TCP on the same ephemeral port, serves one zone from memory, and
counts every query it receives (name, type, protocol). Per-name behaviours:

* records with a TTL (A, AAAA, MX, TXT with several character-strings, PTR, CNAME — CNAMEs
  are followed inside the zone, as an authoritative server does for in-zone targets);
* NXDOMAIN and NODATA, both with the zone's SOA in the authority section (negative TTL);
* ``servfail``: RCODE SERVFAIL; ``refuse``: RCODE REFUSED; ``drop``: never answers (the
  client times out);
* ``delay_ms``: answers after a pause (the handler runs on its own thread);
* ``truncate``: over UDP, an empty answer with the TC bit, the full answer over TCP. Answers
  larger than the UDP payload size (512, or the client's EDNS size) are truncated the same way.

Usage::

    with DnsTestServer() as server:
        server.add("a.test", "TXT", '"v=spf1 -all"')
        settings = ResolverSettings(nameservers=(server.nameserver,))
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType

from dnslib import AAAA, CNAME, MX, PTR, QTYPE, RCODE, RR, SOA, TXT, A, DNSRecord
from dnslib.dns import DNSError

ZONE = "test"
_MAX_CNAME = 8


@dataclass
class _Name:
    records: dict[str, list[RR]] = field(default_factory=dict)
    servfail: bool = False
    refused: bool = False
    drop: bool = False
    truncate: bool = False
    delay_ms: int = 0


@dataclass(frozen=True)
class Query:
    name: str
    rdtype: str
    protocol: str  # "udp" or "tcp"


def _key(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _rdata(rdtype: str, text: str) -> object:
    if rdtype == "A":
        return A(text)
    if rdtype == "AAAA":
        return AAAA(text)
    if rdtype == "MX":
        preference, exchange = text.split()
        return MX(exchange, int(preference))
    if rdtype == "PTR":
        return PTR(text)
    if rdtype == "CNAME":
        return CNAME(text)
    raise ValueError(f"unsupported type {rdtype}")


class DnsTestServer:
    """See the module docstring. Start with ``start()`` or ``with``; always ``stop()``."""

    def __init__(self, negative_ttl: int = 60, port: int = 0) -> None:
        self._names: dict[str, _Name] = {}
        self._lock = threading.Lock()
        self._queries: list[Query] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self.negative_ttl = negative_ttl
        self.port = port  # 0: an ephemeral port (53 inside a private network namespace)

    # -- zone ------------------------------------------------------------------------------

    def _entry(self, name: str) -> _Name:
        with self._lock:
            return self._names.setdefault(_key(name), _Name())

    def add(self, name: str, rdtype: str, *values: str | list[bytes], ttl: int = 300) -> None:
        """Add records. TXT values are lists of character-strings (bytes) or one str."""
        rdtype = rdtype.upper()
        entry = self._entry(name)
        for value in values:
            if rdtype == "TXT":
                strings = [value] if isinstance(value, str) else list(value)
                rdata: object = TXT(strings)
            else:
                assert isinstance(value, str)
                rdata = _rdata(rdtype, value)
            rr = RR(_key(name) + ".", getattr(QTYPE, rdtype), rdata=rdata, ttl=ttl)
            with self._lock:
                entry.records.setdefault(rdtype, []).append(rr)

    def exists(self, name: str) -> None:
        """Make a name exist without records (NODATA for every type)."""
        self._entry(name)

    def servfail(self, name: str) -> None:
        self._entry(name).servfail = True

    def refuse(self, name: str) -> None:
        self._entry(name).refused = True

    def drop(self, name: str) -> None:
        self._entry(name).drop = True

    def truncate(self, name: str) -> None:
        self._entry(name).truncate = True

    def delay(self, name: str, milliseconds: int) -> None:
        self._entry(name).delay_ms = milliseconds

    # -- observation -----------------------------------------------------------------------

    @property
    def queries(self) -> list[Query]:
        with self._lock:
            return list(self._queries)

    def count(
        self, name: str | None = None, rdtype: str | None = None, protocol: str | None = None
    ) -> int:
        return sum(
            1
            for q in self.queries
            if (name is None or q.name == _key(name))
            and (rdtype is None or q.rdtype == rdtype.upper())
            and (protocol is None or q.protocol == protocol)
        )

    @property
    def nameserver(self) -> str:
        """The "IP:PORT" text our ResolverSettings take."""
        return f"127.0.0.1:{self.port}"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> DnsTestServer:
        udp, tcp = self._bind(self.port)
        self._udp, self._tcp = udp, tcp
        self.port = udp.getsockname()[1]
        for target in (self._serve_udp, self._serve_tcp):
            thread = threading.Thread(target=target, name=f"dns-test-{target.__name__}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in list(self._threads):
            thread.join(timeout=5)
        for sock in (self._udp, self._tcp):
            if sock is not None:
                sock.close()

    def __enter__(self) -> DnsTestServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @staticmethod
    def _bind(port: int = 0) -> tuple[socket.socket, socket.socket]:
        """UDP and TCP on one port of 127.0.0.1, ephemeral unless given (retry if TCP's twin
        is taken)."""
        for _ in range(50 if port == 0 else 1):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", port))
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind(("127.0.0.1", udp.getsockname()[1]))
            except OSError:
                udp.close()
                tcp.close()
                continue
            tcp.listen(16)
            return udp, tcp
        raise RuntimeError("no free UDP+TCP port pair on 127.0.0.1")

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)

    def _serve_udp(self) -> None:
        assert self._udp is not None
        while not self._stop.is_set():
            ready, _, _ = select.select([self._udp], [], [], 0.05)
            if not ready:
                continue
            try:
                data, peer = self._udp.recvfrom(65535)
            except OSError:
                return
            self._spawn(self._answer_udp, data, peer)

    def _answer_udp(self, data: bytes, peer: tuple[str, int]) -> None:
        reply = self._reply(data, "udp")
        if reply is not None and self._udp is not None and not self._stop.is_set():
            with contextlib.suppress(OSError):
                self._udp.sendto(reply, peer)

    def _serve_tcp(self) -> None:
        assert self._tcp is not None
        while not self._stop.is_set():
            ready, _, _ = select.select([self._tcp], [], [], 0.05)
            if not ready:
                continue
            try:
                conn, _peer = self._tcp.accept()
            except OSError:
                return
            self._spawn(self._serve_connection, conn)

    def _serve_connection(self, conn: socket.socket) -> None:
        conn.settimeout(0.05)
        with conn:
            buffer = b""
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65535)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buffer += chunk
                while len(buffer) >= 2:
                    (length,) = struct.unpack("!H", buffer[:2])
                    if len(buffer) < 2 + length:
                        break
                    message, buffer = buffer[2 : 2 + length], buffer[2 + length :]
                    reply = self._reply(message, "tcp")
                    if reply is None:
                        continue  # dropped: the client waits until it gives up
                    with contextlib.suppress(OSError):
                        conn.sendall(struct.pack("!H", len(reply)) + reply)

    # -- answering -------------------------------------------------------------------------

    def _soa(self) -> RR:
        return RR(
            ZONE + ".",
            QTYPE.SOA,
            rdata=SOA("ns." + ZONE, "hostmaster." + ZONE,
                      (1, 3600, 600, 86400, self.negative_ttl)),
            ttl=self.negative_ttl,
        )

    def _reply(self, data: bytes, protocol: str) -> bytes | None:
        try:
            request = DNSRecord.parse(data)
        except DNSError:
            return None
        qname = _key(str(request.q.qname))
        rdtype = QTYPE.get(request.q.qtype, str(request.q.qtype))
        with self._lock:
            self._queries.append(Query(qname, rdtype, protocol))
            entry = self._names.get(qname)
        reply = request.reply()
        if entry is not None and entry.drop:
            return None
        if entry is not None and entry.delay_ms and self._stop.wait(entry.delay_ms / 1000):
            return None  # stopping: never answer after teardown
        if entry is not None and (entry.servfail or entry.refused):
            reply.header.rcode = RCODE.SERVFAIL if entry.servfail else RCODE.REFUSED
            return bytes(reply.pack())
        self._fill(reply, qname, rdtype)
        packed = bytes(reply.pack())
        if protocol == "udp" and (
            (entry is not None and entry.truncate) or len(packed) > _udp_size(request)
        ):
            short = request.reply()
            short.header.tc = 1
            return bytes(short.pack())
        return packed

    def _fill(self, reply: DNSRecord, qname: str, rdtype: str) -> None:
        name = qname
        for _ in range(_MAX_CNAME):
            with self._lock:
                entry = self._names.get(name)
                records = list(entry.records.get(rdtype, [])) if entry else []
                aliases = list(entry.records.get("CNAME", [])) if entry else []
            if records:
                for rr in records:
                    reply.add_answer(rr)
                return
            if not aliases or rdtype == "CNAME":
                break
            reply.add_answer(aliases[0])
            name = _key(str(aliases[0].rdata.label))
        with self._lock:
            known = name in self._names or any(n.endswith("." + name) for n in self._names)
        if not known:
            reply.header.rcode = RCODE.NXDOMAIN
        reply.add_auth(self._soa())


def _udp_size(request: DNSRecord) -> int:
    for rr in request.ar:
        if rr.rtype == QTYPE.OPT:
            return max(512, int(rr.rclass))
    return 512


@contextlib.contextmanager
def running_server(negative_ttl: int = 60) -> Iterator[DnsTestServer]:
    server = DnsTestServer(negative_ttl).start()
    try:
        yield server
    finally:
        server.stop()


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate()`` until true or ``timeout`` seconds pass (a bound, not an assertion)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()
