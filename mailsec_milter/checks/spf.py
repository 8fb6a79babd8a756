"""SPF (RFC 7208) for the MAIL FROM and the HELO identities, over pyspf and our resolver seam.

Owns: choosing the identity (null sender → ``postmaster@<HELO>``, RFC 7208 §2.4), mapping pyspf's
words to RFC 8601 results, and bridging pyspf's DNS global to our Lookup.
Must not: decide a verdict, log, or reach DNS except through the Lookup it is given.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import spf

from ..addresses import normalise_domain
from ..dns import DnsResult, Lookup
from ..model import AuthResult, normalise_ip
from ..model import SpfIdentity as SpfIdentity  # re-exported: it lives in the model now


@dataclass(frozen=True)
class SpfOutcome:
    """The result for one identity; ``identity_value`` is what A-R reports as smtp.mailfrom/helo."""

    identity: SpfIdentity
    result: AuthResult
    identity_value: str
    domain: str
    comment: str = ""


# What an evaluation needs once the DNS-free cases are ruled out:
# (client IP, sender address, domain, the identity A-R reports, HELO name).
SpfInputs = tuple[str, str, str, str, str]


_PYSPF_RESULTS = {
    "pass": AuthResult.PASS,
    "fail": AuthResult.FAIL,
    "softfail": AuthResult.SOFTFAIL,
    "neutral": AuthResult.NEUTRAL,
    "none": AuthResult.NONE,
    "permerror": AuthResult.PERMERROR,
    "temperror": AuthResult.TEMPERROR,
    "ambiguous": AuthResult.PERMERROR,
}

# pyspf reads DNS through the module global spf.DNSLookup. We replace it once, here, with a
# dispatcher to the Lookup of the check running on the current thread: each check runs wholly
# on one thread, so a thread-local is exactly as wide as one call of check_spf().
_active = threading.local()


def _dns_lookup_bridge(name: str, qtype: str, strict: Any = True, timeout: Any = None) -> list[Any]:
    lookup: Lookup | None = getattr(_active, "lookup", None)
    if lookup is None:
        raise spf.TempError("DNS lookup outside an SPF check")
    result: DnsResult = lookup.query(name, qtype)
    consulted: list[DnsResult] | None = getattr(_active, "consulted", None)
    if consulted is not None:
        consulted.append(result)
    if result.outcome.is_temporary:
        raise spf.TempError(f"DNS {result.outcome.value}")
    return [((name, qtype), record) for record in result.records]


spf.DNSLookup = _dns_lookup_bridge


class _Query(spf.query):  # type: ignore[misc]  # pyspf is untyped
    """pyspf's query with RFC 7208 §5.5's DNS-error rules for "ptr" and %{p}.

    pyspf lets a DNS error during PTR validation end the whole check as temperror. §5.5 says:
    an error on the PTR lookup makes the mechanism not match, and an error on the A/AAAA lookup
    of one PTR name skips that name. (pyspf's own test DNS hides this: it follows CNAMEs
    itself and treats a CNAME loop as no data; a real resolver answers SERVFAIL.)
    """

    def validated_ptrs(self) -> list[str]:
        try:
            names: list[str] = self.dns_ptr(self.i)
        except spf.TempError:
            return []
        validated: list[str] = []
        for name in names[: spf.MAX_PTR]:  # §4.6.4: at most 10 PTR names are looked up
            try:
                addresses = self.dns_a(name, self.A)
            except spf.TempError:
                continue
            if self.cidrmatch(addresses, self.cidrmax):
                validated.append(name)
        return validated


@functools.lru_cache(maxsize=4096)  # once per HELO name, not per message
def _is_ip_literal(helo: str) -> bool:
    text = helo.strip().strip("[]")
    if text.lower().startswith("ipv6:"):
        text = text[5:]
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def helo_is_checkable(helo: str) -> bool:
    """RFC 7208 §2.3: only a fully qualified domain name can be checked as the HELO identity."""
    name = helo.strip().rstrip(".")
    return bool(name) and "." in name and not _is_ip_literal(name)


def spf_identity(identity: SpfIdentity, mail_from: str, helo: str) -> str:
    """The sender address pyspf is asked about, as RFC 7208 §2.3/§2.4 define it."""
    if identity is SpfIdentity.HELO or not mail_from.strip("<> "):
        return f"postmaster@{helo.strip().rstrip('.')}"
    return mail_from.strip("<> ")


def check_spf(
    lookup: Lookup,
    client_ip: str | None,
    identity: SpfIdentity,
    mail_from: str,
    helo: str,
    receiver: str = "",
    cache: SpfResultCache | None = None,
) -> SpfOutcome:
    """Evaluate one SPF identity. DNS trouble is ``temperror``, never ``none`` or ``fail``."""
    known = spf_without_dns(client_ip, identity, mail_from, helo, cache)
    if isinstance(known, SpfOutcome):
        return known
    return evaluate_spf(lookup, identity, known, receiver, cache)


def evaluate_spf(lookup: Lookup, identity: SpfIdentity, inputs: SpfInputs, receiver: str = "",
                 cache: SpfResultCache | None = None) -> SpfOutcome:
    """pyspf's evaluation of what ``spf_without_dns`` left to do, reading DNS from ``lookup``."""
    ip, sender, domain, reported, helo = inputs
    query = _Query(i=ip, s=sender, h=helo or "unknown", receiver=receiver or "unknown",
                   strict=True, querytime=0)
    # pyspf splits the sender at its FIRST "@"; RFC 5321 §4.1.2 puts the domain after the
    # local part, which may be a quoted string holding "@" ("x@attacker.example"@victim.example).
    # Hand it the local part and the (A-label) domain we report, so it evaluates that domain.
    query.l = sender.rpartition("@")[0] or "postmaster"
    query.o = query.d = domain
    previous = getattr(_active, "lookup", None), getattr(_active, "consulted", None)
    consulted: list[DnsResult] = []
    _active.lookup, _active.consulted = lookup, consulted
    try:
        code, _smtp_code, _explanation = query.check()
    finally:
        _active.lookup, _active.consulted = previous
    result = _PYSPF_RESULTS.get(str(code).lower(), AuthResult.PERMERROR)
    comment = _comment(result, domain, ip, str(getattr(query, "prob", "") or ""))
    if cache is not None:
        cache.offer(ip, domain, result, comment, consulted)
    return SpfOutcome(identity, result, reported, domain, comment)


def spf_without_dns(
    client_ip: str | None,
    identity: SpfIdentity,
    mail_from: str,
    helo: str,
    cache: SpfResultCache | None = None,
) -> SpfOutcome | SpfInputs:
    """The outcome when it is known without asking DNS (nothing to check, or a cached
    result), else what the evaluation needs: (ip, sender, domain, reported identity, helo).

    The engine calls this inline and sends only the rest to its pool: a thread hand-off costs
    more than a cached answer.
    """
    mail_from, helo = _without_surrogates(mail_from), _without_surrogates(helo)
    sender = spf_identity(identity, mail_from, helo)
    written = sender.rpartition("@")[2]  # the domain follows the LAST "@" (RFC 5321 §4.1.2)
    # IDNA2008 A-labels (an SMTPUTF8 sender's U-labels), as every domain we compare or look up
    domain = normalise_domain(written) or written.lower()
    reported = helo.strip() if identity is SpfIdentity.HELO else sender
    if client_ip is None:
        return SpfOutcome(identity, AuthResult.NONE, reported, domain, "no client IP address")
    try:
        ip = normalise_ip(client_ip)  # ::ffff:a.b.c.d is evaluated as a.b.c.d (RFC 7208 §5)
    except ValueError:
        return SpfOutcome(identity, AuthResult.NONE, reported, domain,
                          "client address is not an IP address")
    if identity is SpfIdentity.HELO and not helo_is_checkable(helo):
        return SpfOutcome(identity, AuthResult.NONE, reported, domain, "HELO is not a domain name")
    if not helo_is_checkable(domain) or normalise_domain(domain) is None:
        # RFC 7208 §4.3: not a multi-label domain name (incl. a domain literal, or a null
        # sender's HELO that is not a name) → "none", without asking DNS about it.
        return SpfOutcome(identity, AuthResult.NONE, reported, domain, "no domain to check")
    if cache is not None:
        hit = cache.get(ip, domain)
        if hit is not None:
            return SpfOutcome(identity, hit[0], reported, domain, hit[1])
    return ip, sender, domain, reported, helo


class SpfResultCache:
    """Results of SPF evaluations that depend only on the client IP and the domain.

    pyspf evaluates every record from scratch for every message (the largest share of our CPU
    per message in the benchmark profile). An evaluation that read no macro (``%``) in any
    record, saw no temporary DNS error and did not end in temperror depends only on (IP,
    domain) and the records themselves, so its result is reused for as long as the shortest TTL
    of the answers it read, and never longer than ``max_seconds``. Thread-safe; one per engine
    (a reload starts empty).
    """

    def __init__(self, max_entries: int = 10_000, max_seconds: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._max_entries = max_entries
        self._max_seconds = max_seconds
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[float, AuthResult, str]] = (
            OrderedDict())
        self._lock = threading.Lock()

    def get(self, ip: str, domain: str) -> tuple[AuthResult, str] | None:
        with self._lock:
            entry = self._entries.get((ip, domain))
            if entry is None:
                return None
            if entry[0] <= self._clock():
                del self._entries[(ip, domain)]
                return None
            self._entries.move_to_end((ip, domain))
            return entry[1], entry[2]

    def offer(self, ip: str, domain: str, result: AuthResult, comment: str,
              consulted: list[DnsResult]) -> None:
        if result is AuthResult.TEMPERROR or not consulted:
            return
        if any(r.outcome.is_temporary for r in consulted):
            return
        if any(b"%" in text for r in consulted for text in r.texts()):
            return  # a macro may read the sender, the HELO name or the receiver
        seconds = min(self._max_seconds, *(r.ttl for r in consulted))
        if seconds <= 0:
            return
        with self._lock:
            self._entries[(ip, domain)] = (self._clock() + seconds, result, comment)
            self._entries.move_to_end((ip, domain))
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)


def _without_surrogates(text: str) -> str:
    """pymilter hands undecodable envelope bytes over as lone surrogates (``surrogateescape``);
    pyspf cannot encode those (a ``%{L}`` macro raises UnicodeEncodeError in urllib's quote),
    so each becomes U+FFFD. Regression: tests/robustness/test_fuzz_regressions.py."""
    if not any("\ud800" <= char <= "\udfff" for char in text):
        return text
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


_UNSAFE = re.compile(r"[^A-Za-z0-9 ._-]")


def _safe(text: str, limit: int) -> str:
    """Only letters, digits, space, dot, hyphen and underscore; at most ``limit`` characters."""
    return " ".join(_UNSAFE.sub(" ", text).split())[:limit].strip()


def _comment(result: AuthResult, domain: str, client_ip: str, problem: str) -> str:
    """A short human comment built from our own words only.

    Never copied: the record's ``exp=`` explanation and the variable part of pyspf's error
    messages (the offending term, after the colon) — both are the sender's unvetted text. The
    domain and pyspf's fixed wording are reduced to a safe character set.
    """
    name = _safe(domain, 253) or "domain"
    if result is AuthResult.PASS:
        return f"{name}: {client_ip} is authorized"
    if result in (AuthResult.FAIL, AuthResult.SOFTFAIL, AuthResult.NEUTRAL):
        return f"{name}: {client_ip} is not authorized"
    if result is AuthResult.NONE:
        return f"{name}: no SPF record"
    if result is AuthResult.TEMPERROR:
        return f"{name}: DNS lookup failed temporarily"
    reason = _safe(problem.split(":", 1)[0], 80)
    return f"{name}: {reason}" if reason else f"{name}: invalid SPF record"
