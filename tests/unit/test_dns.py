"""The resolver seam: zone-text parsing, StaticResolver semantics, and CachingResolver against a
real UDP+TCP DNS server on 127.0.0.1 (tests/support/dnsserver.py).

No assertion depends on wall-clock time: TTLs are driven by an injected clock, and timeouts only
bound how long a test may take.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from mailsec_milter.dns import (
    CachingResolver,
    Deadline,
    DnsOutcome,
    DnsResult,
    ResolverSettings,
    StaticResolver,
    parse_nameserver,
    parse_zone_text,
)
from tests.support.dnsserver import DnsTestServer

# --------------------------------------------------------------------------------------------
# parse_zone_text


def test_zone_quoted_strings_with_escapes() -> None:
    (result,) = parse_zone_text(r'x.test. TXT "a\"b; c # d" "back\\slash" "\065\066C"')
    assert result.records == ((b'a"b; c # d', b"back\\slash", b"ABC"),)


def test_zone_multi_string_txt_is_concatenated_by_texts() -> None:
    (result,) = parse_zone_text('x.test. 60 IN TXT "v=spf1 " "ip4:192.0.2.1" " -all"')
    assert result.records == ((b"v=spf1 ", b"ip4:192.0.2.1", b" -all"),)
    assert result.texts() == [b"v=spf1 ip4:192.0.2.1 -all"]
    assert result.ttl == 60
    assert result.outcome is DnsOutcome.ANSWER


def test_zone_comments_and_blank_lines() -> None:
    text = """
    ; a comment line
    # another comment line
    a.test.   A    192.0.2.1      ; trailing comment
    b.test.   TXT  "has ; and # inside"   # trailing comment
    """
    results = parse_zone_text(text)
    assert [(r.name, r.rdtype, r.records) for r in results] == [
        ("a.test", "A", ("192.0.2.1",)),
        ("b.test", "TXT", ((b"has ; and # inside",),)),
    ]


def test_zone_types_and_normalisation() -> None:
    results = parse_zone_text(
        """
        Mail.Example.TEST.  300 MX  10 MX1.Example.Test.
        alias.test.             CNAME Target.Test.
        1.2.0.192.in-addr.arpa. PTR Host.Test.
        v6.test.                AAAA 2001:DB8::0001
        """
    )
    assert [(r.name, r.rdtype, r.records) for r in results] == [
        ("mail.example.test", "MX", ((10, "mx1.example.test"),)),
        ("alias.test", "CNAME", ("target.test",)),
        ("1.2.0.192.in-addr.arpa", "PTR", ("host.test",)),
        ("v6.test", "AAAA", ("2001:db8::1",)),
    ]


@pytest.mark.parametrize("word", ["TIMEOUT", "SERVFAIL", "REFUSED", "NXDOMAIN", "NODATA"])
def test_zone_outcome_lines(word: str) -> None:
    (result,) = parse_zone_text(f"slow.test. TXT {word}")
    assert result.outcome is DnsOutcome(word.lower())
    assert result.records == ()


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("x.test. HINFO foo", "unsupported type HINFO"),
        ('x.test. TXT "unterminated', "unterminated"),
        ('x.test. TXT "a" junk', "outside quotes"),
        ("x.test. MX mail.test.", ""),
        ("x.test. A 2001:db8::1", "not an IPv4 address"),
        ("x.test. AAAA 192.0.2.1", "not an IPv6 address"),
        ("x.test. A 192.0.2.300", ""),
        ("x.test.", ""),
        ("x.test. 300", ""),
        (r'x.test. TXT "\999"', ""),
    ],
)
def test_zone_errors_name_the_line(line: str, fragment: str) -> None:
    text = f"ok.test. A 192.0.2.1\n; comment\n{line}\n"
    with pytest.raises(ValueError, match="zone line 3") as info:
        parse_zone_text(text)
    assert fragment in str(info.value)
    assert repr(line.strip()) in str(info.value)  # the offending text is quoted back


# --------------------------------------------------------------------------------------------
# StaticResolver


def test_static_nxdomain_nodata_and_empty_non_terminal() -> None:
    resolver = StaticResolver.from_zone_text(
        'a.b.example.test. TXT "x"\nb.example.test. A 192.0.2.1'
    )
    assert resolver.query("a.b.example.test", "TXT").outcome is DnsOutcome.ANSWER
    assert resolver.query("a.b.example.test", "A").outcome is DnsOutcome.NODATA
    assert resolver.query("b.example.test", "TXT").outcome is DnsOutcome.NODATA
    # example.test has no records of its own but names below it: an empty non-terminal.
    assert resolver.query("example.test", "TXT").outcome is DnsOutcome.NODATA
    assert resolver.query("c.example.test", "TXT").outcome is DnsOutcome.NXDOMAIN
    assert resolver.query("x.a.b.example.test", "TXT").outcome is DnsOutcome.NXDOMAIN


def test_static_counts_queries_and_normalises_names() -> None:
    resolver = StaticResolver.from_zone_text('a.test. TXT "one"\na.test. TXT "two"')
    result = resolver.query("A.Test.", "txt")
    assert result.texts() == [b"one", b"two"]  # two lines → two records of one RRset
    assert resolver.queries == [("a.test", "TXT")]


def test_static_expired_deadline_times_out() -> None:
    resolver = StaticResolver.from_zone_text('a.test. TXT "one"')
    assert resolver.query("a.test", "TXT", Deadline(0)).outcome is DnsOutcome.TIMEOUT
    assert resolver.query("a.test", "TXT", Deadline(60)).outcome is DnsOutcome.ANSWER


def test_static_follows_cnames_like_a_recursive_resolver() -> None:
    resolver = StaticResolver.from_zone_text(
        """
        alias.test.  CNAME mid.test.
        mid.test.    CNAME target.test.
        target.test. A 192.0.2.7
        dangling.test. CNAME nowhere.test.
        loop1.test.  CNAME loop2.test.
        loop2.test.  CNAME loop1.test.
        """
    )
    answer = resolver.query("alias.test", "A")
    assert (answer.name, answer.outcome, answer.records) == (
        "alias.test", DnsOutcome.ANSWER, ("192.0.2.7",))
    assert resolver.query("alias.test", "CNAME").records == ("mid.test",)
    assert resolver.query("alias.test", "TXT").outcome is DnsOutcome.NODATA
    assert resolver.query("dangling.test", "A").outcome is DnsOutcome.NXDOMAIN
    assert resolver.query("loop1.test", "A").outcome is DnsOutcome.SERVFAIL
    assert len(resolver.queries) == 5  # one query each, however long the chain


# --------------------------------------------------------------------------------------------
# parse_nameserver


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", ("127.0.0.1", 53)),
        (" 192.0.2.53:5353 ", ("192.0.2.53", 5353)),
        ("::1", ("::1", 53)),
        ("2001:db8::53", ("2001:db8::53", 53)),
        ("[::1]", ("::1", 53)),
        ("[2001:DB8::53]:5353", ("2001:db8::53", 5353)),
        ("[::ffff:192.0.2.1]:53", ("::ffff:c000:201", 53)),
        ("127.0.0.1:65535", ("127.0.0.1", 65535)),
    ],
)
def test_parse_nameserver(text: str, expected: tuple[str, int]) -> None:
    assert parse_nameserver(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "dns.example",
        "dns.example:53",
        "127.0.0.1:",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:x53",
        "127.0.0.1:-1",
        "[::1",
        "[::1]x",
        "[::1]:",
        "[::1]:port",
        "[127.0.0.1]:53",
        "1.2.3.4:53:1",
    ],
)
def test_parse_nameserver_errors_name_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="bad nameserver") as info:
        parse_nameserver(text)
    assert repr(text.strip()) in str(info.value) or repr(text) in str(info.value)


# --------------------------------------------------------------------------------------------
# CachingResolver against a real DNS server on loopback


class FakeClock:
    """A monotonic clock the test moves by hand; ``tick`` is added on every read."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now = 1000.0
        self.tick = tick

    def __call__(self) -> float:
        value = self.now
        self.now += self.tick
        return value

    def advance(self, seconds: float) -> None:
        self.now += seconds


Observed = list[tuple[str, DnsOutcome, float]]
MakeResolver = Callable[..., CachingResolver]


@pytest.fixture
def server() -> Iterator[DnsTestServer]:
    with DnsTestServer(negative_ttl=30) as running:
        assert running._udp is not None and running._tcp is not None
        assert running._udp.getsockname()[0] == "127.0.0.1"
        assert running._tcp.getsockname() == running._udp.getsockname()
        yield running


@pytest.fixture
def make_resolver(server: DnsTestServer) -> Iterator[MakeResolver]:
    made: list[CachingResolver] = []

    def make(
        clock: Callable[[], float] | None = None,
        observer: Callable[[str, DnsOutcome, float], None] | None = None,
        nameservers: tuple[str, ...] | None = None,
        **settings: object,
    ) -> CachingResolver:
        config = ResolverSettings(
            nameservers=nameservers or (server.nameserver,),
            **{"timeout": 2.0, **settings},  # type: ignore[arg-type]
        )
        resolver = (
            CachingResolver(config, observer=observer, clock=clock)
            if clock is not None
            else CachingResolver(config, observer=observer)
        )
        made.append(resolver)
        return resolver

    yield make
    for resolver in made:
        resolver.close()


def test_answer_mapping(server: DnsTestServer, make_resolver: MakeResolver) -> None:
    server.add("a.test", "A", "192.0.2.1", "192.0.2.2", ttl=120)
    server.add("a.test", "AAAA", "2001:db8::1")
    server.add("a.test", "MX", "10 mx1.a.test.", "20 MX2.a.test.")
    server.add("a.test", "TXT", [b"v=spf1 ", b"ip4:192.0.2.0/24", b" -all"], "other")
    server.add("1.2.0.192.in-addr.arpa", "PTR", "host.a.test.")
    resolver = make_resolver()

    a = resolver.query("a.test", "A")
    assert (a.name, a.rdtype, a.outcome) == ("a.test", "A", DnsOutcome.ANSWER)
    assert sorted(str(r) for r in a.records) == ["192.0.2.1", "192.0.2.2"]
    assert a.ttl == 120
    assert resolver.query("a.test", "AAAA").records == ("2001:db8::1",)
    assert sorted(resolver.query("a.test", "MX").records, key=str) == [
        (10, "mx1.a.test"), (20, "MX2.a.test")]
    txt = resolver.query("a.test", "TXT")
    assert sorted(txt.records, key=len) == [
        (b"other",), (b"v=spf1 ", b"ip4:192.0.2.0/24", b" -all")]
    assert sorted(txt.texts()) == [b"other", b"v=spf1 ip4:192.0.2.0/24 -all"]
    assert resolver.query("1.2.0.192.in-addr.arpa", "PTR").records == ("host.a.test",)


def test_cname_chain_answer_keeps_smallest_ttl(
    server: DnsTestServer, make_resolver: MakeResolver
) -> None:
    server.add("alias.test", "CNAME", "target.test.", ttl=20)
    server.add("target.test", "A", "192.0.2.9", ttl=600)
    result = make_resolver().query("alias.test", "A")
    assert (result.name, result.outcome, result.records) == (
        "alias.test", DnsOutcome.ANSWER, ("192.0.2.9",))
    assert result.ttl == 20


def test_negative_and_error_outcomes(server: DnsTestServer, make_resolver: MakeResolver) -> None:
    server.add("exists.test", "A", "192.0.2.1")
    server.add("deep.below.test", "A", "192.0.2.1")
    server.servfail("broken.test")
    server.drop("silent.test")
    resolver = make_resolver(timeout=0.3)

    nx = resolver.query("missing.test", "TXT")
    assert (nx.outcome, nx.ttl) == (DnsOutcome.NXDOMAIN, 30)  # SOA minimum
    nodata = resolver.query("exists.test", "TXT")
    assert (nodata.outcome, nodata.ttl) == (DnsOutcome.NODATA, 30)
    assert resolver.query("below.test", "TXT").outcome is DnsOutcome.NODATA  # empty non-terminal
    assert resolver.query("broken.test", "TXT").outcome is DnsOutcome.SERVFAIL
    assert resolver.query("silent.test", "TXT").outcome is DnsOutcome.TIMEOUT
    assert server.count("silent.test") >= 1  # it did ask: the timeout is the server's silence


def test_refused_is_reported_as_refused_and_is_temporary(
        server: DnsTestServer, make_resolver: MakeResolver) -> None:
    """REFUSED (a resolver ACL, not a failing zone) is named so in logs and metrics; the checks
    treat it as any temporary error."""
    server.refuse("acl.test")
    server.servfail("broken.test")
    resolver = make_resolver(timeout=0.5)
    refused = resolver.query("acl.test", "TXT")
    assert refused.outcome is DnsOutcome.REFUSED and refused.outcome.is_temporary
    assert resolver.query("broken.test", "TXT").outcome is DnsOutcome.SERVFAIL


def test_a_refusing_server_beside_a_failing_one_is_servfail(make_resolver: MakeResolver) -> None:
    with DnsTestServer() as refusing, DnsTestServer() as failing:
        refusing.refuse("mixed.test")
        failing.servfail("mixed.test")
        resolver = make_resolver(nameservers=(refusing.nameserver, failing.nameserver),
                                 timeout=0.5)
        assert resolver.query("mixed.test", "TXT").outcome is DnsOutcome.SERVFAIL


def test_truncated_udp_answer_falls_back_to_tcp(
    server: DnsTestServer, make_resolver: MakeResolver
) -> None:
    long_record = [bytes([65 + i]) * 250 for i in range(6)]  # 1.5 KB: never fits in 512 bytes
    server.add("long.test", "TXT", long_record)
    server.add("flagged.test", "TXT", "short")
    server.truncate("flagged.test")
    resolver = make_resolver()

    result = resolver.query("long.test", "TXT")
    assert result.outcome is DnsOutcome.ANSWER
    assert result.records == (tuple(long_record),)
    assert result.texts() == [b"".join(long_record)]
    assert server.count("long.test", "TXT", "udp") == 1
    assert server.count("long.test", "TXT", "tcp") == 1

    assert resolver.query("flagged.test", "TXT").records == ((b"short",),)
    assert server.count("flagged.test", protocol="tcp") == 1


def test_cache_hit_makes_no_second_query(
    server: DnsTestServer, make_resolver: MakeResolver
) -> None:
    server.add("a.test", "TXT", "hello")
    resolver = make_resolver()
    first = resolver.query("a.test", "TXT")
    second = resolver.query("A.TEST.", "txt")  # same key after normalisation
    assert first == second
    assert server.count("a.test") == 1


def test_max_ttl_bounds_the_cache(server: DnsTestServer, make_resolver: MakeResolver) -> None:
    server.add("a.test", "TXT", "hello", ttl=3600)
    clock = FakeClock()
    resolver = make_resolver(clock=clock, max_ttl=60)
    resolver.query("a.test", "TXT")
    clock.advance(59)
    resolver.query("a.test", "TXT")
    assert server.count("a.test") == 1
    clock.advance(2)  # 61 s: past max_ttl, well inside the record's own TTL
    resolver.query("a.test", "TXT")
    assert server.count("a.test") == 2


def test_record_ttl_and_min_ttl(server: DnsTestServer, make_resolver: MakeResolver) -> None:
    server.add("short.test", "TXT", "x", ttl=5)
    server.add("floor.test", "TXT", "x", ttl=1)
    clock = FakeClock()
    resolver = make_resolver(clock=clock, min_ttl=0)
    floored = make_resolver(clock=clock, min_ttl=30)
    resolver.query("short.test", "TXT")
    floored.query("floor.test", "TXT")
    clock.advance(10)
    resolver.query("short.test", "TXT")
    floored.query("floor.test", "TXT")
    assert server.count("short.test") == 2  # the record's 5 s TTL had expired
    assert server.count("floor.test") == 1  # min_ttl kept it 30 s


def test_negative_answers_are_cached(server: DnsTestServer, make_resolver: MakeResolver) -> None:
    server.add("exists.test", "A", "192.0.2.1")
    clock = FakeClock()
    resolver = make_resolver(clock=clock, negative_ttl=300)
    capped = make_resolver(clock=clock, negative_ttl=10)
    for _ in range(3):
        assert resolver.query("missing.test", "TXT").outcome is DnsOutcome.NXDOMAIN
        assert resolver.query("exists.test", "TXT").outcome is DnsOutcome.NODATA
    assert server.count("missing.test") == 1
    assert server.count("exists.test") == 1
    capped.query("missing.test", "TXT")
    clock.advance(11)  # past the configured negative_ttl (10), inside the SOA's 30
    capped.query("missing.test", "TXT")
    resolver.query("missing.test", "TXT")
    assert server.count("missing.test") == 3  # capped asked twice, resolver still cached
    clock.advance(20)  # 31 s: past the SOA minimum
    resolver.query("missing.test", "TXT")
    assert server.count("missing.test") == 4


def test_temporary_errors_are_not_cached(
    server: DnsTestServer, make_resolver: MakeResolver
) -> None:
    server.servfail("broken.test")
    server.drop("silent.test")
    resolver = make_resolver(timeout=0.3)
    assert resolver.query("broken.test", "TXT").outcome is DnsOutcome.SERVFAIL
    assert resolver.query("broken.test", "TXT").outcome is DnsOutcome.SERVFAIL
    assert server.count("broken.test") == 2
    assert resolver.query("silent.test", "TXT").outcome is DnsOutcome.TIMEOUT
    asked = server.count("silent.test")
    assert resolver.query("silent.test", "TXT").outcome is DnsOutcome.TIMEOUT
    assert server.count("silent.test") > asked


def test_prefetch_then_query_is_one_server_query(
    server: DnsTestServer, make_resolver: MakeResolver
) -> None:
    server.add("slow.test", "TXT", "v=spf1 -all")
    server.delay("slow.test", 200)  # the query arrives while the prefetch is still waiting
    resolver = make_resolver()
    resolver.prefetch("slow.test", "TXT")
    resolver.prefetch("SLOW.test.", "TXT")  # already in flight: not started again
    result = resolver.query("slow.test", "TXT")
    assert result.texts() == [b"v=spf1 -all"]
    resolver.prefetch("slow.test", "TXT")  # cached now: nothing to do
    assert resolver.query("slow.test", "TXT") == result
    assert server.count("slow.test") == 1


def test_concurrent_queries_after_prefetch_share_it(
    server: DnsTestServer, make_resolver: MakeResolver
) -> None:
    server.add("slow.test", "A", "192.0.2.5")
    server.delay("slow.test", 200)
    resolver = make_resolver()
    resolver.prefetch("slow.test", "A")
    results: list[DnsResult] = []
    threads = [
        threading.Thread(target=lambda: results.append(resolver.query("slow.test", "A")))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert [r.records for r in results] == [("192.0.2.5",)] * 8
    assert server.count("slow.test") == 1


def test_expired_deadline_returns_timeout_without_querying(
    server: DnsTestServer, make_resolver: MakeResolver
) -> None:
    server.add("a.test", "TXT", "hello")
    observed: Observed = []
    resolver = make_resolver(observer=lambda *call: observed.append(call))
    clock = FakeClock()
    deadline = Deadline(5, clock)
    clock.advance(5)
    assert deadline.expired
    result = resolver.query("a.test", "TXT", deadline)
    assert (result.name, result.outcome) == ("a.test", DnsOutcome.TIMEOUT)
    assert server.count() == 0
    assert observed == []
    # A live deadline asks the server; then the cached answer is served even past a deadline.
    assert resolver.query("a.test", "TXT", Deadline(30)).outcome is DnsOutcome.ANSWER
    assert resolver.query("a.test", "TXT", deadline).outcome is DnsOutcome.ANSWER
    assert server.count() == 1


def test_observer_sees_each_network_lookup(
    server: DnsTestServer, make_resolver: MakeResolver
) -> None:
    server.add("a.test", "A", "192.0.2.1")
    server.servfail("broken.test")
    observed: Observed = []
    clock = FakeClock(tick=0.25)  # every clock read moves time by 0.25 s
    resolver = make_resolver(clock=clock, observer=lambda *call: observed.append(call))
    resolver.query("a.test", "A")
    resolver.query("a.test", "A")  # cache hit: not observed
    resolver.query("missing.test", "TXT")
    resolver.query("broken.test", "MX")
    assert [(rdtype, outcome) for rdtype, outcome, _ in observed] == [
        ("A", DnsOutcome.ANSWER),
        ("TXT", DnsOutcome.NXDOMAIN),
        ("MX", DnsOutcome.SERVFAIL),
    ]
    # seconds = the injected clock's difference around the backend call (one tick).
    assert [seconds for _, _, seconds in observed] == [0.25, 0.25, 0.25]


def test_failing_observer_does_not_lose_the_answer(
    server: DnsTestServer, make_resolver: MakeResolver
) -> None:
    server.add("a.test", "A", "192.0.2.1")
    calls: list[str] = []

    def broken(rdtype: str, outcome: DnsOutcome, seconds: float) -> None:
        calls.append(rdtype)
        raise RuntimeError("metrics backend down")

    resolver = make_resolver(observer=broken)
    assert resolver.query("a.test", "A").records == ("192.0.2.1",)
    assert calls == ["A"]
    assert resolver.query("a.test", "A").records == ("192.0.2.1",)  # and it was cached
    assert server.count("a.test") == 1


def test_each_nameserver_keeps_its_own_port(
    server: DnsTestServer, make_resolver: MakeResolver
) -> None:
    """Two servers on one address, different ports: the first one listed is asked."""
    server.add("a.test", "A", "192.0.2.1")
    with DnsTestServer() as other:
        other.servfail("a.test")
        resolver = make_resolver(nameservers=(server.nameserver, other.nameserver))
        assert resolver.query("a.test", "A").records == ("192.0.2.1",)
        assert other.count() == 0
    assert server.count("a.test") == 1


def test_server_stops_at_teardown() -> None:
    with DnsTestServer() as server:
        port = server.port
        server.add("a.test", "A", "192.0.2.1")
        resolver = CachingResolver(ResolverSettings(nameservers=(server.nameserver,), timeout=2))
        try:
            assert resolver.query("a.test", "A").outcome is DnsOutcome.ANSWER
        finally:
            resolver.close()
    after = CachingResolver(ResolverSettings(nameservers=(f"127.0.0.1:{port}",), timeout=0.3))
    try:
        assert after.query("b.test", "A").outcome.is_temporary
    finally:
        after.close()
    assert server.count("b.test") == 0
