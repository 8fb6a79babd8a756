"""The SPF result cache: reuse only what depends on (IP, domain) alone, only for the TTL."""

from __future__ import annotations

from mailsec_milter.checks.spf import SpfIdentity, SpfResultCache, check_spf
from mailsec_milter.dns import StaticResolver
from mailsec_milter.model import AuthResult

ZONE = """
plain.example. 60 TXT "v=spf1 ip4:192.0.2.0/24 a -all"
plain.example. 60 A 192.0.2.1
macro.example. 60 TXT "v=spf1 exists:%{l}.users.macro.example -all"
ok.users.macro.example. 60 A 127.0.0.2
slow.example. TXT TIMEOUT
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def check(resolver: StaticResolver, cache: SpfResultCache, sender: str,
          ip: str = "192.0.2.10") -> AuthResult:
    return check_spf(resolver, ip, SpfIdentity.MAILFROM, sender, "mail.example.net",
                     cache=cache).result


def test_a_macro_free_result_is_reused_until_its_ttl_ends() -> None:
    resolver, clock = StaticResolver.from_zone_text(ZONE), Clock()
    cache = SpfResultCache(clock=clock)
    assert check(resolver, cache, "a@plain.example") is AuthResult.PASS
    asked = len(resolver.queries)
    assert check(resolver, cache, "someone.else@plain.example") is AuthResult.PASS
    assert len(resolver.queries) == asked  # answered from the cache
    assert check(resolver, cache, "a@plain.example", ip="198.51.100.1") is AuthResult.FAIL
    assert len(resolver.queries) > asked  # another IP is another question
    clock.now += 61
    asked = len(resolver.queries)
    assert check(resolver, cache, "a@plain.example") is AuthResult.PASS
    assert len(resolver.queries) > asked  # expired with the records' TTL


def test_records_with_macros_are_never_cached() -> None:
    resolver, cache = StaticResolver.from_zone_text(ZONE), SpfResultCache()
    assert check(resolver, cache, "ok@macro.example") is AuthResult.PASS
    # Same IP and domain, another local part: the macro makes it another evaluation.
    assert check(resolver, cache, "nobody@macro.example") is AuthResult.FAIL


def test_temporary_errors_are_never_cached() -> None:
    resolver, cache = StaticResolver.from_zone_text(ZONE), SpfResultCache()
    assert check(resolver, cache, "a@slow.example") is AuthResult.TEMPERROR
    asked = len(resolver.queries)
    assert check(resolver, cache, "a@slow.example") is AuthResult.TEMPERROR
    assert len(resolver.queries) > asked


def test_the_cache_is_bounded() -> None:
    resolver, cache = StaticResolver.from_zone_text(ZONE), SpfResultCache(max_entries=2)
    for n in range(5):
        check(resolver, cache, "a@plain.example", ip=f"192.0.2.{n + 1}")
    assert len(cache._entries) == 2
