"""Where a report may go: the ``rua`` list read defensively, and RFC 9990 §4 authorisation.

Owns: parsing a published ``rua`` (RFC 9989 §4.7: a comma-separated list of URIs; anything
can be published there, by anyone) into at most ``limit`` ``mailto:`` addresses with a reason
for every URI left out, and the external-destination check (RFC 9990 §4:
``<policy-domain>._report._dmarc.<destination-host>`` TXT must start with ``v=DMARC1``) through
the resolver seam, with a temporary DNS failure reported as such (the caller retries later).
Must not: send mail, read the store, or treat DNS trouble as a refusal or as a permission.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import unquote

from publicsuffixlist import PublicSuffixList

from ..addresses import normalise_domain
from ..checks.dmarc import organizational_domain_psl
from ..dns import DnsOutcome, Resolver

MAX_RUA_CHARS = 4096  # more than any honest list of a few URIs; the rest is not read
MAX_URIS_READ = 32  # URIs looked at (with reasons); at most ``limit`` of them are used


class Skip(StrEnum):
    """Why a destination (or a whole report) is not sent; the status file counts these."""

    NO_RUA = "no_rua"
    NOT_MAILTO = "not_mailto"
    MALFORMED = "malformed"
    TOO_MANY = "too_many"
    NOT_AUTHORISED = "not_authorised"
    SUPPRESSED = "suppressed"
    OWN_ADDRESS = "own_address"
    DAILY_CAP = "daily_cap"
    NO_ALIGNED_PASS = "no_aligned_pass"
    DUPLICATE = "duplicate"
    ONLY_REPORT_MAIL = "only_report_mail"
    INVALID_REPORT = "invalid_report"  # a bug: the report did not validate; never sent


@dataclass(frozen=True)
class Destination:
    """One ``mailto:`` report address: ``local@domain``, the domain in A-labels."""

    address: str
    domain: str


@dataclass(frozen=True)
class Refused:
    """A URI of the rua list that is not used, and why."""

    uri: str
    reason: Skip
    detail: str = ""


# RFC 5321 §4.1.2 Local-part as a dot-atom of atext (quoted local parts are refused: nobody
# publishes them and they are where parsers disagree)
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL = re.compile(rf"^{_ATEXT}(\.{_ATEXT})*$")
_SIZE_SUFFIX = re.compile(r"![0-9]+[kmgt]?$", re.IGNORECASE)  # RFC 7489 "!10m" size limit


def parse_rua(rua: str, limit: int) -> tuple[list[Destination], list[Refused]]:
    """The usable ``mailto:`` destinations of a ``rua`` value, in the order given, at most
    ``limit`` distinct; every other URI is returned with its reason (§3.5: malformed URIs are
    ignored; delivery to the rest "up to the Receiver's limits")."""
    destinations: list[Destination] = []
    refused: list[Refused] = []
    # a list cut at MAX_RUA_CHARS loses its last, partial URI (never a shortened address)
    text = rua if len(rua) <= MAX_RUA_CHARS else rua[:MAX_RUA_CHARS].rpartition(",")[0]
    uris = [u.strip() for u in text.split(",")]
    if len(rua) > MAX_RUA_CHARS or len(uris) > MAX_URIS_READ:
        refused.append(Refused(f"<{max(len(uris) - MAX_URIS_READ, 0)} more URIs, "
                               f"{len(rua)} characters>", Skip.TOO_MANY,
                               "the rest of the list is not read"))
    for uri in uris[:MAX_URIS_READ]:
        if not uri:
            continue
        shown = uri[:200]
        scheme, colon, rest = uri.partition(":")
        if not colon or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
            refused.append(Refused(shown, Skip.MALFORMED, "not a URI"))
            continue
        if scheme.lower() != "mailto":
            refused.append(Refused(shown, Skip.NOT_MAILTO, f"scheme {scheme.lower()}:"))
            continue
        found = _mailto_address(rest)
        if isinstance(found, str):
            refused.append(Refused(shown, Skip.MALFORMED, found))
            continue
        if found in destinations:
            refused.append(Refused(shown, Skip.DUPLICATE))
        elif len(destinations) >= limit:
            refused.append(Refused(shown, Skip.TOO_MANY, f"more than {limit} destinations"))
        else:
            destinations.append(found)
    return destinations, refused


def _mailto_address(rest: str) -> Destination | str:
    """The one address of a ``mailto:`` URI, or a message saying what is wrong with it."""
    rest = _SIZE_SUFFIX.sub("", rest).partition("?")[0]  # "?subject=..." hfields: not ours
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in rest):
        return "white space or a control character in the address"
    address = unquote(rest)
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F or c in ",<>\"" for c in address):
        return "more than one address or a forbidden character"
    local, at, domain_text = address.rpartition("@")
    if not at or not local:
        return "no local@domain address"
    if len(local) > 64 or not _LOCAL.fullmatch(local):
        return "the local part is not a plain dot-atom"
    if domain_text.startswith("[") or domain_text.endswith("."):
        return "the domain is not a plain domain name"
    domain = normalise_domain(domain_text)
    if domain is None or "." not in domain or len(domain) > 253:
        return "the domain is not a usable domain name"
    return Destination(f"{local}@{domain}", domain)


class Authorisation(StrEnum):
    SAME_ORGANISATION = "same_organisation"  # no check needed (§4: same Organizational Domain)
    AUTHORISED = "authorised"
    REFUSED = "refused"
    DNS_TROUBLE = "dns_trouble"  # temporary: try again on a later run


@dataclass(frozen=True)
class Verdict:
    """The outcome of §4 for one destination; ``destinations`` are what to use (an override
    ``rua`` of the authorising record replaces the original, same host only)."""

    outcome: Authorisation
    detail: str
    destinations: tuple[Destination, ...] = ()


def _tags(text: str) -> dict[str, str] | None:
    """RFC 9989 §4.7 tag=value pairs, ``v=DMARC1`` first; None if this is not such a record."""
    pairs = [p.strip() for p in text.split(";")]
    if pairs and pairs[-1] == "":
        pairs.pop()
    tags: dict[str, str] = {}
    for index, pair in enumerate(pairs):
        name, eq, value = pair.partition("=")
        name, value = name.strip().lower(), value.strip()
        if not eq or not name:
            return None
        if index == 0 and (name != "v" or value != "DMARC1"):
            return None
        tags.setdefault(name, value)
    return tags if tags else None


def check_destination(policy_domain: str, destination: Destination, resolver: Resolver,
                      psl: PublicSuffixList, limit: int) -> Verdict:
    """RFC 9990 §4 for one destination of ``policy_domain``'s report."""
    policy_org = organizational_domain_psl(policy_domain, psl) or policy_domain
    destination_org = organizational_domain_psl(destination.domain, psl) or destination.domain
    if policy_org == destination_org:
        return Verdict(Authorisation.SAME_ORGANISATION, "same organizational domain",
                       (destination,))
    policy_alabel = normalise_domain(policy_domain) or policy_domain
    name = f"{policy_alabel}._report._dmarc.{destination.domain}"
    if len(name) > 253 or any(len(label) > 63 for label in name.split(".")):
        return Verdict(Authorisation.REFUSED, f"{name[:80]}...: longer than DNS allows")
    answer = resolver.query(name, "TXT")
    if answer.outcome.is_temporary:
        return Verdict(Authorisation.DNS_TROUBLE, f"{name} TXT: {answer.outcome.value}")
    if answer.outcome is not DnsOutcome.ANSWER:
        return Verdict(Authorisation.REFUSED, f"{name} TXT: {answer.outcome.value}")
    records = [_tags(t.decode("utf-8", "replace")) for t in answer.texts()]
    valid = [r for r in records if r is not None]
    if not valid:
        return Verdict(Authorisation.REFUSED, f"{name} TXT: no record starting v=DMARC1")
    override = next((r["rua"] for r in valid if r.get("rua")), None)
    if override is None:
        return Verdict(Authorisation.AUTHORISED, f"{name}: v=DMARC1", (destination,))
    replaced, _refused = parse_rua(override, limit)
    if not replaced or any(d.domain != destination.domain for d in replaced):
        # §4: an override to another host: neither the original nor the override is used
        return Verdict(Authorisation.REFUSED, f"{name}: rua override to another host")
    return Verdict(Authorisation.AUTHORISED, f"{name}: v=DMARC1 with rua override",
                   tuple(replaced))
