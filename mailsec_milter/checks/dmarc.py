"""DMARC (RFC 9989; RFC 7489 as a legacy mode) for every author domain of one message.

Owns: parsing DMARC policy records (three outcomes: not a DMARC record / invalid / valid), policy
discovery and Organizational Domain determination by the DNS Tree Walk (RFC 9989 §4.10) or by the
public-suffix list (RFC 7489 §3.2, §6.6.3), identifier alignment (§4.4, §4.10.2), the np existence
test (§4.7, Appendix A.4), t=y testing mode (§4.7) and RFC 7489 pct sampling (§6.6.4), and
combining several author domains into one outcome (strictest wins, §11.5).
Must not: decide a verdict (policy.py does), run SPF or DKIM (it takes their outcomes), parse
From headers (addresses.py does), log, or reach DNS except through the Lookup it is given. No
mutable globals: the only module state is an LRU cache of loaded public-suffix lists.

Defined outcomes (RFC 8601 words; RFC 9989 §9.2 registers them for dmarc):

* no DMARC Policy Record anywhere the discovery looks → ``none`` (§4.10.1, §5.3.2);
* a record that begins with ``v=DMARC1`` but has no valid ``p`` (absent or bad) or a bad
  ``sp``/``np`` and no syntactically valid ``rua`` URI, or repeats a tag (§4.7 defers to the
  RFC 6376 §3.2 tag-list rules) → ``permerror``: §4.10.1 says no DMARC processing is applied,
  and §9.2 names "an improperly formatted DMARC Policy Record" as the permerror case. With a
  valid ``rua`` the record acts as ``p=none`` (§4.10.1);
* a temporary DNS failure on any query the result depends on (policy discovery, a Tree Walk
  needed for relaxed alignment, the np existence test) → ``temperror``, never ``none`` or
  ``fail`` (§5.3.6), with what the missing answer leaves open (``possible_dispositions``,
  ``pass_possible``) so policy.py can tell whether it could change the verdict. An aligned
  pass is final even if other lookups failed; an SPF or DKIM pass for exactly the author
  domain is a pass even when policy discovery failed (it aligns under any record); an
  unknown np existence does not matter when ``sp`` and ``np`` are the same;
* SPF (MAIL FROM identity only; for the null sender that is ``postmaster@<HELO>``, RFC 9989
  §3.2.4 / RFC 7208 §2.4) pass with an aligned domain, or any DKIM pass with an aligned ``d=``
  → ``pass`` (§5.3.5). Otherwise ``temperror`` if an SPF or DKIM temperror *on a domain that
  would align* might have passed (an attacker's own timing-out domain cannot turn a fail into
  temperror), else ``fail``;
* no From header / a mailbox without a usable domain → ``permerror`` (RFC 5322 §3.6 requires
  one From with at least one mailbox; RFC 9989 §4.4 and §5.3.1 put such messages outside DMARC,
  we report them rather than pretend ``none``); several authors or From headers → every domain
  is evaluated and the strictest outcome wins: fail (reject > quarantine > none disposition) >
  temperror > permerror > none > pass. More author domains than ``max_author_domains`` add a
  ``permerror`` entry ("evaluation incomplete", §11.5) and set ``incomplete``: the domains not
  evaluated could have asked for reject, so policy refuses such a message (docs/POLICY.md);
* not one author domain could be read (``evaluated_domains`` empty) → ``permerror``; policy
  decides by ``[policy] unusable_from`` — never silently "no policy".
"""

from __future__ import annotations

import random as _random
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import lru_cache
from types import MappingProxyType
from typing import Literal

from publicsuffixlist import PublicSuffixList

from ..addresses import AuthorDomains, AuthorProblem, normalise_domain
from ..dns import DnsOutcome, DnsResult, Lookup
from ..model import AuthResult
from .dkim import DkimOutcome
from .spf import SpfIdentity, SpfOutcome

__all__ = [
    "RFC_TREE_WALK_QUERIES",
    "Alignment",
    "DmarcLookups",
    "DmarcOutcome",
    "DmarcRecord",
    "DmarcSettings",
    "DomainEvaluation",
    "Mode",
    "Policy",
    "PolicyDiscovery",
    "RecordParse",
    "RecordStatus",
    "TreeWalk",
    "check_dmarc",
    "discovery_names",
    "identifiers_aligned_psl",
    "load_psl",
    "organizational_domain_psl",
    "parse_record",
    "select_organizational_domain",
    "tree_walk_names",
    "within_organizational_domain",
]

Mode = Literal["rfc9989", "rfc7489"]
PsdFlag = Literal["y", "n", "u"]
PolicyTag = Literal["p", "sp", "np"]

RFC_TREE_WALK_QUERIES = 8  # RFC 9989 §4.10: no Tree Walk makes more than eight queries


class Policy(StrEnum):
    """Domain Owner Assessment Policy values (RFC 9989 §4.7 ``p``/``sp``/``np``)."""

    NONE = "none"
    QUARANTINE = "quarantine"
    REJECT = "reject"


class Alignment(StrEnum):
    RELAXED = "r"
    STRICT = "s"


class RecordStatus(StrEnum):
    NOT_DMARC = "not-dmarc"  # does not begin with v=DMARC1: discarded (§4.7 "v", §4.10 step 2)
    INVALID = "invalid"  # a DMARC record no DMARC processing can use (§4.10.1)
    VALID = "valid"


_STEP_DOWN = MappingProxyType({Policy.REJECT: Policy.QUARANTINE,
                               Policy.QUARANTINE: Policy.NONE, Policy.NONE: Policy.NONE})


# --- records ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DmarcRecord:
    """A usable DMARC Policy Record; ``sp`` and ``np`` already hold their defaults (sp → p,
    np → sp → p, §4.7). ``explicit`` names the policy tags the record really carries.
    ``fallback`` is non-empty when §4.10.1 made the record act as ``p=none``."""

    p: Policy
    sp: Policy
    np: Policy
    psd: PsdFlag = "u"
    t: bool = False
    adkim: Alignment = Alignment.RELAXED
    aspf: Alignment = Alignment.RELAXED
    pct: int | None = None  # RFC 7489 only; RFC 9989 removed it (Appendix C.5.2)
    rua: str | None = None
    ruf: str | None = None
    explicit: frozenset[str] = frozenset()
    fallback: str = ""


@dataclass(frozen=True)
class RecordParse:
    """One TXT string read as a DMARC record. ``psd`` is kept for INVALID records too: a PSD
    may publish a record that carries no usable policy and still marks itself (§4.10.2)."""

    status: RecordStatus
    record: DmarcRecord | None = None
    psd: PsdFlag = "u"
    error: str = ""

    @property
    def is_dmarc(self) -> bool:
        return self.status is not RecordStatus.NOT_DMARC


_VERSION_RE = re.compile(r"[vV][ \t]*=[ \t]*(.*)", re.S)
_TAG_RE = re.compile(r"([A-Za-z]+)[ \t]*=[ \t]*(.*)", re.S)
_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[\x21-\x2b\x2d-\x7e]+\Z")
_PCT_RE = re.compile(r"[0-9]{1,3}\Z")
_TAGS_9989 = frozenset({"p", "sp", "np", "psd", "t", "adkim", "aspf", "rua", "ruf", "fo"})
_TAGS_7489 = frozenset({"p", "sp", "pct", "adkim", "aspf", "rua", "ruf", "fo", "rf", "ri"})


def _policy(value: str | None) -> Policy | None:
    if value is None:
        return None
    try:
        return Policy(value.lower())  # ABNF string literals are case-insensitive (RFC 5234)
    except ValueError:
        return None


def _has_valid_uri(value: str | None) -> bool:
    """At least one syntactically valid URI in a dmarc-urilist (§4.8), "!size" allowed."""
    if not value:
        return False
    for item in value.split(","):
        uri = item.strip()
        uri = re.sub(r"![0-9]+[kmgtKMGT]?\Z", "", uri)  # obs-dmarc-report-size
        if _URI_RE.match(uri):
            return True
    return False


@lru_cache(maxsize=1024)  # once per distinct record text, not per message (immutable)
def parse_record(text: bytes | str, *, mode: Mode = "rfc9989") -> RecordParse:
    """Parse one (concatenated, §4.5) TXT string. Never raises.

    RFC 9989 rules: ``v=DMARC1`` must be the first tag, its value case-sensitive (§4.7 "v"),
    else NOT_DMARC; tag names and the ABNF literal values are case-insensitive; white space
    around ``=`` and ``;`` is allowed (§4.8); unknown tags are ignored (§4.7); a syntax error in
    any other tag falls back to the tag's default (§4.8); a missing/invalid ``p`` or an invalid
    ``sp``/``np`` makes the record act as ``p=none`` when ``rua`` holds a valid URI, and INVALID
    otherwise (§4.10.1); a known tag given twice makes it INVALID (§4.7 → RFC 6376 §3.2).
    ``mode="rfc7489"`` reads the RFC 7489 tag set: ``pct``/``rf``/``ri`` known, ``np``, ``psd``
    and ``t`` unknown (ignored).
    """
    try:
        return _parse_record(text, mode)
    except Exception:  # a parser bug must not become a policy
        return RecordParse(RecordStatus.INVALID, error="unparsable record")


def _parse_record(text: bytes | str, mode: Mode) -> RecordParse:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    parts = text.strip().split(";")
    version = _VERSION_RE.fullmatch(parts[0].strip())
    if version is None or version.group(1).strip() != "DMARC1":
        return RecordParse(RecordStatus.NOT_DMARC, error="does not begin with v=DMARC1")
    known = _TAGS_9989 if mode == "rfc9989" else _TAGS_7489
    tags: dict[str, str] = {"v": "DMARC1"}
    repeated: list[str] = []
    for part in parts[1:]:
        item = part.strip()
        if not item:
            continue
        match = _TAG_RE.fullmatch(item)
        if match is None:
            continue  # a syntax error: ignored outright (§4.8)
        name = match.group(1).lower()
        if name not in known and name != "v":
            continue  # unknown tags MUST be ignored (§4.7)
        if name in tags:
            repeated.append(name)
            continue
        tags[name] = match.group(2).strip()

    psd: PsdFlag = "u"
    if mode == "rfc9989":
        psd_value = tags.get("psd", "u").lower()
        psd = "y" if psd_value == "y" else "n" if psd_value == "n" else "u"
    if repeated:
        names = ", ".join(sorted(set(repeated)))
        return RecordParse(RecordStatus.INVALID, psd=psd, error=f"repeated tag {names}")

    p = _policy(tags.get("p"))
    sp = _policy(tags.get("sp"))
    np = _policy(tags.get("np")) if mode == "rfc9989" else None
    problems = []
    if "p" not in tags:
        problems.append("no p tag")
    elif p is None:
        problems.append("invalid p tag")
    if "sp" in tags and sp is None:
        problems.append("invalid sp tag")
    if "np" in tags and mode == "rfc9989" and np is None:
        problems.append("invalid np tag")

    explicit = frozenset(name for name, value in (("p", p), ("sp", sp), ("np", np))
                         if value is not None)
    fallback = ""
    if problems:
        if not _has_valid_uri(tags.get("rua")):
            return RecordParse(RecordStatus.INVALID, psd=psd,
                               error="; ".join(problems) + " and no valid rua")
        fallback = "; ".join(problems) + ": acts as p=none (valid rua)"
        p = sp = np = Policy.NONE
        explicit = frozenset({"p"})
    if p is None:  # unreachable: a missing or bad p is one of the problems above
        return RecordParse(RecordStatus.INVALID, psd=psd, error="no p tag")
    sp = sp or p
    np = np or sp

    def flag(name: str, values: tuple[str, ...], default: str) -> str:
        value = tags.get(name, default).lower()
        return value if value in values else default

    pct = None
    if mode == "rfc7489" and "pct" in tags and _PCT_RE.match(tags["pct"]):
        number = int(tags["pct"])
        pct = number if 0 <= number <= 100 else None
    record = DmarcRecord(
        p=p, sp=sp, np=np, psd=psd,
        t=mode == "rfc9989" and flag("t", ("y", "n"), "n") == "y",
        adkim=Alignment(flag("adkim", ("r", "s"), "r")),
        aspf=Alignment(flag("aspf", ("r", "s"), "r")),
        pct=pct, rua=tags.get("rua"), ruf=tags.get("ruf"),
        explicit=explicit, fallback=fallback,
    )
    return RecordParse(RecordStatus.VALID, record, psd)


# --- organizational domains -------------------------------------------------------------------


@lru_cache(maxsize=8)
def load_psl(path: str | None = None) -> PublicSuffixList:
    """A public-suffix list, built once per path (~25 ms); None → the packaged list."""
    if path is None:
        return PublicSuffixList()
    with open(path, "rb") as source:
        return PublicSuffixList(source)


def organizational_domain_psl(domain: str, psl: PublicSuffixList) -> str | None:
    """RFC 7489 §3.2: the public suffix plus one label (A-labels, lowercase), with the PSL's
    private section counting (``attacker.github.io``). None when ``domain`` is not a usable
    name or is itself a public suffix (``co.uk``, ``github.io``)."""
    name = normalise_domain(domain)
    if name is None:
        return None
    found = psl.privatesuffix(name)
    return found if isinstance(found, str) else None


def identifiers_aligned_psl(author: str, identifier: str, *, strict: bool,
                            psl: PublicSuffixList) -> bool:
    """RFC 7489 alignment: strict = the same name; relaxed = the same Organizational Domain,
    a public suffix being its own (so ``co.uk`` never aligns with ``victim.co.uk``)."""
    a = normalise_domain(author)
    i = normalise_domain(identifier)
    if a is None or i is None:
        return False
    if a == i:
        return True
    if strict:
        return False
    return (organizational_domain_psl(a, psl) or a) == (organizational_domain_psl(i, psl) or i)


def within_organizational_domain(identifier: str, org_domain: str) -> bool:
    """Whether ``identifier`` is ``org_domain`` or a name under it (both normalised).

    An Organizational Domain is always the name itself or one of its parents, so only such an
    identifier can share it (relaxed alignment, §4.4); it needs no DNS. policy.py also uses it
    to tell a failing signature "aligned" without a Tree Walk on the reply path.
    """
    return identifier == org_domain or identifier.endswith("." + org_domain)


def tree_walk_names(domain: str, max_queries: int = RFC_TREE_WALK_QUERIES) -> tuple[str, ...]:
    """The names a full DNS Tree Walk queries, in order (RFC 9989 §4.10 steps 1-7): the domain,
    then (when it has ``max_queries`` labels or more) its ``max_queries - 1`` rightmost labels,
    then one label fewer each time down to the TLD."""
    labels = domain.split(".")
    names = [domain]
    for count in range(min(len(labels) - 1, max_queries - 1), 0, -1):
        names.append(".".join(labels[-count:]))
    return tuple(names)


def discovery_names(domain: str, max_queries: int = RFC_TREE_WALK_QUERIES) -> tuple[str, ...]:
    """The ``_dmarc`` TXT names policy discovery may query for an author domain (to prefetch)."""
    name = normalise_domain(domain)
    if name is None:
        return ()
    return tuple(f"_dmarc.{n}" for n in tree_walk_names(name, max_queries))


def select_organizational_domain(start: str,
                                 found: tuple[tuple[str, RecordParse], ...]) -> str:
    """RFC 9989 §4.10.2 selection over the records a Tree Walk found, longest name first:
    psd=n → that name; psd=y (not at the start) → one label below it; else the name with the
    fewest labels; with no records, the start domain itself."""
    start_labels = start.split(".")
    for name, parsed in found:
        if parsed.psd == "n":
            return name
        if parsed.psd == "y" and name != start:
            return ".".join(start_labels[-(name.count(".") + 2):])
    return found[-1][0] if found else start


@dataclass(frozen=True)
class TreeWalk:
    """One DNS Tree Walk from ``domain``: what it queried and found, where it stopped, and the
    Organizational Domain (None when a lookup failed temporarily: then it is unknown)."""

    domain: str
    names: tuple[str, ...]
    found: tuple[tuple[str, RecordParse], ...]
    discarded: tuple[str, ...] = ()  # names whose several DMARC records were all discarded
    temperror: str | None = None
    org_domain: str | None = None


@dataclass(frozen=True)
class _NameRecords:
    domain: str
    kind: Literal["none", "one", "multiple", "temperror"]
    parse: RecordParse | None = None
    dns: DnsOutcome = DnsOutcome.NXDOMAIN


class DmarcLookups:
    """The DMARC lookups of one check, each name asked once (Tree Walks share most names).

    ``queries`` counts the lookups that were made. Not shared between messages."""

    def __init__(self, lookup: Lookup, mode: Mode = "rfc9989",
                 max_queries: int = RFC_TREE_WALK_QUERIES) -> None:
        self._lookup = lookup
        self._mode: Mode = mode
        self._max_queries = max_queries
        self._answers: dict[tuple[str, str], DnsResult] = {}
        self._records: dict[str, _NameRecords] = {}
        self._walks: dict[str, TreeWalk] = {}
        self.queries = 0

    def query(self, name: str, rdtype: str) -> DnsResult:
        key = (name, rdtype)
        found = self._answers.get(key)
        if found is None:
            self.queries += 1
            found = self._lookup.query(name, rdtype)
            self._answers[key] = found
        return found

    def records_at(self, domain: str) -> _NameRecords:
        """The DMARC record at ``_dmarc.<domain>`` (§4.10 steps 1-2 / 5-6)."""
        known = self._records.get(domain)
        if known is not None:
            return known
        answer = self.query(f"_dmarc.{domain}", "TXT")
        result: _NameRecords
        if answer.outcome.is_temporary:
            result = _NameRecords(domain, "temperror", dns=answer.outcome)
        else:
            parsed = [parse_record(text, mode=self._mode) for text in answer.texts()]
            dmarc = [p for p in parsed if p.is_dmarc]
            if len(dmarc) == 1:
                result = _NameRecords(domain, "one", dmarc[0], answer.outcome)
            elif dmarc:
                result = _NameRecords(domain, "multiple", dns=answer.outcome)
            else:
                result = _NameRecords(domain, "none", dns=answer.outcome)
        self._records[domain] = result
        return result

    def walk(self, domain: str) -> TreeWalk:
        """The DNS Tree Walk from ``domain`` (RFC 9989 §4.10); stops at psd=y/n, at the TLD,
        or at the first temporary failure (any record there could change the answer)."""
        known = self._walks.get(domain)
        if known is not None:
            return known
        names: list[str] = []
        found: list[tuple[str, RecordParse]] = []
        discarded: list[str] = []
        walk: TreeWalk | None = None
        for name in tree_walk_names(domain, self._max_queries):
            names.append(name)
            at = self.records_at(name)
            if at.kind == "temperror":
                walk = TreeWalk(domain, tuple(names), tuple(found), tuple(discarded), name)
                break
            if at.kind == "multiple":
                discarded.append(name)
            elif at.kind == "one" and at.parse is not None:
                found.append((name, at.parse))
                if at.parse.psd in ("y", "n"):
                    break
        if walk is None:
            org = select_organizational_domain(domain, tuple(found))
            walk = TreeWalk(domain, tuple(names), tuple(found), tuple(discarded), None, org)
        self._walks[domain] = walk
        return walk

    def organizational_domain(self, domain: str) -> str | None:
        """The Organizational Domain by Tree Walk; None when a temporary error hides it."""
        return self.walk(domain).org_domain

    def known_organizational_domain(self, domain: str) -> str | None:
        """The Organizational Domain if a walk already found it (no new queries)."""
        walk = self._walks.get(domain)
        return walk.org_domain if walk is not None else None


# --- policy discovery -------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyDiscovery:
    """Where the DMARC Policy Record for an author domain was found, if anywhere."""

    domain: str
    status: Literal["found", "none", "temperror", "multiple"]
    record_domain: str | None = None
    parse: RecordParse | None = None
    org_domain: str | None = None
    from_psd: bool = False
    reason: str = ""


def _discover_9989(lookups: DmarcLookups, author: str) -> PolicyDiscovery:
    """RFC 9989 §4.10.1: the Author Domain's record, else its Organizational Domain's, else
    its PSD's; a temporary failure before the answer is known is temperror."""
    at = lookups.records_at(author)
    if at.kind == "temperror":
        return PolicyDiscovery(author, "temperror",
                               reason=f"_dmarc.{author}: DNS {at.dns.value}")
    if at.kind == "one" and at.parse is not None:
        org = author if at.parse.psd in ("y", "n") else None  # the walk stops right here
        return PolicyDiscovery(author, "found", author, at.parse, org)
    walk = lookups.walk(author)
    if walk.temperror is not None:
        failed = lookups.records_at(walk.temperror).dns.value
        return PolicyDiscovery(author, "temperror",
                               reason=f"tree walk: _dmarc.{walk.temperror}: DNS {failed}")
    org = walk.org_domain
    for name, parsed in walk.found:
        if name == org:
            return PolicyDiscovery(author, "found", name, parsed, org)
    if walk.found and walk.found[-1][1].psd == "y":  # only the last record can be psd=y
        name, parsed = walk.found[-1]
        return PolicyDiscovery(author, "found", name, parsed, org, from_psd=True)
    note = ""
    if walk.discarded:
        note = "; several records discarded at " + ", ".join(f"_dmarc.{n}" for n in walk.discarded)
    return PolicyDiscovery(author, "none", org_domain=org, reason="no DMARC record" + note)


def _discover_7489(lookups: DmarcLookups, author: str, psl: PublicSuffixList) -> PolicyDiscovery:
    """RFC 7489 §6.6.3: ``_dmarc.<author>``, and only if that holds no DMARC record,
    ``_dmarc.<Organizational Domain>``; several records end discovery (step 5)."""
    org = organizational_domain_psl(author, psl) or author
    for name in (author, org) if org != author else (author,):
        at = lookups.records_at(name)
        if at.kind == "temperror":
            return PolicyDiscovery(author, "temperror", org_domain=org,
                                   reason=f"_dmarc.{name}: DNS {at.dns.value}")
        if at.kind == "multiple":
            return PolicyDiscovery(author, "multiple", name, org_domain=org,
                                   reason=f"several DMARC records at _dmarc.{name}")
        if at.kind == "one" and at.parse is not None:
            return PolicyDiscovery(author, "found", name, at.parse, org)
    return PolicyDiscovery(author, "none", org_domain=org, reason="no DMARC record")


# --- settings and outcomes --------------------------------------------------------------------


@dataclass(frozen=True)
class DmarcSettings:
    """``mode``: "rfc9989" (DNS Tree Walk) or "rfc7489" (public-suffix list, pct honoured).
    ``psl``/``psl_path``: the list for rfc7489 mode (default: the one packaged with
    publicsuffixlist). ``max_tree_walk_queries``: per walk (RFC 9989 §4.10 says 8).
    ``max_author_domains``: author domains evaluated per message (§11.5).
    ``max_alignment_walks``: Tree Walks for identifiers other than the author domain."""

    mode: Mode = "rfc9989"
    psl_path: str | None = None
    psl: PublicSuffixList | None = field(default=None, compare=False, repr=False)
    max_tree_walk_queries: int = RFC_TREE_WALK_QUERIES
    max_author_domains: int = 10
    max_alignment_walks: int = 10

    def __post_init__(self) -> None:
        if self.mode not in ("rfc9989", "rfc7489"):
            raise ValueError(f"unknown DMARC mode {self.mode!r}")
        if self.max_tree_walk_queries < 1 or self.max_author_domains < 1:
            raise ValueError("DMARC limits must be at least 1")

    def public_suffix_list(self) -> PublicSuffixList:
        return self.psl if self.psl is not None else load_psl(self.psl_path)


@dataclass(frozen=True)
class DomainEvaluation:
    """The DMARC result for one author domain.

    ``policy``: the published policy that applies; ``policy_tag``: the tag its value was read
    from (an absent ``sp`` falls back to ``p``, an absent ``np`` to ``sp`` then ``p``, §4.7;
    compare ``policy_domain`` with ``domain`` to tell p-for-itself from subdomain policy);
    ``disposition``: what
    it evaluates to after t=y (RFC 9989) or pct sampling (RFC 7489) — ``none`` on pass, None
    when no policy applies. ``record_domain``: where the record used was found (also when it
    was unusable); ``policy_domain``: the DMARC Policy Domain (§3.2.5) when a usable policy
    applies. ``sampled``: RFC 7489 pct decision (None when pct played no part)."""

    domain: str
    result: AuthResult
    policy: Policy | None = None
    policy_tag: PolicyTag | None = None
    testing: bool = False
    disposition: Policy | None = None
    sampled: bool | None = None
    spf_aligned: bool = False
    dkim_aligned: tuple[str, ...] = ()
    record_domain: str | None = None
    org_domain: str | None = None
    policy_domain: str | None = None
    record: DmarcRecord | None = None
    reason: str = ""
    possible_dispositions: tuple[Policy, ...] = ()
    pass_possible: bool = True


@dataclass(frozen=True)
class DmarcOutcome:
    """The message's DMARC outcome: the deciding author domain's evaluation (strictest wins),
    every evaluation, the From-header problems and the number of DNS lookups made."""

    result: AuthResult
    header_from: str = ""
    evaluations: tuple[DomainEvaluation, ...] = ()
    policy: Policy | None = None
    policy_tag: PolicyTag | None = None
    testing: bool = False
    disposition: Policy | None = None
    sampled: bool | None = None
    spf_aligned: bool = False
    dkim_aligned: tuple[str, ...] = ()
    record_domain: str | None = None
    org_domain: str | None = None
    policy_domain: str | None = None
    reason: str = ""
    dns_queries: int = 0
    mode: Mode = "rfc9989"
    author_problems: tuple[AuthorProblem, ...] = ()
    incomplete: bool = False
    possible_dispositions: tuple[Policy, ...] = ()
    pass_possible: bool = True

    @property
    def author_problem(self) -> AuthorProblem | None:
        return self.author_problems[0] if self.author_problems else None

    @property
    def evaluated_domains(self) -> tuple[str, ...]:
        """The author domains DMARC was evaluated for (empty: no author could be read)."""
        return tuple(e.domain for e in self.evaluations if e.domain)


_RESULT_RANK = MappingProxyType({AuthResult.PASS: 0, AuthResult.NONE: 1,
                                 AuthResult.PERMERROR: 2, AuthResult.TEMPERROR: 3,
                                 AuthResult.FAIL: 4})
_DISPOSITION_RANK = MappingProxyType({Policy.NONE: 0, Policy.QUARANTINE: 1, Policy.REJECT: 2})


def _strictness(evaluation: DomainEvaluation) -> tuple[int, int]:
    rank = _RESULT_RANK.get(evaluation.result, 2)
    if evaluation.result is AuthResult.FAIL and evaluation.disposition is not None:
        return rank, _DISPOSITION_RANK[evaluation.disposition]
    return rank, 0


# --- evaluation -------------------------------------------------------------------------------


class _Evaluator:
    """Evaluates author domains against one message's SPF and DKIM outcomes."""

    def __init__(self, lookup: Lookup, spf: SpfOutcome, dkim: DkimOutcome,
                 settings: DmarcSettings, random: Callable[[], float]) -> None:
        self.settings = settings
        self.lookups = DmarcLookups(lookup, settings.mode, settings.max_tree_walk_queries)
        self.random = random
        self.psl = settings.public_suffix_list() if settings.mode == "rfc7489" else None
        self.identifier_walks: set[str] = set()
        # DMARC relies solely on SPF's MAIL FROM identity (RFC 9989 §4.4.2): a HELO result is
        # never used, even when handed in by mistake (CVE-2019-20790).
        self.spf_domain = None
        if spf.identity is SpfIdentity.MAILFROM:
            self.spf_domain = normalise_domain(spf.domain) if spf.domain else None
        self.spf_result = spf.result
        self.dkim = [(s.result, normalise_domain(s.domain) if s.domain else None)
                     for s in dkim.signatures]

    # alignment ---------------------------------------------------------------------------

    def aligned(self, author: str, identifier: str, mode: Alignment) -> bool | None:
        """True/False, or None when a temporary DNS failure leaves it unknown."""
        if identifier == author:
            return True
        if mode is Alignment.STRICT:
            return False
        if self.psl is not None:
            org_a = organizational_domain_psl(author, self.psl) or author
            return (organizational_domain_psl(identifier, self.psl) or identifier) == org_a
        org_author = self.lookups.organizational_domain(author)
        if org_author is None:
            same_tld = author.rpartition(".")[2] == identifier.rpartition(".")[2]
            return None if same_tld else False
        # An Organizational Domain is always the name itself or one of its parents, so only an
        # identifier at or below the author's one can share it; no walk (and no DNS failure in
        # a walk through someone else's zone) can change that.
        if not within_organizational_domain(identifier, org_author):
            return False
        if identifier not in self.identifier_walks:
            if len(self.identifier_walks) >= self.settings.max_alignment_walks:
                return False
            self.identifier_walks.add(identifier)
        org_identifier = self.lookups.organizational_domain(identifier)
        if org_identifier is None:
            return None
        return org_identifier == org_author

    # np existence ------------------------------------------------------------------------

    def exists(self, domain: str) -> bool | None:
        """RFC 9989 §3.2.13 / Appendix A.4: only NXDOMAIN means a name does not exist. Asked
        for A, AAAA and MX; any answer or NODATA means it exists; None if it stays unknown."""
        unknown = False
        for rdtype in ("A", "AAAA", "MX"):
            outcome = self.lookups.query(domain, rdtype).outcome
            if outcome in (DnsOutcome.ANSWER, DnsOutcome.NODATA):
                return True
            if outcome.is_temporary:
                unknown = True
        return None if unknown else False

    def applicable_policy(self, author: str, found: PolicyDiscovery,
                          record: DmarcRecord) -> tuple[Policy, PolicyTag] | None:
        """§4.10.1: p for the domain that published the record; sp for an existing subdomain,
        np for a non-existent one (RFC 7489 mode: sp). None when existence stays unknown."""
        if found.record_domain == author:
            return record.p, "p"
        sp_tag: PolicyTag = "sp" if "sp" in record.explicit else "p"
        if self.settings.mode == "rfc7489" or "np" not in record.explicit:
            return record.sp, sp_tag
        exists = self.exists(author)
        if exists is None:
            # Unknown existence matters only when sp and np differ (docs/POLICY.md,
            # "When an answer is missing").
            return (record.sp, sp_tag) if record.sp is record.np else None
        return (record.sp, sp_tag) if exists else (record.np, "np")

    def identical_pass(self, author: str) -> tuple[bool, bool]:
        """Whether SPF, and whether some DKIM signature, passes for the author domain itself.

        Such an identifier is aligned under strict and relaxed alignment alike (§4.4), so it
        gives DMARC pass whatever record the discovery would have found."""
        spf = self.spf_result is AuthResult.PASS and self.spf_domain == author
        dkim = any(r is AuthResult.PASS and d == author for r, d in self.dkim)
        return spf, dkim

    def dispositions(self, record: DmarcRecord, policies: tuple[Policy, ...]
                     ) -> tuple[Policy, ...]:
        """Every disposition a fail under one of ``policies`` could evaluate to (t=y steps
        down; RFC 7489 pct below 100 may step down or not)."""
        out: list[Policy] = []
        for policy in policies:
            if record.t and self.settings.mode == "rfc9989":
                out.append(_STEP_DOWN[policy])
                continue
            out.append(policy)
            if self.settings.mode == "rfc7489" and record.pct is not None and record.pct < 100:
                out.append(_STEP_DOWN[policy])
        return tuple(dict.fromkeys(out))

    # one author domain -------------------------------------------------------------------

    def evaluate(self, author: str) -> DomainEvaluation:
        if self.psl is not None:
            found = _discover_7489(self.lookups, author, self.psl)
        else:
            found = _discover_9989(self.lookups, author)
        if found.status == "temperror":
            spf_identical, dkim_identical = self.identical_pass(author)
            if spf_identical or dkim_identical:
                # Any record (adkim/aspf r or s) would align this identifier, and no record at
                # all gives "none": no answer the lookup could have had makes it a fail.
                how = ([f"spf {author}"] if spf_identical else []) + (
                    [f"dkim d={author}"] if dkim_identical else [])
                return DomainEvaluation(
                    author, AuthResult.PASS, disposition=Policy.NONE,
                    spf_aligned=spf_identical,
                    dkim_aligned=(author,) if dkim_identical else (),
                    org_domain=found.org_domain,
                    reason=f"aligned {', '.join(how)}, the author domain itself: aligned "
                           f"under any record, although {found.reason}")
            return DomainEvaluation(author, AuthResult.TEMPERROR, org_domain=found.org_domain,
                                    reason=found.reason)
        if found.status == "none":
            return DomainEvaluation(author, AuthResult.NONE, org_domain=found.org_domain,
                                    reason=found.reason)
        if found.status == "multiple" or found.parse is None:
            return DomainEvaluation(author, AuthResult.PERMERROR,
                                    record_domain=found.record_domain,
                                    org_domain=found.org_domain, reason=found.reason)
        if found.parse.record is None:
            return DomainEvaluation(
                author, AuthResult.PERMERROR, record_domain=found.record_domain,
                org_domain=found.org_domain,
                reason=f"invalid DMARC record at _dmarc.{found.record_domain}: "
                       f"{found.parse.error}")
        record = found.parse.record

        spf_aligned = False
        spf_unknown = False
        if self.spf_domain is not None and self.spf_result in (AuthResult.PASS,
                                                                AuthResult.TEMPERROR):
            aligned = self.aligned(author, self.spf_domain, record.aspf)
            if self.spf_result is AuthResult.PASS:
                spf_aligned = aligned is True
                spf_unknown = aligned is None
            else:
                spf_unknown = aligned is not False
        dkim_aligned: list[str] = []
        dkim_unknown: list[str] = []
        for result, domain in self.dkim:
            if domain is None or result not in (AuthResult.PASS, AuthResult.TEMPERROR):
                continue
            aligned = self.aligned(author, domain, record.adkim)
            if result is AuthResult.PASS and aligned is True:
                if domain not in dkim_aligned:
                    dkim_aligned.append(domain)
            elif aligned is not False and domain not in dkim_unknown:
                dkim_unknown.append(domain)

        org = found.org_domain
        if org is None:
            if self.psl is not None:
                org = organizational_domain_psl(author, self.psl) or author
            else:
                org = self.lookups.known_organizational_domain(author)
        base = DomainEvaluation(
            author, AuthResult.FAIL, testing=record.t, spf_aligned=spf_aligned,
            dkim_aligned=tuple(dkim_aligned), record_domain=found.record_domain,
            org_domain=org, policy_domain=found.record_domain, record=record)
        applicable = self.applicable_policy(author, found, record)
        policy, tag = applicable if applicable is not None else (None, None)
        where = f"_dmarc.{found.record_domain}" + (" (PSD)" if found.from_psd else "")
        if record.fallback:
            where += f" [{record.fallback}]"

        if spf_aligned or dkim_aligned:
            how = []
            if spf_aligned:
                how.append(f"spf {self.spf_domain}")
            how.extend(f"dkim d={d}" for d in dkim_aligned)
            return replace(base, result=AuthResult.PASS, policy=policy, policy_tag=tag,
                            disposition=Policy.NONE,
                            reason=f"aligned {', '.join(how)}; record {where}")
        candidates = (policy,) if policy is not None else (record.sp, record.np)
        if spf_unknown or dkim_unknown:
            which = (["spf " + str(self.spf_domain)] if spf_unknown else []) + [
                f"dkim d={d}" for d in dkim_unknown]
            return replace(base, result=AuthResult.TEMPERROR, policy=policy, policy_tag=tag,
                            possible_dispositions=self.dispositions(record, candidates),
                            pass_possible=True,
                            reason=f"alignment unknown after a temporary error: "
                                   f"{', '.join(which)}")
        if policy is None or tag is None:
            return replace(base, result=AuthResult.TEMPERROR,
                            possible_dispositions=self.dispositions(record, candidates),
                            pass_possible=False,
                            reason=f"existence of {author} unknown (np), record {where}")

        disposition = policy
        sampled: bool | None = None
        if record.t and self.settings.mode == "rfc9989":
            disposition = _STEP_DOWN[policy]  # §4.7 "t": one level below the policy
        if self.settings.mode == "rfc7489" and policy is not Policy.NONE:
            pct = 100 if record.pct is None else record.pct
            sampled = pct >= 100 or (pct > 0 and self.random() * 100 < pct)
            if not sampled:
                disposition = _STEP_DOWN[policy]  # RFC 7489 §6.6.4
        reason = f"no aligned identifier; {tag}={policy.value} from {where}"
        if disposition is not policy:
            reason += f"; applied {disposition.value} ({'t=y' if record.t else 'pct'})"
        return replace(base, policy=policy, policy_tag=tag, disposition=disposition,
                        sampled=sampled, reason=reason)


def check_dmarc(
    lookup: Lookup,
    author_domains: AuthorDomains,
    spf_mailfrom: SpfOutcome,
    dkim: DkimOutcome,
    settings: DmarcSettings,
    random: Callable[[], float] = _random.random,
) -> DmarcOutcome:
    """Evaluate DMARC for every author domain; the strictest outcome decides.

    ``random`` returns a float in [0, 1) and is used only for RFC 7489 pct sampling."""
    problems = author_domains.problems
    if AuthorProblem.NO_FROM in problems:
        return DmarcOutcome(AuthResult.PERMERROR, reason="no From header (RFC 5322 §3.6)",
                            mode=settings.mode, author_problems=problems)
    evaluator = _Evaluator(lookup, spf_mailfrom, dkim, settings, random)
    # author_domains() already normalises; a hand-built AuthorDomains may not have
    normalised = [normalise_domain(d) for d in author_domains.domains]
    domains = list(dict.fromkeys(d for d in normalised if d is not None))
    evaluations = [evaluator.evaluate(d) for d in domains[: settings.max_author_domains]]
    incomplete = len(domains) > settings.max_author_domains
    if AuthorProblem.NO_DOMAIN in problems or None in normalised:
        evaluations.append(DomainEvaluation(
            "", AuthResult.PERMERROR, reason="a From mailbox has no usable domain"))
    if incomplete:
        evaluations.append(DomainEvaluation(
            "", AuthResult.PERMERROR,
            reason=f"more than {settings.max_author_domains} author domains: "
                   "evaluation incomplete (RFC 9989 §11.5)"))
    if not evaluations:  # defensive: AuthorDomains always names a problem when it is empty
        evaluations.append(DomainEvaluation("", AuthResult.PERMERROR,
                                            reason="no author domain"))
    decisive = evaluations[0]
    for evaluation in evaluations[1:]:
        if _strictness(evaluation) > _strictness(decisive):
            decisive = evaluation
    reason = decisive.reason
    if len(evaluations) > 1:
        reason = f"{reason} (strictest of {len(evaluations)} author entries)"
    return DmarcOutcome(
        result=decisive.result,
        header_from=decisive.domain,
        evaluations=tuple(evaluations),
        policy=decisive.policy,
        policy_tag=decisive.policy_tag,
        testing=decisive.testing,
        disposition=decisive.disposition,
        sampled=decisive.sampled,
        spf_aligned=decisive.spf_aligned,
        dkim_aligned=decisive.dkim_aligned,
        record_domain=decisive.record_domain,
        org_domain=decisive.org_domain,
        policy_domain=decisive.policy_domain,
        reason=reason,
        dns_queries=evaluator.lookups.queries,
        mode=settings.mode,
        author_problems=problems,
        incomplete=incomplete,
        possible_dispositions=decisive.possible_dispositions,
        pass_possible=decisive.pass_possible,
    )
