"""check_spf: identities, address normalisation, DNS errors, limits, hostile input, and the
thread-local bridge from pyspf's global ``spf.DNSLookup`` to each check's own Lookup."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import spf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailsec_milter.checks.spf import SpfIdentity, SpfOutcome, check_spf, helo_is_checkable
from mailsec_milter.dns import (
    CachingResolver,
    Deadline,
    DnsOutcome,
    DnsResult,
    ResolverSettings,
    StaticResolver,
)
from mailsec_milter.model import AuthResult, normalise_ip
from tests.support.dnsserver import DnsTestServer

MAILFROM = SpfIdentity.MAILFROM
HELO = SpfIdentity.HELO


def zone(text: str) -> StaticResolver:
    return StaticResolver.from_zone_text(text)


def spf_from(resolver: StaticResolver, ip: str, sender: str, helo: str = "mx.client.test",
             identity: SpfIdentity = MAILFROM) -> SpfOutcome:
    return check_spf(resolver, ip, identity, sender, helo, "mx.receiver.test")


# --------------------------------------------------------------------------------------------
# identities


@pytest.mark.parametrize("null_sender", ["", "<>", " <> "])
def test_null_sender_is_postmaster_at_helo(null_sender: str) -> None:
    resolver = zone(
        """
        mail.example.test.  TXT "v=spf1 exists:%{l}.%{o}.allow.test -all"
        postmaster.mail.example.test.allow.test. A 127.0.0.2
        """
    )
    outcome = spf_from(resolver, "192.0.2.1", null_sender, helo="mail.example.test")
    assert outcome.result is AuthResult.PASS  # %{l} expanded to "postmaster"
    assert outcome.identity is MAILFROM
    assert outcome.identity_value == "postmaster@mail.example.test"
    assert outcome.domain == "mail.example.test"
    assert resolver.queries[0] == ("mail.example.test", "TXT")


def test_helo_identity_checks_the_helo_name() -> None:
    resolver = zone('mail.example.test. TXT "v=spf1 ip4:192.0.2.1 -all"')
    outcome = spf_from(resolver, "192.0.2.1", "someone@other.test", helo="mail.example.test",
                       identity=HELO)
    assert (outcome.identity, outcome.result) == (HELO, AuthResult.PASS)
    assert outcome.identity_value == "mail.example.test"
    assert resolver.queries == [("mail.example.test", "TXT")]


@pytest.mark.parametrize(
    "helo",
    ["localhost", "mail.", "", "  ", "[192.0.2.1]", "192.0.2.1", "[IPv6:2001:db8::1]",
     "2001:db8::1", "IPv6:2001:db8::1"],
)
@pytest.mark.parametrize(("identity", "mail_from"), [(HELO, "a@sender.test"), (MAILFROM, "")])
def test_helo_not_a_fqdn_is_none_without_dns(
    helo: str, identity: SpfIdentity, mail_from: str
) -> None:
    resolver = zone('sender.test. TXT "v=spf1 -all"\nlocalhost. TXT "v=spf1 -all"')
    outcome = spf_from(resolver, "192.0.2.1", mail_from, helo=helo, identity=identity)
    assert outcome.result is AuthResult.NONE
    assert resolver.queries == []
    assert not helo_is_checkable(helo)


def test_domain_literal_sender_is_none_without_dns() -> None:
    resolver = zone("")
    assert spf_from(resolver, "192.0.2.1", "a@[192.0.2.1]").result is AuthResult.NONE
    assert resolver.queries == []


@pytest.mark.parametrize("client", [None, "not-an-ip", "999.1.1.1"])
def test_no_usable_client_address_is_none(client: str | None) -> None:
    resolver = zone('sender.test. TXT "v=spf1 -all"')
    outcome = check_spf(resolver, client, MAILFROM, "a@sender.test", "mx.client.test")
    assert outcome.result is AuthResult.NONE
    assert resolver.queries == []


# --------------------------------------------------------------------------------------------
# IPv4-mapped IPv6


@pytest.mark.parametrize("client", ["::ffff:192.0.2.10", "::FFFF:c000:020a", "[::ffff:192.0.2.10]",
                                    "IPv6:::ffff:192.0.2.10"])
def test_ipv4_mapped_client_evaluates_as_ipv4(client: str) -> None:
    text = """
        ip.test.    TXT "v=spf1 ip4:192.0.2.10 -all"
        a.test.     TXT "v=spf1 a -all"
        a.test.     A   192.0.2.10
        six.test.   TXT "v=spf1 ip6:::ffff:192.0.2.0/120 -all"
        """
    assert normalise_ip(client) == "192.0.2.10"
    for domain in ("ip.test", "a.test"):
        resolver = zone(text)
        mapped = spf_from(resolver, client, f"x@{domain}")
        plain = spf_from(zone(text), normalise_ip(client), f"x@{domain}")
        assert mapped == plain
        assert mapped.result is AuthResult.PASS
        assert "192.0.2.10 is authorized" in mapped.comment
        assert ("a.test", "AAAA") not in resolver.queries  # compared as IPv4: asked for A
    # An ip6 mechanism covering the mapped range does not match an IPv4 client (RFC 7208 §5).
    assert spf_from(zone(text), client, "x@six.test").result is AuthResult.FAIL


# --------------------------------------------------------------------------------------------
# DNS errors → temperror, never none or fail


@pytest.mark.parametrize("error", ["TIMEOUT", "SERVFAIL"])
@pytest.mark.parametrize(
    ("sender", "where"),
    [
        ("a@sender.test", "the sender's SPF record"),
        ("a@inc.test", "an included record"),
        ("a@redir.test", "a redirect target"),
        ("a@amech.test", "an a: mechanism's address lookup"),
        ("a@mxmech.test", "an mx mechanism's MX lookup"),
    ],
)
def test_dns_errors_are_temperror(error: str, sender: str, where: str) -> None:
    resolver = zone(
        f"""
        sender.test.   TXT {error}
        inc.test.      TXT "v=spf1 include:sender.test -all"
        redir.test.    TXT "v=spf1 redirect=sender.test"
        amech.test.    TXT "v=spf1 a:host.sender.test -all"
        host.sender.test. A {error}
        mxmech.test.   TXT "v=spf1 mx:sender.test -all"
        sender.test.   MX  {error}
        """
    )
    outcome = spf_from(resolver, "192.0.2.1", sender)
    assert outcome.result is AuthResult.TEMPERROR, where
    assert outcome.comment.endswith("DNS lookup failed temporarily")


def test_expired_deadline_is_temperror_not_none() -> None:
    class Expired:
        def __init__(self) -> None:
            self.inner = zone('sender.test. TXT "v=spf1 -all"')

        def query(self, name: str, rdtype: str) -> DnsResult:
            return self.inner.query(name, rdtype, Deadline(0))

    outcome = check_spf(Expired(), "192.0.2.1", MAILFROM, "a@sender.test", "mx.client.test")
    assert outcome.result is AuthResult.TEMPERROR


def test_ptr_dns_errors_follow_rfc7208_5_5() -> None:
    """§5.5: an error on the PTR lookup → "ptr" does not match; an error on one name's A lookup
    → that name is skipped. Neither ends the whole check as temperror."""
    text = """
        ptrfail.test. TXT "v=spf1 ptr ip4:192.0.2.1 -all"
        ptrskip.test. TXT "v=spf1 ptr:good.test -all"
        1.2.0.192.in-addr.arpa. PTR broken.good.test.
        1.2.0.192.in-addr.arpa. PTR mx.good.test.
        broken.good.test. A SERVFAIL
        mx.good.test. A 192.0.2.1
        2.2.0.192.in-addr.arpa. PTR SERVFAIL
        """
    assert spf_from(zone(text), "192.0.2.1", "a@ptrskip.test").result is AuthResult.PASS
    assert spf_from(zone(text), "192.0.2.2", "a@ptrfail.test").result is AuthResult.FAIL
    # The ip4 term after "ptr" still decides when the PTR lookup itself fails.
    resolver = zone('ptrfail.test. TXT "v=spf1 ptr ip4:192.0.2.1 -all"\n'
                    "1.2.0.192.in-addr.arpa. PTR TIMEOUT")
    assert spf_from(resolver, "192.0.2.1", "a@ptrfail.test").result is AuthResult.PASS
    assert ("1.2.0.192.in-addr.arpa", "PTR") in resolver.queries


# --------------------------------------------------------------------------------------------
# the sender's text never reaches our comment


HOSTILE = r"Bad\013\010X-Injected: yes (comment); spf=pass; dkim=pass"


def _assert_safe(comment: str) -> None:
    for bad in ("\r", "\n", "(", ")", ";", "Injected", "spf=pass"):
        assert bad not in comment, (bad, comment)


@pytest.mark.parametrize(
    "record",
    [
        '"v=spf1 -all exp=explain.hostile.test"',
        '"v=spf1 ~all exp=explain.hostile.test"',
        '"v=spf1 -all exp=%{d}.explain.test"',
        '"v=spf1 moo(x);\\013\\010X-Injected: -all exp=explain.hostile.test"',
        '"v=spf1 ip4:192.0.2.0/33;(Injected) -all"',
        '"v=spf1 include:(Injected);spf=pass.test -all"',
    ],
)
def test_hostile_explanation_never_in_comment(record: str) -> None:
    resolver = zone(
        f"""
        hostile.test.                 TXT {record}
        explain.hostile.test.         TXT "{HOSTILE}"
        hostile.test.explain.test.    TXT "{HOSTILE}"
        """
    )
    outcome = spf_from(resolver, "198.51.100.7", "a@hostile.test")
    assert outcome.result in (AuthResult.FAIL, AuthResult.SOFTFAIL, AuthResult.PERMERROR)
    _assert_safe(outcome.comment)
    assert outcome.comment.startswith("hostile.test: ")


def test_exp_text_is_fetched_but_not_copied() -> None:
    """The control: pyspf does read the hostile explanation, we just do not pass it on."""
    resolver = zone(
        f"""
        hostile.test.          TXT "v=spf1 -all exp=explain.hostile.test"
        explain.hostile.test.  TXT "{HOSTILE}"
        """
    )
    outcome = spf_from(resolver, "198.51.100.7", "a@hostile.test")
    assert ("explain.hostile.test", "TXT") in resolver.queries
    assert outcome.comment == "hostile.test: 198.51.100.7 is not authorized"


def test_hostile_sender_domain_is_reduced_in_comment() -> None:
    resolver = zone("")
    outcome = spf_from(resolver, "192.0.2.1", "a@evil(x);spf=pass.test")
    _assert_safe(outcome.comment)


def test_permerror_comment_keeps_pyspf_wording_only() -> None:
    resolver = zone('bad.test. TXT "v=spf1 ip4:192.0.2.1 moo:(Injected) -all"')
    outcome = spf_from(resolver, "192.0.2.9", "a@bad.test")
    assert outcome.result is AuthResult.PERMERROR
    assert outcome.comment == "bad.test: Unknown mechanism found"


# --------------------------------------------------------------------------------------------
# processing limits (RFC 7208 §4.6.4)


def test_ten_dns_mechanism_limit_is_permerror() -> None:
    names = [f"h{i}.limit.test" for i in range(12)]
    lines = [f'limit.test. TXT "v=spf1 {" ".join("a:" + n for n in names)} -all"']
    lines += [f"{n}. A 198.51.100.{i}" for i, n in enumerate(names)]
    resolver = zone("\n".join(lines))
    outcome = spf_from(resolver, "192.0.2.1", "a@limit.test")
    assert outcome.result is AuthResult.PERMERROR
    assert len(resolver.queries) <= 11  # the record + at most 10 mechanism lookups
    assert ("h10.limit.test", "A") not in resolver.queries
    assert ("h11.limit.test", "A") not in resolver.queries


def test_ten_lookups_exactly_is_allowed() -> None:
    names = [f"h{i}.limit.test" for i in range(10)]
    lines = [f'limit.test. TXT "v=spf1 {" ".join("a:" + n for n in names)} -all"']
    lines += [f"{n}. A 198.51.100.{i}" for i, n in enumerate(names)]
    lines += ["h9.limit.test. A 192.0.2.1"]
    assert spf_from(zone("\n".join(lines)), "192.0.2.1", "a@limit.test").result is AuthResult.PASS


def test_include_chain_hits_the_lookup_limit() -> None:
    lines = [f'l{i}.chain.test. TXT "v=spf1 include:l{i + 1}.chain.test -all"' for i in range(30)]
    resolver = zone("\n".join(lines))
    outcome = spf_from(resolver, "192.0.2.1", "a@l0.chain.test")
    assert outcome.result is AuthResult.PERMERROR
    assert len(resolver.queries) <= 11


def test_two_void_lookups_limit_is_permerror() -> None:
    resolver = zone('void.test. TXT "v=spf1 a:nx1.test a:nx2.test a:nx3.test a:nx4.test -all"\n'
                    'nodata.test. TXT "x"')
    outcome = spf_from(resolver, "192.0.2.1", "a@void.test")
    assert outcome.result is AuthResult.PERMERROR
    assert "Void lookup limit" in outcome.comment
    assert resolver.queries == [("void.test", "TXT"), ("nx1.test", "A"), ("nx2.test", "A"),
                                ("nx3.test", "A")]


def test_two_void_lookups_are_still_allowed() -> None:
    resolver = zone('void.test. TXT "v=spf1 a:nx1.test a:nodata.test ip4:192.0.2.1 -all"\n'
                    'nodata.test. TXT "x"')
    assert spf_from(resolver, "192.0.2.1", "a@void.test").result is AuthResult.PASS


def test_more_than_ten_mx_names_is_permerror() -> None:
    lines = ['mxmany.test. TXT "v=spf1 mx -all"']
    lines += [f"mxmany.test. MX {i} mx{i}.mxmany.test." for i in range(11)]
    resolver = zone("\n".join(lines))
    assert spf_from(resolver, "192.0.2.1", "a@mxmany.test").result is AuthResult.PERMERROR
    assert not any(rdtype == "A" for _, rdtype in resolver.queries)


# --------------------------------------------------------------------------------------------
# macros with hostile local parts


MACRO_ZONE = """
    macro.test. TXT "v=spf1 exists:%{l1r+}.%{d}.macro-check.test exists:%{l}.%{i}.%{h}.m.test ?all"
    """

HOSTILE_LOCAL_PARTS = [
    "", ".", "..", "a..b", "+", "-", "%", "%%", "%{d}", "%{l}", "a b", "a\tb", "\r\n",
    "x(comment);spf=pass", '"quoted local"', "ü", "\x00", "a" * 300, "." * 70,
    "a." * 200, "1.2.3.4", "a+b+c" * 40, "\\", "a@b",
]


@pytest.mark.parametrize("local", HOSTILE_LOCAL_PARTS, ids=repr)
def test_macro_with_hostile_local_part_does_not_crash(local: str) -> None:
    resolver = zone(MACRO_ZONE)
    outcome = spf_from(resolver, "192.0.2.1", f"{local}@macro.test")
    assert outcome.result in (AuthResult.NEUTRAL, AuthResult.PERMERROR, AuthResult.NONE)
    _assert_safe(outcome.comment)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(local=st.text(max_size=120))
def test_macro_expansion_never_crashes(local: str) -> None:
    resolver = zone(MACRO_ZONE)
    outcome = spf_from(resolver, "192.0.2.1", f"{local}@macro.test")
    assert outcome.result in (AuthResult.NEUTRAL, AuthResult.PERMERROR, AuthResult.NONE)
    assert all(len(label) <= 63 for name, _ in resolver.queries for label in name.split("."))


def test_macro_expansion_reaches_dns() -> None:
    """The control for the two tests above: the macro really expands into a lookup.
    %{l1r+} of "a+b": split on "+", reversed to b, a, rightmost one kept → "a"."""
    text = MACRO_ZONE + "\na.macro.test.macro-check.test. A 127.0.0.2"
    resolver = zone(text)
    assert spf_from(resolver, "192.0.2.1", "a+b@macro.test").result is AuthResult.PASS
    assert ("a.macro.test.macro-check.test", "A") in resolver.queries
    resolver = zone(text)
    assert spf_from(resolver, "192.0.2.1", "b+a@macro.test").result is AuthResult.NEUTRAL
    assert ("b.macro.test.macro-check.test", "A") in resolver.queries


# --------------------------------------------------------------------------------------------
# the thread-local bridge


class SlowResolver:
    """A StaticResolver that yields the GIL on every lookup, so threads interleave."""

    def __init__(self, inner: StaticResolver) -> None:
        self.inner = inner

    def query(self, name: str, rdtype: str) -> DnsResult:
        time.sleep(0.001)
        return self.inner.query(name, rdtype)


def test_concurrent_checks_each_use_their_own_resolver() -> None:
    """50 checks on 8 threads; every resolver publishes a different address for the same
    domain. Any cross-talk through pyspf's global DNSLookup gives a fail instead of a pass."""
    count = 50
    resolvers = [
        zone(f"""
            shared.test. TXT "v=spf1 a:host.shared.test include:inc.shared.test -all"
            host.shared.test. A 198.51.100.{i}
            inc.shared.test. TXT "v=spf1 ip4:203.0.113.{i} -all"
            """)
        for i in range(count)
    ]
    start = threading.Barrier(8)

    def run(i: int) -> SpfOutcome:
        if i < 8:
            start.wait(timeout=10)
        address = f"203.0.113.{i}" if i % 2 else f"198.51.100.{i}"
        return check_spf(SlowResolver(resolvers[i]), address, MAILFROM, "a@shared.test",
                         "mx.client.test")

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(run, range(count)))
    assert [o.result for o in outcomes] == [AuthResult.PASS] * count
    for i, resolver in enumerate(resolvers):
        expected = [("shared.test", "TXT"), ("host.shared.test", "A")]
        if i % 2:
            expected.append(("inc.shared.test", "TXT"))
        assert resolver.queries == expected, i


def test_cross_talk_would_be_detected() -> None:
    """The negative control: the address of another resolver's zone does not pass."""
    resolver = zone("""
        shared.test. TXT "v=spf1 a:host.shared.test include:inc.shared.test -all"
        host.shared.test. A 198.51.100.1
        inc.shared.test. TXT "v=spf1 ip4:203.0.113.1 -all"
        """)
    assert spf_from(resolver, "198.51.100.2", "a@shared.test").result is AuthResult.FAIL


def test_bridge_refuses_lookups_outside_a_check() -> None:
    spf_from(zone('a.test. TXT "v=spf1 -all"'), "192.0.2.1", "x@a.test")
    with pytest.raises(spf.TempError):
        spf.DNSLookup("a.test", "TXT", True, 5)


def test_nested_check_restores_the_outer_lookup() -> None:
    """A Lookup that itself runs a check (as a wrapper might) leaves the outer one intact."""
    outer_zone = zone('outer.test. TXT "v=spf1 a:host.outer.test -all"\n'
                      "host.outer.test. A 192.0.2.1")
    inner_zone = zone('inner.test. TXT "v=spf1 -all"')

    class Nesting:
        def query(self, name: str, rdtype: str) -> DnsResult:
            if name == "outer.test":
                assert spf_from(inner_zone, "192.0.2.1", "x@inner.test").result is AuthResult.FAIL
            return outer_zone.query(name, rdtype)

    outcome = check_spf(Nesting(), "192.0.2.1", MAILFROM, "x@outer.test", "mx.client.test")
    assert outcome.result is AuthResult.PASS
    assert ("host.outer.test", "A") in outer_zone.queries


# --------------------------------------------------------------------------------------------
# through the production resolver and a real DNS server on loopback


@pytest.fixture
def dns_server() -> Iterator[DnsTestServer]:
    with DnsTestServer() as server:
        yield server


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("split.test", AuthResult.PASS),
        ("broken.test", AuthResult.TEMPERROR),
        ("silent.test", AuthResult.TEMPERROR),
        ("missing.test", AuthResult.NONE),
        ("long.test", AuthResult.PASS),
    ],
)
def test_check_spf_over_caching_resolver(
    dns_server: DnsTestServer, domain: str, expected: AuthResult
) -> None:
    dns_server.add("split.test", "TXT", [b"v=spf1 ", b"ip4:192.0.2.0/24", b" -all"])
    dns_server.add("split.test", "TXT", "unrelated text")
    dns_server.servfail("broken.test")
    dns_server.drop("silent.test")
    long_record = b"v=spf1 " + b" ".join(b"ip4:198.51.100.%d" % i for i in range(60))
    dns_server.add("long.test", "TXT",
                   [long_record[i:i + 250] for i in range(0, len(long_record), 250)]
                   + [b" ip4:192.0.2.1 -all"])
    resolver = CachingResolver(
        ResolverSettings(nameservers=(dns_server.nameserver,), timeout=0.5))
    try:
        outcome = check_spf(resolver, "192.0.2.1", MAILFROM, f"a@{domain}", "mx.client.test")
    finally:
        resolver.close()
    assert outcome.result is expected
    assert dns_server.count(domain, "TXT") >= 1


def test_dns_outcomes_map_to_pyspf_as_documented() -> None:
    """NXDOMAIN/NODATA → no records (void); TIMEOUT/SERVFAIL → TempError (LIBRARY-NOTES)."""
    resolver = StaticResolver([
        DnsResult("t.test", "TXT", DnsOutcome.TIMEOUT),
        DnsResult("s.test", "TXT", DnsOutcome.SERVFAIL),
        DnsResult("n.test", "TXT", DnsOutcome.NODATA),
    ])
    outcomes = {d: spf_from(resolver, "192.0.2.1", f"a@{d}").result
                for d in ("t.test", "s.test", "n.test", "x.test")}
    assert outcomes == {"t.test": AuthResult.TEMPERROR, "s.test": AuthResult.TEMPERROR,
                        "n.test": AuthResult.NONE, "x.test": AuthResult.NONE}
