"""Generated From values, differential against the readers a forger aims at (issue 12).

The rule (docs/POLICY.md "What the author is"): whenever a lenient reader shows an author
domain, DMARC is evaluated for it. The references are Python's two From readers —
``email.headerregistry`` (what a modern client library shows) and ``email.utils.getaddresses``
(the lenient legacy reader) — with each domain they show read as a UTS #46 client reads it
(the ``idna`` package, non-transitional). For every generated value, each such domain must be
among the domains we evaluate. The values are built from the pieces the review found bypasses
with (IDNA look-alikes, invisible code points, other full stops, quoted and encoded addresses,
unterminated literals, quotes and comments) and stray specials at random places.

Bounded: a fixed-seed corpus of 6,000 values plus 1,500 new hypothesis examples per run.
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
from email.headerregistry import HeaderRegistry
from email.utils import getaddresses

import idna
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailsec_milter.addresses import author_domains, normalise_domain

DOMAINS = (
    "victim.example", "attacker.example", "fußball.example", "ΣΊΣΥΦΟΣ.example",
    "σίσυφος.example", "vic\u2062tim.example", "victim.example\u3002", "victim\uff0eexample",
    "vic\u3164tim.example", "vic\ufe0ftim.example", "victim.example.", "VICTIM.EXAMPLE",
    "[192.0.2.1]", "vic\u200dtim.example", "victim.example\u00a0", "victim\uff61example",
    "b\u00fccher.example", "x.y.victim.example", "vic\u200btim.example",
    "\uff56\uff49\uff43\uff54\uff49\uff4d.example",  # full-width letters
)
LOCALS = ("ceo", '"x@attacker.example"', '"a b"', "first.last", '"ceo@victim.example"',
          "a\\@b", "=?utf-8?q?ceo=40victim.example?=")
DISPLAYS = ("", "CEO", '"CEO, Inc."', '"ceo@victim.example"',
            "=?utf-8?q?ceo=40victim.example?=", "=?utf-8?b?Y2VvQHZpY3RpbS5leGFtcGxl?=",
            "(comment)", "ceo@victim.example", "Bob (x@attacker.example)")
SEPARATORS = ("@", " @ ", "@(c)", "(c)@")
NOISE = ("[", "]", "(", ")", '"', "<", ">", ",", ";", ":", "\\", "@", " ", "=?", "?=", "\t",
         ".", "\u3002", "\u200b")

_REGISTRY = HeaderRegistry()


def build(choose: random.Random) -> str:
    """One From value from the pieces, with 0-3 stray specials inserted."""
    def mailbox() -> str:
        address = choose.choice(LOCALS) + choose.choice(SEPARATORS) + choose.choice(DOMAINS)
        display = choose.choice(DISPLAYS)
        return choose.choice([address, f"{display} <{address}>", f"<{address}>",
                              f"{display} {address}", f"{address} ({display})"])

    value = ", ".join(mailbox() for _ in range(choose.choice([1, 1, 1, 2, 3])))
    if choose.random() < 0.15:
        value = f"G: {value};"
    for _ in range(choose.choice([0, 0, 1, 1, 2, 3])):
        at = choose.randrange(len(value) + 1)
        value = value[:at] + choose.choice(NOISE) + value[at:]
    return value


def uts46(domain: str) -> str | None:
    """A domain as a UTS #46 client reads it; None where IDNA2008 refuses it."""
    try:
        name = idna.encode(domain.strip(), uts46=True, transitional=False, std3_rules=False)
    except (idna.IDNAError, UnicodeError, ValueError):
        return None
    return name.decode("ascii").lower().rstrip(".") or None


def shown_domains(value: str) -> set[str]:
    """The author domains Python's readers show for a From value."""
    shown: set[str] = set()
    with contextlib.suppress(Exception):  # a reader that gives up shows nothing
        shown.update(a.domain for a in _REGISTRY("From", value).addresses if a.domain)
    with contextlib.suppress(Exception):
        shown.update(a.rpartition("@")[2] for _name, a in getaddresses([value]) if "@" in a)
    return {d for d in map(uts46, shown) if d is not None and not _is_ip_address(d)}


def _is_ip_address(name: str) -> bool:
    """An address literal a reader shows without its brackets is still no DNS domain: DMARC
    has nothing to evaluate for it (RFC 9989 §5.3.1)."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def missing(value: str) -> set[str]:
    return shown_domains(value) - set(author_domains([value]).domains)


def test_fixed_corpus_every_shown_domain_is_evaluated() -> None:
    choose = random.Random(12)
    misses = {}
    for _ in range(6000):
        value = build(choose)
        gap = missing(value)
        if gap:
            misses[value] = gap
    assert not misses, list(misses.items())[:5]


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_generated_every_shown_domain_is_evaluated(choose: random.Random) -> None:
    value = build(choose)
    assert not missing(value), value


@settings(max_examples=1500, deadline=None)
@given(st.text(alphabet=st.sampled_from(
    "abcß.-ςσΣ\u200c\u200d\u2062\u3164\ufe0f\u3002\uff0e\uff61"
    "\u00c4\u00e4\u00e9\u0130\u0131\uff21\uff10"), min_size=1,
    max_size=24).map(lambda s: s + ".example"))
def test_domains_are_idna2008_uts46(domain: str) -> None:
    """normalise_domain agrees with the UTS #46 / IDNA2008 reference wherever that accepts
    the name (Python's IDNA2003 codec does not: sharp s to ss, final sigma to sigma,
    joiners dropped)."""
    reference = uts46(domain)
    if reference is None or not all(reference.split(".")):
        return
    assert normalise_domain(domain) == reference


@pytest.mark.parametrize(("written", "a_label"), [
    ("fußball.example", "xn--fuball-cta.example"),
    ("σίσυφος.example", "xn--kxa6ajbbmh.example"),
    ("FUSSBALL.example", "fussball.example"),
    ("bücher.example。", "xn--bcher-kva.example"),
])
def test_a_labels_differ_from_idna2003(written: str, a_label: str) -> None:
    assert normalise_domain(written) == a_label
