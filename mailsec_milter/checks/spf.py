"""SPF (RFC 7208) for the MAIL FROM and the HELO identities, over pyspf and our resolver seam.

Owns: choosing the identity (null sender → ``postmaster@<HELO>``, RFC 7208 §2.4), mapping pyspf's
words to RFC 8601 results, and bridging pyspf's DNS global to our Lookup.
Must not: decide a verdict, log, or reach DNS except through the Lookup it is given.
"""

from __future__ import annotations

import ipaddress
import threading
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import spf

from ..dns import DnsResult, Lookup
from ..model import AuthResult


class SpfIdentity(StrEnum):
    MAILFROM = "mailfrom"
    HELO = "helo"


@dataclass(frozen=True)
class SpfOutcome:
    """The result for one identity; ``identity_value`` is what A-R reports as smtp.mailfrom/helo."""

    identity: SpfIdentity
    result: AuthResult
    identity_value: str
    domain: str
    comment: str = ""


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
    if result.outcome.is_temporary:
        raise spf.TempError(f"DNS {result.outcome.value} for {name} {qtype}")
    return [((name, qtype), record) for record in result.records]


spf.DNSLookup = _dns_lookup_bridge


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
) -> SpfOutcome:
    """Evaluate one SPF identity. DNS trouble is ``temperror``, never ``none`` or ``fail``."""
    sender = spf_identity(identity, mail_from, helo)
    domain = sender.rpartition("@")[2].lower()
    reported = helo.strip() if identity is SpfIdentity.HELO else sender
    if client_ip is None:
        return SpfOutcome(identity, AuthResult.NONE, reported, domain, "no client IP address")
    if identity is SpfIdentity.HELO and not helo_is_checkable(helo):
        return SpfOutcome(identity, AuthResult.NONE, reported, domain, "HELO is not a domain name")
    if not domain or "." not in domain:
        return SpfOutcome(identity, AuthResult.NONE, reported, domain, "no domain to check")
    query = spf.query(i=client_ip, s=sender, h=helo or "unknown", receiver=receiver or "unknown",
                      strict=True, querytime=0)
    _active.lookup = lookup
    try:
        code, _smtp_code, explanation = query.check()
    finally:
        _active.lookup = None
    result = _PYSPF_RESULTS.get(str(code).lower(), AuthResult.PERMERROR)
    comment = _comment(result, domain, client_ip, str(explanation or ""))
    return SpfOutcome(identity, result, reported, domain, comment)


def _comment(result: AuthResult, domain: str, client_ip: str, explanation: str) -> str:
    """A short human comment; the record's own explanation text is never copied (it is the
    sender's, unvetted text: it goes to the log, not into our header)."""
    if result is AuthResult.PASS:
        return f"{domain}: {client_ip} is authorized"
    if result in (AuthResult.FAIL, AuthResult.SOFTFAIL, AuthResult.NEUTRAL):
        return f"{domain}: {client_ip} is not authorized"
    if result is AuthResult.NONE:
        return f"{domain}: no SPF record"
    if result is AuthResult.TEMPERROR:
        return f"{domain}: DNS lookup failed temporarily"
    return f"{domain}: {explanation[:120]}" if explanation else f"{domain}: invalid SPF record"
