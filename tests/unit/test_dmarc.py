"""DMARC evaluator units: Tree Walk names and Organizational Domain selection, PSL alignment,
several author domains (strictest wins), settings, and the outcome's fields."""

from __future__ import annotations

import pytest

from mailsec_milter.addresses import AuthorDomains, AuthorProblem, author_domains
from mailsec_milter.checks.dkim import DkimOutcome, DkimSignatureOutcome
from mailsec_milter.checks.dmarc import (
    DmarcLookups,
    DmarcOutcome,
    DmarcSettings,
    Policy,
    RecordStatus,
    check_dmarc,
    discovery_names,
    identifiers_aligned_psl,
    load_psl,
    organizational_domain_psl,
    parse_record,
    select_organizational_domain,
    tree_walk_names,
)
from mailsec_milter.checks.spf import SpfIdentity, SpfOutcome
from mailsec_milter.dns import StaticResolver
from mailsec_milter.model import AuthResult

PASS, FAIL, NONE = AuthResult.PASS, AuthResult.FAIL, AuthResult.NONE
TEMPERROR, PERMERROR = AuthResult.TEMPERROR, AuthResult.PERMERROR


def spf(result: AuthResult = NONE, domain: str = "") -> SpfOutcome:
    return SpfOutcome(SpfIdentity.MAILFROM, result, f"x@{domain}", domain)


def dkim(*signatures: tuple[AuthResult, str]) -> DkimOutcome:
    return DkimOutcome(tuple(DkimSignatureOutcome(r, d) for r, d in signatures))


def run(zone: str, from_values: list[str], spf_outcome: SpfOutcome | None = None,
        dkim_outcome: DkimOutcome | None = None, **settings: object) -> DmarcOutcome:
    return check_dmarc(StaticResolver.from_zone_text(zone), author_domains(from_values),
                       spf_outcome or spf(), dkim_outcome or DkimOutcome(),
                       DmarcSettings(**settings))  # type: ignore[arg-type]


ZONE = """
_dmarc.reject.example. TXT "v=DMARC1; p=reject"
_dmarc.quarantine.example. TXT "v=DMARC1; p=quarantine"
_dmarc.monitor.example. TXT "v=DMARC1; p=none"
_dmarc.broken.example. TXT "v=DMARC1; p=bogus"
_dmarc.slow.example. TXT TIMEOUT
"""


# --- the Tree Walk ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "names"),
    [
        ("com", ("com",)),
        ("example.com", ("example.com", "com")),
        ("a.b.c.d.e.f.g.h", ("a.b.c.d.e.f.g.h", "b.c.d.e.f.g.h", "c.d.e.f.g.h", "d.e.f.g.h",
                             "e.f.g.h", "f.g.h", "g.h", "h")),
        ("x.y.a.b.c.d.e.f.g.h", ("x.y.a.b.c.d.e.f.g.h", "b.c.d.e.f.g.h", "c.d.e.f.g.h",
                                 "d.e.f.g.h", "e.f.g.h", "f.g.h", "g.h", "h")),
    ],
)
def test_tree_walk_names(domain: str, names: tuple[str, ...]) -> None:
    assert tree_walk_names(domain) == names
    assert len(tree_walk_names(domain)) <= 8


def test_tree_walk_never_exceeds_eight_queries() -> None:
    for count in range(1, 40):
        domain = ".".join(f"l{i}" for i in range(count))
        names = tree_walk_names(domain)
        assert len(names) == min(count, 8)
        assert names[0] == domain and names[-1] == f"l{count - 1}"
        assert [n.count(".") for n in names[1:]] == sorted(
            (n.count(".") for n in names[1:]), reverse=True)


def test_discovery_names_for_prefetch() -> None:
    assert discovery_names("Mail.Example.COM.") == (
        "_dmarc.mail.example.com", "_dmarc.example.com", "_dmarc.com")
    assert discovery_names("not a domain") == ()


def _found(*entries: tuple[str, str]) -> tuple[tuple[str, object], ...]:
    return tuple((name, parse_record(text)) for name, text in entries)


@pytest.mark.parametrize(
    ("start", "entries", "org"),
    [
        ("a.mail.example.com", (), "a.mail.example.com"),  # §4.10.2: the initial target
        ("a.mail.example.com", (("mail.example.com", "v=DMARC1; p=none"),
                                ("example.com", "v=DMARC1; p=none")), "example.com"),
        ("a.mail.example.com", (("mail.example.com", "v=DMARC1; p=none; psd=n"),),
         "mail.example.com"),
        ("a.mail.example.com", (("com", "v=DMARC1; p=none; psd=y"),), "example.com"),
        ("giant.bank.example", (("giant.bank.example", "v=DMARC1; p=none"),
                                ("bank.example", "v=DMARC1; psd=y")), "giant.bank.example"),
        ("bank.example", (("bank.example", "v=DMARC1; p=none; psd=y"),), "bank.example"),
    ],
)
def test_select_organizational_domain(start: str, entries: tuple[tuple[str, str], ...],
                                      org: str) -> None:
    """The three examples at the end of RFC 9989 §4.10.2, and Appendix B.4.3."""
    assert select_organizational_domain(start, _found(*entries)) == org  # type: ignore[arg-type]


def test_lookups_are_memoised_and_counted() -> None:
    resolver = StaticResolver.from_zone_text('_dmarc.example.com. TXT "v=DMARC1; p=none"')
    lookups = DmarcLookups(resolver)
    assert lookups.organizational_domain("a.b.example.com") == "example.com"
    assert lookups.organizational_domain("b.example.com") == "example.com"
    assert lookups.queries == 4 == len(resolver.queries)


def test_walk_reports_temperror_and_discarded() -> None:
    resolver = StaticResolver.from_zone_text("""
        _dmarc.b.example.com. TXT "v=DMARC1; p=none"
        _dmarc.b.example.com. TXT "v=DMARC1; p=reject"
        _dmarc.example.com. TXT SERVFAIL
    """)
    walk = DmarcLookups(resolver).walk("a.b.example.com")
    assert walk.discarded == ("b.example.com",)
    assert walk.temperror == "example.com" and walk.org_domain is None


# --- RFC 7489 PSL -----------------------------------------------------------------------------


def test_psl_org_domains() -> None:
    psl = load_psl()
    assert load_psl() is psl  # built once
    assert organizational_domain_psl("a.b.Example.COM.", psl) == "example.com"
    assert organizational_domain_psl("attacker.github.io", psl) == "attacker.github.io"
    assert organizational_domain_psl("github.io", psl) is None
    assert organizational_domain_psl("co.uk", psl) is None
    assert organizational_domain_psl("..", psl) is None


@pytest.mark.parametrize(
    ("author", "identifier", "strict", "aligned"),
    [
        ("news.example.com", "foo.example.com", False, True),  # RFC 9989 Table 1
        ("news.example.com", "news.example.com", True, True),
        ("news.example.com", "foo.example.net", False, False),
        ("github.io", "attacker.github.io", False, False),
        ("victim.github.io", "attacker.github.io", False, False),
        ("victim.co.uk", "co.uk", False, False),
        ("co.uk", "victim.co.uk", False, False),
        ("a.example.co.uk", "b.example.co.uk", False, True),
        ("a.example.co.uk", "b.example.co.uk", True, False),
        ("EXAMPLE.com.", "example.COM", True, True),
    ],
)
def test_psl_alignment(author: str, identifier: str, strict: bool, aligned: bool) -> None:
    assert identifiers_aligned_psl(author, identifier, strict=strict, psl=load_psl()) is aligned


# --- several author domains -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authors", "result", "header_from", "disposition"),
    [
        (["a@monitor.example", "b@reject.example"], FAIL, "reject.example", Policy.REJECT),
        (["a@reject.example", "b@quarantine.example"], FAIL, "reject.example", Policy.REJECT),
        (["a@quarantine.example", "b@monitor.example"], FAIL, "quarantine.example",
         Policy.QUARANTINE),
        (["a@slow.example", "b@monitor.example"], FAIL, "monitor.example", Policy.NONE),
        (["a@slow.example", "b@nothing.example"], TEMPERROR, "slow.example", None),
        (["a@broken.example", "b@nothing.example"], PERMERROR, "broken.example", None),
        (["a@nothing.example", "b@other.example"], NONE, "nothing.example", None),
    ],
)
def test_strictest_author_wins(authors: list[str], result: AuthResult, header_from: str,
                               disposition: Policy | None) -> None:
    """fail (reject > quarantine > none) > temperror > permerror > none > pass."""
    for values in ([", ".join(authors)], authors):  # one From with two, or two From headers
        outcome = run(ZONE, values)
        assert (outcome.result, outcome.header_from, outcome.disposition) == (
            result, header_from, disposition)
        assert len(outcome.evaluations) == 2


def test_second_address_cannot_turn_fail_into_pass() -> None:
    """CVE-2019-16378: the attacker's own, passing domain next to the victim's."""
    zone = ZONE + '_dmarc.attacker.example. TXT "v=DMARC1; p=reject"\n'
    outcome = run(zone, ["x@attacker.example, ceo@reject.example"],
                  spf(PASS, "attacker.example"), dkim((PASS, "attacker.example")))
    assert outcome.result is FAIL and outcome.header_from == "reject.example"
    assert [e.result for e in outcome.evaluations] == [PASS, FAIL]
    assert outcome.author_problem is AuthorProblem.MULTIPLE_AUTHORS


def test_same_domain_twice_is_one_evaluation() -> None:
    outcome = run(ZONE, ["a@reject.example, b@reject.example"], spf(PASS, "reject.example"))
    assert outcome.result is PASS and len(outcome.evaluations) == 1
    assert outcome.author_problem is AuthorProblem.MULTIPLE_AUTHORS


def test_garbage_next_to_a_forged_address_still_fails() -> None:
    outcome = run(ZONE, ["ceo@reject.example, <<<garbage"])
    assert outcome.result is FAIL and outcome.header_from == "reject.example"
    assert outcome.evaluations[-1].result is PERMERROR
    assert outcome.author_problem is AuthorProblem.NO_DOMAIN


def test_garbage_next_to_a_passing_address_is_permerror() -> None:
    outcome = run(ZONE, ["ceo@reject.example, <<<garbage"], spf(PASS, "reject.example"))
    assert outcome.result is PERMERROR and outcome.header_from == ""


def test_too_many_authors_is_never_pass() -> None:
    values = [", ".join(f"a@d{i}.reject.example" for i in range(5))]
    outcome = run(ZONE, values, spf(PASS, "reject.example"), max_author_domains=3)
    assert outcome.incomplete and outcome.result is PERMERROR
    assert [e.result for e in outcome.evaluations] == [PASS, PASS, PASS, PERMERROR]


def test_no_from_makes_no_lookup() -> None:
    resolver = StaticResolver.from_zone_text(ZONE)
    outcome = check_dmarc(resolver, author_domains([]), spf(), DkimOutcome(), DmarcSettings())
    assert outcome.result is PERMERROR and resolver.queries == []
    assert outcome.author_problem is AuthorProblem.NO_FROM


def test_empty_author_domains_object_is_permerror() -> None:
    outcome = check_dmarc(StaticResolver(), AuthorDomains(), spf(), DkimOutcome(),
                          DmarcSettings())
    assert outcome.result is PERMERROR


# --- outcome fields and settings --------------------------------------------------------------


def test_outcome_fields_of_a_fail() -> None:
    zone = '_dmarc.example.com. TXT "v=DMARC1; p=quarantine; sp=reject; t=y"\n' \
           "www.example.com. A 192.0.2.1\n"
    outcome = run(zone, ["Boss <boss@www.example.com>"], spf(PASS, "elsewhere.example"),
                  dkim((PASS, "elsewhere.example"), (FAIL, "example.com")))
    assert outcome.result is FAIL
    assert outcome.header_from == "www.example.com"
    assert (outcome.policy, outcome.policy_tag, outcome.testing, outcome.disposition) == (
        Policy.REJECT, "sp", True, Policy.QUARANTINE)
    assert (outcome.spf_aligned, outcome.dkim_aligned) == (False, ())
    assert (outcome.record_domain, outcome.policy_domain, outcome.org_domain) == (
        "example.com", "example.com", "example.com")
    assert outcome.dns_queries == 3 and outcome.mode == "rfc9989"
    assert "sp=reject" in outcome.reason and "t=y" in outcome.reason
    record = outcome.evaluations[0].record
    assert record is not None and record.t


def test_rfc7489_random_is_only_called_for_pct_between_0_and_100() -> None:
    calls: list[int] = []

    def rng() -> float:
        calls.append(1)
        return 0.0

    for record, expected_calls in (("p=reject", 0), ("p=reject; pct=100", 0),
                                   ("p=reject; pct=0", 0), ("p=none; pct=50", 0),
                                   ("p=reject; pct=50", 1)):
        calls.clear()
        resolver = StaticResolver.from_zone_text(f'_dmarc.example.com. TXT "v=DMARC1; {record}"')
        check_dmarc(resolver, author_domains(["a@example.com"]), spf(), DkimOutcome(),
                    DmarcSettings(mode="rfc7489"), random=rng)
        assert len(calls) == expected_calls, record


def test_settings_validation() -> None:
    with pytest.raises(ValueError):
        DmarcSettings(mode="rfc1234")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        DmarcSettings(max_tree_walk_queries=0)
    assert DmarcSettings().max_tree_walk_queries == 8


def test_records_status_enum_values() -> None:
    assert {s.value for s in RecordStatus} == {"not-dmarc", "invalid", "valid"}
