"""The resolver seam: every DNS lookup of every check goes through here.

Owns: talking to nameservers (dnspython with explicit servers, never search domains), mapping
every failure to data (answer / nxdomain / nodata / timeout / servfail / refused), a TTL-bounded
cache that
also keeps negative answers, de-duplication of lookups already in flight (so a prefetch started
at MAIL FROM is reused at end of message), and per-message deadlines.
Must not: interpret records (SPF, DKIM and DMARC parsing live in checks/), log, or touch metrics
other than through the injected observer.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, TypeGuard, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.resolver

MxRecord = tuple[int, str]
TxtRecord = tuple[bytes, ...]
Record = str | MxRecord | TxtRecord

SUPPORTED_TYPES = frozenset({"A", "AAAA", "MX", "PTR", "TXT", "SPF", "CNAME"})


class DnsOutcome(StrEnum):
    """How a lookup ended; TIMEOUT, SERVFAIL and REFUSED are the temporary errors.

    REFUSED is its own word (every server answered REFUSED: usually a resolver that does not
    serve this host, an ACL to fix, not a failing zone) but the checks treat it as SERVFAIL.
    """

    ANSWER = "answer"
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"
    TIMEOUT = "timeout"
    SERVFAIL = "servfail"
    REFUSED = "refused"

    @property
    def is_temporary(self) -> bool:
        return self in (DnsOutcome.TIMEOUT, DnsOutcome.SERVFAIL, DnsOutcome.REFUSED)


@dataclass(frozen=True)
class DnsResult:
    """The data of one lookup. ``records`` holds, by type: A/AAAA/PTR/CNAME → str,
    MX → (preference, exchange), TXT/SPF → the record's character-strings as bytes."""

    name: str
    rdtype: str
    outcome: DnsOutcome
    records: tuple[Record, ...] = ()
    ttl: int = 0

    def texts(self) -> list[bytes]:
        """TXT records with their character-strings concatenated.

        See RFC 7208 §3.3 and RFC 6376 §3.6.2.2.
        """
        return [b"".join(r) for r in self.records if _is_txt(r)]


def _is_txt(record: Record) -> TypeGuard[TxtRecord]:
    return isinstance(record, tuple) and all(isinstance(part, bytes) for part in record)


class Deadline:
    """A point in monotonic time after which no lookup for this message may wait any longer."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._expires = clock() + seconds

    def remaining(self) -> float:
        return max(0.0, self._expires - self._clock())

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0.0


class Lookup(Protocol):
    """What a check sees: one call, never raises for DNS trouble."""

    def query(self, name: str, rdtype: str) -> DnsResult: ...


class Resolver(Protocol):
    """A shared resolver: queries with an optional deadline, and prefetches."""

    def query(self, name: str, rdtype: str, deadline: Deadline | None = None) -> DnsResult: ...

    def prefetch(self, name: str, rdtype: str) -> None: ...

    def cached(self, name: str, rdtype: str) -> DnsResult | None:
        """The answer if it is known without asking the network, else None."""
        ...

    def close(self) -> None: ...


class CacheMissError(Exception):
    """Raised by CachedOnlyLookup: this answer would need the network."""


class CachedOnlyLookup:
    """A Lookup that answers only from the resolver's cache, for work worth doing inline only
    when no DNS round trip is needed. A miss raises CacheMissError and sets ``missed``: the flag
    stays true even where a library swallows the exception (pyspf's bare ``except:`` around
    exp= lookups), so the caller can always tell the result is not to be used."""

    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver
        self.missed = False

    def query(self, name: str, rdtype: str) -> DnsResult:
        answer = self._resolver.cached(name, rdtype)
        if answer is None:
            self.missed = True
            raise CacheMissError(f"{name}/{rdtype} is not cached")
        return answer


class BoundLookup:
    """A resolver bound to one message's deadline; this is what checks receive."""

    def __init__(self, resolver: Resolver, deadline: Deadline | None) -> None:
        self._resolver = resolver
        self._deadline = deadline

    def query(self, name: str, rdtype: str) -> DnsResult:
        return self._resolver.query(name, rdtype, self._deadline)


QueryObserver = Callable[[str, DnsOutcome, float], None]
"""Called once per lookup that went to the network: (rdtype, outcome, seconds)."""


def normalise_name(name: str) -> str:
    return name.strip().rstrip(".").lower()


def parse_nameserver(text: str) -> tuple[str, int]:
    """Parse ``"IP"``, ``"IP:PORT"``, ``"[IPv6]"``, ``"[IPv6]:PORT"`` or a bare IPv6 address
    into (ip, port). A bare IPv6 address never carries a port (``"::1:53"`` is an address):
    write ``"[::1]:53"``. Raises ValueError naming the text."""
    import ipaddress

    value = text.strip()
    port_text = ""
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"bad nameserver {text!r}: expected [IPv6] or [IPv6]:PORT")
        if rest:
            port_text = rest[1:]
            if not port_text:
                raise ValueError(f"bad nameserver {text!r}: empty port")
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
        if not port_text:
            raise ValueError(f"bad nameserver {text!r}: empty port")
    else:
        host = value
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"bad nameserver {text!r}: {host!r} is not an IP address") from None
    if value.startswith("[") and address.version != 6:
        raise ValueError(f"bad nameserver {text!r}: brackets are for IPv6 addresses")
    port = 53
    if port_text:
        if not (port_text.isascii() and port_text.isdigit()):
            raise ValueError(f"bad nameserver {text!r}: port {port_text!r} is not a number")
        port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"bad nameserver {text!r}: port out of range 1..65535")
    return str(address), port


class _TtlCache:
    """A small LRU cache of DnsResults with per-entry expiry; thread-safe."""

    def __init__(self, max_entries: int, clock: Callable[[], float]) -> None:
        self._max = max_entries
        self._clock = clock
        self._data: OrderedDict[tuple[str, str], tuple[float, DnsResult]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> DnsResult | None:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return None
            expires, result = item
            if expires <= self._clock():
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return result

    def put(self, key: tuple[str, str], result: DnsResult, ttl: float) -> None:
        if ttl <= 0 or self._max <= 0:
            return
        with self._lock:
            self._data[key] = (self._clock() + ttl, result)
            self._data.move_to_end(key)
            while len(self._data) > self._max:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


@dataclass(frozen=True)
class ResolverSettings:
    nameservers: tuple[str, ...] = ()
    timeout: float = 5.0
    cache_entries: int = 10_000
    min_ttl: int = 0
    max_ttl: int = 3600
    negative_ttl: int = 300
    prefetch_threads: int = 16


class CachingResolver:
    """The production resolver: dnspython underneath, our cache and in-flight table on top."""

    def __init__(
        self,
        settings: ResolverSettings,
        observer: QueryObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        backend: Callable[[str, str, float], DnsResult] | None = None,
    ) -> None:
        self._settings = settings
        self._observer = observer
        self._clock = clock
        self._cache = _TtlCache(settings.cache_entries, clock)
        self._inflight: dict[tuple[str, str], Future[DnsResult]] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, settings.prefetch_threads), thread_name_prefix="dns-prefetch"
        )
        self._backend = backend or _DnspythonBackend(settings).lookup

    def close(self) -> None:
        """No new prefetches; lookups already queued or running still finish (a reload must
        not turn the answers of messages in flight into timeouts)."""
        self._pool.shutdown(wait=False, cancel_futures=False)

    def prefetch(self, name: str, rdtype: str) -> None:
        """Start a lookup in the background unless its answer is cached or already coming."""
        key = (normalise_name(name), rdtype.upper())
        if not key[0] or self._cache.get(key) is not None:
            return
        with self._lock:
            if key in self._inflight:
                return
            try:
                future = self._pool.submit(self._fetch, key, self._settings.timeout)
            except RuntimeError:  # pool shut down during reload/stop: the lookup runs later
                return
            self._inflight[key] = future

        def forget(done: Future[DnsResult]) -> None:
            with self._lock:
                if self._inflight.get(key) is done:
                    del self._inflight[key]

        future.add_done_callback(forget)

    def cached(self, name: str, rdtype: str) -> DnsResult | None:
        return self._cache.get((normalise_name(name), rdtype.upper()))

    def query(self, name: str, rdtype: str, deadline: Deadline | None = None) -> DnsResult:
        key = (normalise_name(name), rdtype.upper())
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        budget = self._settings.timeout
        if deadline is not None:
            budget = min(budget, deadline.remaining())
        if budget <= 0:
            return DnsResult(key[0], key[1], DnsOutcome.TIMEOUT)
        with self._lock:
            future = self._inflight.get(key)
        if future is not None and not (future.running() or future.done()):
            # Still queued behind other prefetches (perhaps another message's flood of them):
            # waiting would make this message pay for that queue. Ask the network ourselves.
            future = None
        if future is None:
            # A prefetch may have finished between the first cache look and the in-flight look:
            # it stores its answer before it leaves the in-flight table, so look once more.
            cached = self._cache.get(key)
            if cached is not None:
                return cached
        else:
            try:
                return future.result(timeout=budget)
            except Exception:  # the shared lookup took too long for this message
                return DnsResult(key[0], key[1], DnsOutcome.TIMEOUT)
        return self._fetch(key, budget)

    def _fetch(self, key: tuple[str, str], budget: float) -> DnsResult:
        started = self._clock()
        try:
            result = self._backend(key[0], key[1], budget)
        except Exception:  # a backend bug must not become "no record"
            result = DnsResult(key[0], key[1], DnsOutcome.SERVFAIL)
        if self._observer is not None:
            # A broken metrics hook must not turn an answer into a failed check.
            with contextlib.suppress(Exception):
                self._observer(key[1], result.outcome, self._clock() - started)
        self._cache.put(key, result, self._ttl_for(result))
        return result

    def _ttl_for(self, result: DnsResult) -> float:
        s = self._settings
        if result.outcome.is_temporary:
            return 0
        if result.outcome is DnsOutcome.ANSWER:
            return max(s.min_ttl, min(result.ttl, s.max_ttl))
        return max(s.min_ttl, min(result.ttl or s.negative_ttl, s.negative_ttl))


class _DnspythonBackend:
    """One lookup through dnspython, with every error mapped to a DnsOutcome."""

    def __init__(self, settings: ResolverSettings) -> None:
        if settings.nameservers:
            resolver = dns.resolver.Resolver(configure=False)
            # Nameserver objects, not address strings + nameserver_ports: one address may then
            # appear with different ports (two local resolvers on 127.0.0.1).
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(host, port)
                for host, port in map(parse_nameserver, settings.nameservers)
            ]
        else:
            resolver = dns.resolver.Resolver(configure=True)
        # No search list, no domain suffix: mail identities are always absolute names.
        resolver.search = []
        resolver.domain = dns.name.root
        resolver.use_search_by_default = False
        resolver.timeout = settings.timeout
        resolver.lifetime = settings.timeout
        resolver.cache = None  # our own cache sits above, with TTL bounds
        self._resolver = resolver

    def lookup(self, name: str, rdtype: str, budget: float) -> DnsResult:
        try:
            qname = dns.name.from_text(name if name.endswith(".") else name + ".")
        except dns.exception.DNSException:
            return DnsResult(name, rdtype, DnsOutcome.NXDOMAIN)
        if rdtype == "SPF":  # RR type 99 is obsolete (RFC 7208 §14.1); never asked of the network
            return DnsResult(name, rdtype, DnsOutcome.NODATA)
        qtype = rdtype
        try:
            answer = self._resolver.resolve(
                qname, qtype, lifetime=max(budget, 0.001), raise_on_no_answer=False, search=False
            )
        except dns.resolver.NXDOMAIN as exc:
            return DnsResult(name, rdtype, DnsOutcome.NXDOMAIN, ttl=_negative_ttl(exc))
        except (dns.resolver.LifetimeTimeout, dns.exception.Timeout):
            return DnsResult(name, rdtype, DnsOutcome.TIMEOUT)
        except dns.resolver.NoNameservers as exc:
            return DnsResult(name, rdtype, _no_nameservers_outcome(exc))
        except dns.resolver.YXDOMAIN:
            return DnsResult(name, rdtype, DnsOutcome.SERVFAIL)
        except dns.exception.DNSException:
            return DnsResult(name, rdtype, DnsOutcome.SERVFAIL)
        if answer.rrset is None:
            ttl = _soa_minimum(answer.response)
            return DnsResult(name, rdtype, DnsOutcome.NODATA, ttl=ttl)
        records: list[Record] = []
        for rdata in answer.rrset:
            if qtype in ("A", "AAAA"):
                records.append(str(rdata.address))
            elif qtype == "MX":
                records.append((int(rdata.preference), rdata.exchange.to_text(True)))
            elif qtype in ("PTR", "CNAME"):
                records.append(rdata.target.to_text(True))
            elif qtype == "TXT":
                records.append(tuple(bytes(s) for s in rdata.strings))
        # The smallest TTL along a CNAME chain bounds how long the answer may be kept.
        ttl = min(int(answer.rrset.ttl), int(answer.chaining_result.minimum_ttl))
        return DnsResult(name, rdtype, DnsOutcome.ANSWER, tuple(records), ttl)


def _no_nameservers_outcome(exc: dns.resolver.NoNameservers) -> DnsOutcome:
    """REFUSED when every server that was tried answered REFUSED, else SERVFAIL.

    dnspython records each server's failure as ``(server, tcp, port, error, response)``, the
    error being the rcode's text for a server that answered with an error rcode.
    """
    errors = exc.kwargs.get("errors") or []
    refused = [error for error in errors if len(error) > 3 and str(error[3]) == "REFUSED"]
    return DnsOutcome.REFUSED if errors and len(refused) == len(errors) else DnsOutcome.SERVFAIL


def _soa_minimum(response: dns.message.Message | None) -> int:
    if response is None:
        return 0
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA:
            return int(min(rrset.ttl, rrset[0].minimum))
    return 0


def _negative_ttl(exc: dns.resolver.NXDOMAIN) -> int:
    responses: dict[dns.name.Name, dns.message.Message] = exc.kwargs.get("responses") or {}
    for response in responses.values():
        return _soa_minimum(response)
    return 0


_MAX_CNAME_CHAIN = 16  # dnspython's MAX_CHAIN: a longer chain raises ChainTooLong (→ SERVFAIL)


class StaticResolver:
    """A resolver over fixed records, for unit tests, golden cases and ``check --zone``.

    Zone text, one entry a line (``;`` or ``#`` start a comment)::

        example.com.  300  TXT  "v=spf1 -all"
        example.com.       A    192.0.2.1
        example.com.       MX   10 mx.example.com.
        slow.example.      TXT  TIMEOUT      ; the lookup times out
        broken.example.    TXT  SERVFAIL     ; the server fails (also REFUSED, NXDOMAIN, NODATA)

    ``from_zone_file`` also reads ordinary BIND zone files (``parse_zone_file``).

    Names without records of the asked type but with other records give NODATA; unknown names
    give NXDOMAIN. CNAMEs are followed for other types, as a recursive resolver does (a loop or
    a chain longer than 16 gives SERVFAIL). Every query is counted in ``queries`` so tests can
    assert lookup limits.
    """

    def __init__(self, records: Sequence[DnsResult] = ()) -> None:
        self._by_key: dict[tuple[str, str], DnsResult] = {}
        self._names: set[str] = set()
        self.queries: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        for result in records:
            self._add(result)

    @classmethod
    def from_zone_text(cls, text: str) -> StaticResolver:
        return cls(parse_zone_text(text))

    @classmethod
    def from_zone_file(cls, text: str, origin: str | None = None,
                       source: str = "<zone>") -> StaticResolver:
        return cls(parse_zone_file(text, origin, source))

    def _add(self, result: DnsResult) -> None:
        key = (normalise_name(result.name), result.rdtype.upper())
        existing = self._by_key.get(key)
        if existing is not None and existing.outcome is DnsOutcome.ANSWER:
            result = DnsResult(
                existing.name, existing.rdtype, DnsOutcome.ANSWER,
                existing.records + result.records, min(existing.ttl, result.ttl),
            )
        self._by_key[key] = result
        # Every ancestor of a name exists (an empty non-terminal answers NODATA, RFC 8020).
        labels = key[0].split(".")
        for i in range(len(labels)):
            self._names.add(".".join(labels[i:]))

    def prefetch(self, name: str, rdtype: str) -> None:
        return None

    def cached(self, name: str, rdtype: str) -> DnsResult | None:
        # No cache: checks over fixed records always take the full path (through query(),
        # which counts them and honours deadlines), as the tests of those paths expect.
        return None

    def close(self) -> None:
        return None

    def query(self, name: str, rdtype: str, deadline: Deadline | None = None) -> DnsResult:
        key = (normalise_name(name), rdtype.upper())
        with self._lock:
            self.queries.append(key)
        if deadline is not None and deadline.expired:
            return DnsResult(key[0], key[1], DnsOutcome.TIMEOUT)
        name, rdtype = key
        seen = {name}
        for _ in range(_MAX_CNAME_CHAIN):
            found = self._by_key.get((name, rdtype))
            if found is not None:
                return DnsResult(key[0], rdtype, found.outcome, found.records, found.ttl)
            alias = None if rdtype == "CNAME" else self._by_key.get((name, "CNAME"))
            if alias is None:
                break
            if alias.outcome is not DnsOutcome.ANSWER or not alias.records:
                return DnsResult(key[0], rdtype, alias.outcome)
            # Follow the alias as a recursive resolver does; a loop is a server failure.
            name = str(alias.records[0])
            if name in seen:
                return DnsResult(key[0], rdtype, DnsOutcome.SERVFAIL)
            seen.add(name)
        else:
            return DnsResult(key[0], rdtype, DnsOutcome.SERVFAIL)
        if name in self._names:
            return DnsResult(key[0], rdtype, DnsOutcome.NODATA)
        return DnsResult(key[0], rdtype, DnsOutcome.NXDOMAIN)


def parse_zone_text(text: str) -> list[DnsResult]:
    """Parse the zone dialect documented on StaticResolver. Raises ValueError naming the line."""
    results: list[DnsResult] = []
    for number, raw_line in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw_line).strip()
        if not line:
            continue
        try:
            results.append(_parse_zone_line(line))
        except (ValueError, IndexError) as exc:
            raise ValueError(f"zone line {number}: {exc}: {raw_line.strip()!r}") from None
    return results


# Lines only a BIND zone file has: a $ directive, or "@" for the origin.
_BIND_ONLY = re.compile(r"^(?:\$[A-Za-z]|@\s)", re.M)
# Stands in for "no origin given": a name made absolute under it was relative in the file.
_NO_ORIGIN = dns.name.from_text("origin-not-set.invalid.")


def parse_zone_file(text: str, origin: str | None = None,
                    source: str = "<zone>") -> list[DnsResult]:
    """Read ``check --zone``'s file: the one-line format above, or an ordinary BIND zone file.

    A file with no ``$`` directive and no ``@`` that the one-line parser takes (absolute names,
    one record a line, the TIMEOUT/SERVFAIL/... outcome words) is read as before; anything
    else, or a one-label owner name, is read by dnspython as RFC 1035 master-file text:
    ``$ORIGIN``, ``$TTL``, relative names, ``@``, parentheses, multi-string TXT. ``origin`` is
    the origin before any ``$ORIGIN`` line; without either, a relative name is an error rather
    than a silent name under the root.
    Records of types we never ask for (SOA, NS, ...) only make their names exist. Raises
    ValueError naming the line.
    """
    one_line_error: ValueError | None = None
    if origin is None and not _BIND_ONLY.search(text):
        try:
            results = parse_zone_text(text)
        except ValueError as exc:
            one_line_error = exc
        else:
            # a one-label owner ("mail", "_dmarc") is a relative BIND name, never a real TLD
            if all("." in result.name for result in results):
                return results
    try:
        return _parse_bind_zone(text, origin, source)
    except ValueError as exc:
        if one_line_error is not None and "origin" not in str(exc):
            raise ValueError(f"{exc} (read as a BIND zone file; as the one-line format: "
                             f"{one_line_error})") from None
        raise


class _ZoneCollector:
    """The part of a dnspython transaction its zone-file ``Reader`` uses, keeping every record.

    A real transaction refuses an SOA anywhere but at its one origin, and the reader silently
    drops names outside that origin; a ``check --zone`` file may hold several zones' records.
    """

    def __init__(self) -> None:
        self.manager = self
        self.rdatas: dict[tuple[dns.name.Name, int], tuple[int, list[Any]]] = {}

    def origin_information(self) -> tuple[dns.name.Name, bool, dns.name.Name]:
        return dns.name.root, False, dns.name.root  # every name is inside the root

    def check_put_rdataset(self, check: object) -> None:
        return None

    def add(self, name: dns.name.Name, ttl: int, rdata: Any) -> None:
        key = (name, int(rdata.rdtype))
        old_ttl, rdatas = self.rdatas.get(key, (ttl, []))
        rdatas.append(rdata)
        self.rdatas[key] = (min(old_ttl, ttl), rdatas)

    def _set_origin(self, origin: dns.name.Name) -> None:
        return None

    def add_unicode(self, value: str) -> None:
        return None


def _parse_bind_zone(text: str, origin: str | None, source: str) -> list[DnsResult]:
    import dns.rdataclass
    import dns.tokenizer
    import dns.zonefile

    collector = _ZoneCollector()
    try:
        start = dns.name.from_text(origin, dns.name.root) if origin else _NO_ORIGIN
        reader = dns.zonefile.Reader(dns.tokenizer.Tokenizer(text, source), dns.rdataclass.IN,
                                     cast(Any, collector), allow_include=False)
        # What relative names and "@" hang from until a $ORIGIN line changes it.
        reader.current_origin = reader.last_name = start
        reader.read()
    except dns.exception.DNSException as exc:
        raise ValueError(str(exc) or type(exc).__name__) from None
    results: list[DnsResult] = []
    for (owner, rdtype_code), (ttl, rdatas) in collector.rdatas.items():
        if owner.is_subdomain(_NO_ORIGIN):
            relative = owner.relativize(_NO_ORIGIN).to_text()
            raise ValueError(f"{source}: the relative name {relative!r} needs an $ORIGIN line "
                             "or --origin")
        rdtype = dns.rdatatype.to_text(dns.rdatatype.RdataType.make(rdtype_code))
        records: list[Record] = []
        for rdata in rdatas:
            if rdtype in ("A", "AAAA"):
                records.append(str(rdata.address))
            elif rdtype == "MX":
                records.append((int(rdata.preference), normalise_name(rdata.exchange.to_text())))
            elif rdtype in ("PTR", "CNAME"):
                records.append(normalise_name(rdata.target.to_text()))
            elif rdtype in ("TXT", "SPF"):
                records.append(tuple(bytes(part) for part in rdata.strings))
        results.append(DnsResult(normalise_name(owner.to_text()), rdtype, DnsOutcome.ANSWER,
                                 tuple(records), ttl))
    return results


def _strip_comment(line: str) -> str:
    out: list[str] = []
    quoted = False
    escaped = False
    for char in line:
        if escaped:  # the character after a backslash inside quotes is data (``\"``)
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif not quoted and char in ";#":
            break
        out.append(char)
    return "".join(out)


def _parse_zone_line(line: str) -> DnsResult:
    name, rest = line.split(None, 1)
    parts = rest.split(None, 1)
    ttl = 300
    if parts[0].isdigit():
        ttl = int(parts[0])
        parts = parts[1].split(None, 1)
    if parts[0].upper() == "IN":
        parts = parts[1].split(None, 1)
    rdtype = parts[0].upper()
    rdata = parts[1].strip() if len(parts) > 1 else ""
    if rdtype not in SUPPORTED_TYPES:
        raise ValueError(f"unsupported type {rdtype}")
    if rdata.upper() in ("TIMEOUT", "SERVFAIL", "REFUSED", "NXDOMAIN", "NODATA"):
        return DnsResult(normalise_name(name), rdtype, DnsOutcome(rdata.lower()))
    record: Record
    if rdtype in ("TXT", "SPF"):
        record = _parse_txt_rdata(rdata)
    elif rdtype == "MX":
        pref, exchange = rdata.split()
        record = (int(pref), normalise_name(exchange))
    elif rdtype in ("PTR", "CNAME"):
        record = normalise_name(rdata)
    else:
        import ipaddress

        address = ipaddress.ip_address(rdata)
        if address.version != (4 if rdtype == "A" else 6):
            raise ValueError(f"{rdata} is not an {'IPv4' if rdtype == 'A' else 'IPv6'} address")
        record = str(address)
    return DnsResult(normalise_name(name), rdtype, DnsOutcome.ANSWER, (record,), ttl)


def _parse_txt_rdata(rdata: str) -> TxtRecord:
    """Parse one or more quoted character-strings (``\\"`` and ``\\DDD`` escapes allowed)."""
    if not rdata.startswith('"'):
        return (rdata.encode(),)
    strings: list[bytes] = []
    i = 0
    while i < len(rdata):
        if rdata[i].isspace():
            i += 1
            continue
        if rdata[i] != '"':
            raise ValueError("text outside quotes")
        i += 1
        buf = bytearray()
        while i < len(rdata) and rdata[i] != '"':
            if rdata[i] == "\\" and i + 1 < len(rdata):
                if rdata[i + 1 : i + 4].isdigit() and len(rdata[i + 1 : i + 4]) == 3:
                    buf.append(int(rdata[i + 1 : i + 4]))
                    i += 4
                    continue
                buf.extend(rdata[i + 1].encode())
                i += 2
                continue
            buf.extend(rdata[i].encode())
            i += 1
        if i >= len(rdata):
            raise ValueError("unterminated quoted string")
        i += 1
        strings.append(bytes(buf))
    return tuple(strings)
