"""Regression tests for the OpenDMARC security write-ups (../shared/conformance/dmarc/opendmarc/
SECURITY/*): the inputs each one describes, run through our From parser and evaluator, with the
defined result asserted. None of them may raise.

* CVE-2019-16378 — several From addresses: every domain is evaluated, the strictest wins; a
  passing address never hides a failing one (RFC 9989 §11.5); the work per message is bounded.
* CVE-2021-34555 — an improperly formed multi-valued From crashed the milter: malformed lists
  give defined results.
* CVE-2020-12272 — ``example.net(.example.com`` read as a domain: a comment never extends or
  replaces a domain, and an SPF/DKIM domain that is not a DNS name never aligns.
* CVE-2019-20790 — an SPF pass for the HELO identity taken as the MAIL FROM one: DMARC uses
  only the MAIL FROM identity (RFC 9989 §4.4.2); the null sender's is postmaster@HELO (§3.2.4).
* CVE-2020-12460 — a heap overflow parsing aggregate-report XML. We parse no reports (not
  applicable by design); the closest input we do parse is record text, fed the same kind of
  unterminated / NUL-carrying data.
"""

from __future__ import annotations

import pytest

from mailsec_milter.addresses import AuthorProblem, author_domains
from mailsec_milter.checks.dkim import DkimOutcome, DkimSignatureOutcome
from mailsec_milter.checks.dmarc import (
    DmarcOutcome,
    DmarcSettings,
    Policy,
    RecordStatus,
    check_dmarc,
    parse_record,
)
from mailsec_milter.checks.spf import SpfIdentity, SpfOutcome, check_spf
from mailsec_milter.dns import StaticResolver
from mailsec_milter.model import AuthResult

PASS, FAIL, PERMERROR = AuthResult.PASS, AuthResult.FAIL, AuthResult.PERMERROR

ZONE = """
_dmarc.gmail.example. TXT "v=DMARC1; p=reject"
_dmarc.hotmail.example. TXT "v=DMARC1; p=none"
_dmarc.example.org. TXT "v=DMARC1; p=reject"
_dmarc.example.com. TXT "v=DMARC1; p=none"
_dmarc.science.example. TXT "v=DMARC1; p=reject"
_dmarc.victim.example. TXT "v=DMARC1; p=reject"
_dmarc.attacker.example. TXT "v=DMARC1; p=none"
mx.victim.example. TXT "v=spf1 ip4:192.0.2.1 -all"
attacker.example. TXT "v=spf1 ip4:203.0.113.9 -all"
"""

MODES = ("rfc9989", "rfc7489")


def evaluate(from_values: list[str], spf: SpfOutcome | None = None,
             signatures: tuple[tuple[AuthResult, str], ...] = (), mode: str = "rfc9989",
             zone: str = ZONE, **settings: object) -> DmarcOutcome:
    return check_dmarc(
        StaticResolver.from_zone_text(zone),
        author_domains(from_values),
        spf or SpfOutcome(SpfIdentity.MAILFROM, AuthResult.NONE, "", ""),
        DkimOutcome(tuple(DkimSignatureOutcome(r, d) for r, d in signatures)),
        DmarcSettings(mode=mode, **settings),  # type: ignore[arg-type]
    )


# --- CVE-2019-16378 ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "values",
    [
        ["Bad User <spoof@example.org>,Test User <test@example.com>"],  # authheaders message_multi
        ["Test User <test@example.com>,Bad User <spoof@example.org>"],  # message_multi2
        ["Test User <test@example.com>", "Bad User <spoof@example.org>"],  # two From fields
        ["Bad User <spoof@example.org>", "Test User <test@example.com>"],
    ],
)
def test_multi_from_signed_by_one_domain_fails_for_the_other(values: list[str],
                                                             mode: str) -> None:
    """The authheaders multi-From messages: DKIM d=example.com passes, example.org is forged."""
    outcome = evaluate(values, signatures=((PASS, "example.com"),), mode=mode)
    assert outcome.result is FAIL
    assert outcome.header_from == "example.org"
    assert outcome.disposition is Policy.REJECT
    assert {e.domain: e.result for e in outcome.evaluations} == {
        "example.com": PASS, "example.org": FAIL}
    assert outcome.author_problem in (AuthorProblem.MULTIPLE_FROM_HEADERS,
                                      AuthorProblem.MULTIPLE_AUTHORS)


def test_two_administrative_domains_in_one_from() -> None:
    """The write-up's a@gmail.com, b@hotmail.com: SPF can pass for at most one of them."""
    spf = SpfOutcome(SpfIdentity.MAILFROM, PASS, "b@hotmail.example", "hotmail.example")
    outcome = evaluate(["a@gmail.example, b@hotmail.example"], spf)
    assert (outcome.result, outcome.header_from, outcome.disposition) == (
        FAIL, "gmail.example", Policy.REJECT)


def test_same_domain_twice_is_processed_as_normal() -> None:
    """"professor@science.edu, student@science.edu" signed by science.edu: one domain."""
    outcome = evaluate(["professor@science.example, student@science.example"],
                       signatures=((PASS, "science.example"),))
    assert outcome.result is PASS and len(outcome.evaluations) == 1


def test_many_domains_bounded_work() -> None:
    """The amplification concern: the number of domains evaluated is capped, the result is
    incomplete (never pass), and the DNS work is bounded."""
    values = [", ".join(f"u{i}@d{i}.victim.example" for i in range(200))]
    outcome = evaluate(values, signatures=((PASS, "victim.example"),), max_author_domains=10)
    assert outcome.incomplete
    assert outcome.result is PERMERROR
    assert len(outcome.evaluations) == 11
    assert outcome.dns_queries <= 10 * 8 + 8


# --- CVE-2021-34555 ---------------------------------------------------------------------------


MALFORMED_MULTI_FROM = [
    "a@victim.example,",
    ",a@victim.example",
    ",,,",
    ", ,",
    "a@, b@",
    "a@victim.example, <",
    "a@victim.example, (",
    'a@victim.example, "',
    "a@victim.example, >",
    "<a@victim.example>,,<",
    "<>,<>",
    ":;,",
    "a@victim.example;, b@",
    "G: a@victim.example, ; b@victim.example",
    "a@victim.example," * 500,
    "\x00a@victim.example,\x00",
    "a@victim.example, =?utf-8?q?=00?= <",
]


@pytest.mark.parametrize("value", MALFORMED_MULTI_FROM)
def test_malformed_multi_valued_from_is_defined(value: str) -> None:
    authors = author_domains([value])
    outcome = evaluate([value])
    assert outcome.result in (FAIL, PERMERROR)
    if "victim.example" in authors.domains:
        # the forged domain is still evaluated: its reject can never be lost
        assert outcome.result is FAIL and outcome.header_from == "victim.example"
    else:
        assert outcome.result is PERMERROR


# --- CVE-2020-12272 ---------------------------------------------------------------------------


@pytest.mark.parametrize("identifier", ["example.net(.example.org", "example.org(.example.net",
                                        "example.org(", "example.org)", "example.org;x",
                                        "example.org example.net", " example.org"])
def test_identifier_that_is_not_a_domain_never_aligns(identifier: str) -> None:
    spf = SpfOutcome(SpfIdentity.MAILFROM, PASS, f"x@{identifier}", identifier)
    outcome = evaluate(["a@example.org"], spf, signatures=((PASS, identifier),))
    if identifier.strip() == "example.org":
        assert outcome.result is PASS  # surrounding white space is not part of a name
        return
    assert outcome.result is FAIL
    assert not outcome.spf_aligned and outcome.dkim_aligned == ()


@pytest.mark.parametrize("value", ["a@example.net(.example.org", "a@example.net(.example.org)",
                                   "<a@example.net(.example.org>", "a@example.net (.example.org"])
def test_injected_comment_in_from_domain(value: str) -> None:
    domains = author_domains([value]).domains
    assert domains == ("example.net",)  # never example.org, never example.net.example.org


# --- CVE-2019-20790 ---------------------------------------------------------------------------


def test_helo_spf_pass_is_never_used() -> None:
    resolver = StaticResolver.from_zone_text(ZONE)
    mail_from = check_spf(resolver, "192.0.2.1", SpfIdentity.MAILFROM,
                          "attacker@attacker.example", "mx.victim.example")
    helo = check_spf(resolver, "192.0.2.1", SpfIdentity.HELO,
                     "attacker@attacker.example", "mx.victim.example")
    assert (mail_from.result, helo.result) == (FAIL, PASS)
    for spf in (mail_from, helo):  # even the HELO outcome handed in by mistake
        outcome = check_dmarc(resolver, author_domains(["ceo@victim.example"]), spf,
                              DkimOutcome(), DmarcSettings())
        assert outcome.result is FAIL and not outcome.spf_aligned


def test_null_sender_uses_postmaster_at_helo() -> None:
    """RFC 9989 §3.2.4: for a null MAIL FROM the SPF Domain is the HELO identity's."""
    resolver = StaticResolver.from_zone_text(ZONE)
    spf = check_spf(resolver, "192.0.2.1", SpfIdentity.MAILFROM, "", "mx.victim.example")
    assert spf.result is PASS and spf.domain == "mx.victim.example"
    outcome = check_dmarc(resolver, author_domains(["MAILER-DAEMON@victim.example"]), spf,
                          DkimOutcome(), DmarcSettings())
    assert outcome.result is PASS and outcome.spf_aligned


# --- CVE-2020-12460 (closest surface: record text) --------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        b"v=DMARC1; p=reject; rua=mailto:a@b\x00",
        b"v=DMARC1\x00; p=reject",
        b"<?xml version='1.0'?><feedback><record>" + b"A" * 70_000,
        b"v=DMARC1; p=reject; rua=" + b"\xff" * 4096,
        b"v=DMARC1; " + b";" * 65_535,
        b"v=DMARC1; p=reject; ruf=" + b"mailto:x@y," * 5000,
    ],
)
def test_record_parser_survives_report_like_garbage(text: bytes) -> None:
    parsed = parse_record(text)
    assert parsed.status in (RecordStatus.NOT_DMARC, RecordStatus.INVALID, RecordStatus.VALID)
    zone_value = text[:200].decode("latin-1").replace('"', "").replace("\\", "")
    outcome = evaluate(["a@victim.example"],
                       zone=f'_dmarc.victim.example. TXT "{zone_value}"')
    assert outcome.result in (AuthResult.NONE, FAIL, PERMERROR)
