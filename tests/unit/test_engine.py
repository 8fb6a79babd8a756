"""The engine: early starts, prefetches, the deadline, and isolation of a crashing check."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from mailsec_milter import engine as engine_module
from mailsec_milter.checks.spf import SpfIdentity, SpfOutcome, check_spf
from mailsec_milter.config import settings_from_mapping
from mailsec_milter.dns import (
    BoundLookup,
    CachedOnlyLookup,
    CacheMissError,
    CachingResolver,
    Deadline,
    DnsOutcome,
    DnsResult,
    ResolverSettings,
    StaticResolver,
)
from mailsec_milter.engine import Engine
from mailsec_milter.model import AuthResult, Envelope, MessageSnapshot, parse_message
from mailsec_milter.policy import Action, Reason, decide

ZONE = """
sender.example. TXT "v=spf1 ip4:192.0.2.0/24 -all"
_dmarc.sender.example. TXT "v=DMARC1; p=reject"
"""
RAW = (b"From: a@sender.example\r\nTo: b@example.net\r\nSubject: x\r\n"
       b"DKIM-Signature: v=1; a=rsa-sha256; d=sender.example; s=sel; h=from; bh=AA==; b=AA==\r\n"
       b"\r\nbody\r\n")
ENVELOPE = Envelope(client_ip="192.0.2.10", helo="mail.sender.example",
                    mail_from="a@sender.example")


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as executor:
        yield executor


def snapshot() -> MessageSnapshot:
    headers, body = parse_message(RAW)
    return MessageSnapshot(ENVELOPE, headers, body)


SETTINGS = settings_from_mapping({"milter": {"authserv_id": "mx.test.example",
                                             "message_deadline": "500ms"}})


class RecordingResolver(StaticResolver):
    def __init__(self) -> None:
        super().__init__(StaticResolver.from_zone_text(ZONE)._by_key.values())
        self.prefetched: list[tuple[str, str]] = []

    def prefetch(self, name: str, rdtype: str) -> None:
        self.prefetched.append((name, rdtype))


class BlockingResolver(StaticResolver):
    """Answers after ``release`` is set, or reports TIMEOUT when the caller's deadline ends."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def query(self, name: str, rdtype: str, deadline: Deadline | None = None) -> DnsResult:
        self.release.wait(deadline.remaining() if deadline is not None else 5)
        return super().query(name, rdtype, deadline)


def test_headers_start_dkim_key_and_dmarc_prefetches(pool: ThreadPoolExecutor) -> None:
    resolver = RecordingResolver()
    run = Engine(SETTINGS, resolver, pool).begin(ENVELOPE)
    for header in snapshot().headers:
        run.saw_header(header)
    assert ("sel._domainkey.sender.example", "TXT") in resolver.prefetched
    assert ("_dmarc.sender.example", "TXT") in resolver.prefetched


def test_spf_starts_at_mail_from_before_the_message_is_complete(pool: ThreadPoolExecutor) -> None:
    resolver = RecordingResolver()
    Engine(SETTINGS, resolver, pool).begin(ENVELOPE)
    pool.shutdown(wait=True)  # nothing but the early SPF checks was submitted
    assert ("sender.example", "TXT") in resolver.queries
    assert ("mail.sender.example", "TXT") in resolver.queries


def test_a_crashing_check_becomes_temperror_and_tempfails(
        pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(engine_module, "check_dkim", boom)
    analysis = Engine(SETTINGS, RecordingResolver(), pool).analyse(snapshot())
    assert [e.check for e in analysis.errors] == ["dkim"]
    assert analysis.dkim.signatures[0].result is AuthResult.TEMPERROR
    assert analysis.spf_mailfrom.result is AuthResult.PASS  # the others are unaffected
    verdict = decide(analysis, ENVELOPE, SETTINGS)
    assert verdict.action is Action.TEMPFAIL and verdict.reason is Reason.INTERNAL_ERROR


def test_a_crashing_early_check_is_isolated_too(
        pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise ValueError("pyspf bug")

    monkeypatch.setattr(engine_module, "check_spf", boom)
    analysis = Engine(SETTINGS, RecordingResolver(), pool).analyse(snapshot())
    assert {e.check for e in analysis.errors} == {"spf", "spf_helo"}
    assert analysis.spf_mailfrom.result is AuthResult.TEMPERROR


def test_the_message_deadline_bounds_the_wait(pool: ThreadPoolExecutor) -> None:
    resolver = BlockingResolver()
    try:
        analysis = Engine(SETTINGS, resolver, pool).analyse(snapshot())
    finally:
        resolver.release.set()
    assert analysis.spf_mailfrom.result is AuthResult.TEMPERROR
    assert "did not complete" in analysis.spf_mailfrom.comment or "temporarily" in (
        analysis.spf_mailfrom.comment)
    assert analysis.dmarc is not None and analysis.dmarc.result is AuthResult.TEMPERROR
    assert not analysis.errors  # slow DNS is not a bug


def test_dmarc_can_be_switched_off(pool: ThreadPoolExecutor) -> None:
    settings = settings_from_mapping({"dmarc": {"enabled": False}})
    analysis = Engine(settings, RecordingResolver(), pool).analyse(snapshot())
    assert analysis.dmarc is None


def test_a_crash_in_the_inline_spf_shortcut_falls_back_to_the_pool(
        pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch) -> None:
    """spf_without_dns runs on the MTA's thread; if it breaks, the full check in the pool
    still gives the real result (and would record the crash if that broke too)."""
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("shortcut bug")

    monkeypatch.setattr(engine_module, "spf_without_dns", boom)
    analysis = Engine(SETTINGS, RecordingResolver(), pool).analyse(snapshot())
    assert analysis.errors == ()
    assert analysis.spf_mailfrom.result is AuthResult.PASS


SPF_ZONE = """
direct.example. TXT "v=spf1 ip4:192.0.2.0/24 -all"
inc.example. TXT "v=spf1 include:_spf.inc.example -all"
_spf.inc.example. TXT "v=spf1 ip4:192.0.2.0/24 ~all"
redir.example. TXT "v=spf1 redirect=_spf.inc.example"
explained.example. TXT "v=spf1 -all exp=why.explained.example"
why.explained.example. TXT "not allowed"
mx.example. TXT "v=spf1 mx -all"
mx.example. MX 10 mail.mx.example.
mail.mx.example. A 192.0.2.10
"""


class CountingBackend:
    """A network stand-in behind a real CachingResolver: counts what reaches it."""

    def __init__(self) -> None:
        self.records = StaticResolver.from_zone_text(SPF_ZONE)
        self.asked: list[tuple[str, str]] = []

    def __call__(self, name: str, rdtype: str, budget: float) -> DnsResult:
        self.asked.append((name, rdtype))
        return self.records.query(name, rdtype)


def caching_engine(pool: ThreadPoolExecutor) -> tuple[Engine, CachingResolver, CountingBackend]:
    backend = CountingBackend()
    resolver = CachingResolver(ResolverSettings(prefetch_threads=1), backend=backend)
    return Engine(SETTINGS, resolver, pool), resolver, backend


@pytest.mark.parametrize("domain,ip,expected", [
    ("direct.example", "192.0.2.10", AuthResult.PASS),
    ("direct.example", "198.51.100.1", AuthResult.FAIL),
    ("inc.example", "192.0.2.10", AuthResult.PASS),
    ("inc.example", "198.51.100.1", AuthResult.FAIL),
    ("redir.example", "198.51.100.1", AuthResult.SOFTFAIL),
    ("explained.example", "192.0.2.10", AuthResult.FAIL),
    ("mx.example", "192.0.2.10", AuthResult.PASS),
])
def test_spf_is_evaluated_inline_once_every_answer_it_reads_is_cached(
        pool: ThreadPoolExecutor, domain: str, ip: str, expected: AuthResult) -> None:
    """The first check goes to the pool (DNS needed); a second, for another client, finds
    every answer cached and is answered on the MTA's thread, with the same result and no
    query reaching the network."""
    engine, resolver, backend = caching_engine(pool)
    try:
        first = engine.start_spf(SpfIdentity.MAILFROM, "203.0.113.7", f"a@{domain}", "h.example")
        assert isinstance(first, Future)  # nothing cached yet: the pool asks DNS
        first.result(timeout=5)
        asked = len(backend.asked)
        second = engine.start_spf(SpfIdentity.MAILFROM, ip, f"a@{domain}", "h.example")
        assert isinstance(second, SpfOutcome)
        assert second.result is expected
        assert len(backend.asked) == asked
        pooled = check_spf(BoundLookup(backend.records, None), ip, SpfIdentity.MAILFROM,
                           f"a@{domain}", "h.example")
        assert (second.result, second.comment) == (pooled.result, pooled.comment)
    finally:
        resolver.close()


def test_a_cache_miss_midway_sends_spf_to_the_pool_with_the_real_result(
        pool: ThreadPoolExecutor) -> None:
    """The record is cached but the include it points to is not: the inline attempt stops at
    the miss and the pool gives the real answer (never a result built on a missing answer)."""
    engine, resolver, backend = caching_engine(pool)
    try:
        resolver.query("inc.example", "TXT")  # only the first record is cached
        pending = engine.start_spf(SpfIdentity.MAILFROM, "192.0.2.10", "a@inc.example",
                                   "h.example")
        assert isinstance(pending, Future)
        assert pending.result(timeout=5).result is AuthResult.PASS
        assert ("_spf.inc.example", "TXT") in backend.asked
    finally:
        resolver.close()


def test_a_miss_that_pyspf_swallows_still_sends_spf_to_the_pool(
        pool: ThreadPoolExecutor) -> None:
    """pyspf wraps the exp= lookup in a bare ``except:``; the lookup's own flag still marks
    the inline attempt as incomplete."""
    engine, resolver, _backend = caching_engine(pool)
    try:
        resolver.query("explained.example", "TXT")  # exp= target not cached
        pending = engine.start_spf(SpfIdentity.MAILFROM, "198.51.100.1",
                                   "a@explained.example", "h.example")
        assert isinstance(pending, Future)
        assert pending.result(timeout=5).result is AuthResult.FAIL
    finally:
        resolver.close()


def test_cached_only_lookup_raises_and_flags_a_miss() -> None:
    backend = CountingBackend()
    resolver = CachingResolver(ResolverSettings(prefetch_threads=1), backend=backend)
    try:
        lookup = CachedOnlyLookup(resolver)
        with pytest.raises(CacheMissError):
            lookup.query("direct.example", "TXT")
        assert lookup.missed and backend.asked == []
        resolver.query("direct.example", "TXT")
        fresh = CachedOnlyLookup(resolver)
        assert fresh.query("direct.example", "TXT").outcome is DnsOutcome.ANSWER
        assert not fresh.missed
    finally:
        resolver.close()
