"""authres.py: the one A-R renderer and the forged-header finder.

Rendering: whatever text reaches a value or a comment (an attacker's MAIL FROM, TLS macros, DKIM
tags), the header stays one header: no line break that is not folding, no ``;`` outside a
quoted-string or comment, lines within 78 columns where a space allows, and the ``authres``
package parses it back with every method, result and property.
Finding: ``forged_indices`` returns per-name 1-based indices, highest first, so deleting them in
that order removes exactly the fields that claim our id (the CVE-2022-48521 class of bug).
"""

from __future__ import annotations

import re
from typing import Any

import authres
import authres.arc
import authres.dkim_b
import authres.dmarc
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mailsec_milter.authres import (
    ResInfo,
    claims_our_id,
    comment,
    extract_authserv_id,
    forged_indices,
    quote_value,
    render,
    results_for,
)
from mailsec_milter.checks.dkim import DkimOutcome, DkimSignatureOutcome
from mailsec_milter.checks.spf import SpfIdentity, SpfOutcome
from mailsec_milter.checks.tls import TlsOutcome, check_tls
from mailsec_milter.engine import Analysis
from mailsec_milter.model import AuthResult, Header, TlsInfo
from tests.support.arshape import assert_evenly_indented, mask

OURS = "mx.example.com"
PREFIX = "Authentication-Results: "
CONTEXT = authres.FeatureContext(authres.dkim_b, authres.dmarc, authres.arc)


# --- helpers -------------------------------------------------------------------------------------

def parse(value: str) -> Any:
    """authres wants an unfolded value (RFC 5322 3.2.2: remove each CRLF before WSP)."""
    return CONTEXT.parse_value(value.replace("\n", ""))


def unquote(value: str) -> str:
    """authres keeps quoted-pairs in what it returns; undo them for comparisons."""
    return re.sub(r"\\(.)", r"\1", value)


def assert_one_safe_header(value: str, results: int) -> None:
    """The structural promises of render(), checked without trusting authres."""
    assert "\r" not in value
    assert all(ord(c) < 0x7F for c in value)
    for line in value.split("\n")[1:]:
        assert line[:1] in (" ", "\t"), f"line break that is not folding: {value!r}"
        assert line.strip(), "a folded line must not be white space only"
    assert_evenly_indented(value)
    lines = (PREFIX + value).split("\n")
    assert not any(line.lstrip().lower().startswith("x-injected") for line in lines)
    masked = mask(value)
    assert masked.count(";") == max(results, 1), masked  # after the id, then between results


def assert_folded_within(value: str, width: int = 78) -> None:
    """Every physical line fits, unless it holds no place where it could have been folded: a
    space followed by a non-space, outside quoted-strings and quoted-pairs."""
    masked = mask(PREFIX + value, comments=False).split("\n")
    for number, line in enumerate((PREFIX + value).split("\n")):
        if len(line) <= width:
            continue
        # the MTA writes the field name and ": "; our value starts after them
        body = masked[number][len(PREFIX):] if number == 0 else masked[number][1:]
        assert not re.search(r". \S", body), f"foldable long line {line!r}"


def unfold(value: str) -> str:
    """The one-line text: every fold is a space that became LF + TAB."""
    return value.replace("\n\t", " ")


def parsed_entries(value: str) -> list[tuple[str, str, str | None, list[tuple[str, str]]]]:
    header = parse(value)
    return [(r.method, r.result, r.reason and unquote(r.reason),
             [(f"{p.type}.{p.name}", unquote(p.value)) for p in r.properties])
            for r in header.results]


def realistic_analysis() -> Analysis:
    return Analysis(
        spf_mailfrom=SpfOutcome(SpfIdentity.MAILFROM, AuthResult.PASS, "joe@football.example.com",
                                "football.example.com",
                                "mx.example.com: domain of joe@football.example.com designates "
                                "192.0.2.10 as permitted sender"),
        spf_helo=SpfOutcome(SpfIdentity.HELO, AuthResult.NONE, "mail.football.example.com",
                            "mail.football.example.com", "no SPF record"),
        dkim=DkimOutcome((
            DkimSignatureOutcome(AuthResult.PASS, "football.example.com", "brisbane",
                                 "ed25519-sha256", "@football.example.com", "/gCrinpcQOoI",
                                 256, "256-bit key"),
            DkimSignatureOutcome(AuthResult.FAIL, "football.example.com", "test",
                                 "rsa-sha256", "", "F45dVWDfMbQD", 1024,
                                 "body hash did not verify"),
            DkimSignatureOutcome(AuthResult.TEMPERROR, "lists.example.org", "s2024",
                                 "rsa-sha256", "", "aBcD+eF/gH==", None, "key lookup timeout"),
        )),
        tls=TlsOutcome(AuthResult.PASS, "TLSv1.3", "TLS_AES_256_GCM_SHA384", 256, ""),
    )


# --- forged_indices ------------------------------------------------------------------------------

def h(name: str, value: str) -> Header:
    return Header(name, (" " + value).encode())


INTERLEAVED = [
    h("Authentication-Results", f"{OURS}; spf=pass smtp.mailfrom=a@example.net"),     # AR 1 ours
    h("Authentication-Results", "other.example; dkim=pass header.d=example.net"),     # AR 2
    h("authentication-results", "MX.Example.COM; dkim=pass header.d=example.net"),    # AR 3 ours
    h("Received", f"from {OURS} by relay.example; Mon, 1 Jan 2024 00:00:00 +0000"),
    h("Authentication-Results", f"(c) {OURS}; dmarc=pass header.from=example.net"),   # AR 4 ours
    h("ARC-Authentication-Results", f"i=1; {OURS}; spf=pass smtp.mailfrom=example.net"),
    h("Authentication-Results", f"{OURS}.evil.example; spf=pass"),                   # AR 5
    h("Authentication-Results", f"evil{OURS}; spf=pass"),                             # AR 6
]


def delete_in_order(headers: list[Header], indices: list[int]) -> list[Header]:
    """What the MTA does for chgheader(name, index, ''), one call after another."""
    remaining = list(headers)
    for index in indices:
        seen = 0
        for position, header in enumerate(remaining):
            if header.name.lower() == "authentication-results":
                seen += 1
                if seen == index:
                    del remaining[position]
                    break
        else:
            raise AssertionError(f"no Authentication-Results number {index}")
    return remaining


def is_ours(header: Header, include_subdomains: bool = False) -> bool:
    return (header.name.lower() == "authentication-results"
            and claims_our_id(extract_authserv_id(header.value), OURS, include_subdomains))


def test_forged_indices_on_interleaved_headers() -> None:
    assert forged_indices(INTERLEAVED, OURS, False) == [4, 3, 1]


def test_deleting_in_the_returned_order_removes_exactly_ours() -> None:
    """CVE-2022-48521 regression: deleting lowest first would shift the later indices."""
    indices = forged_indices(INTERLEAVED, OURS, False)
    remaining = delete_in_order(INTERLEAVED, indices)
    assert not any(is_ours(header) for header in remaining)
    assert remaining == [header for header in INTERLEAVED if not is_ours(header)]
    assert any(header.name == "ARC-Authentication-Results" for header in remaining)
    # The test can fail: the same indices lowest first delete foreign fields and keep ours.
    wrong = delete_in_order(INTERLEAVED, sorted(indices))
    assert any(is_ours(header) for header in wrong)


def test_subdomain_ids_are_ours_only_when_asked() -> None:
    headers = [h("Authentication-Results", f"{OURS}; none"),
               h("Authentication-Results", f"sub.{OURS}; none"),
               h("Authentication-Results", f"bad{OURS}; none"),
               h("Authentication-Results", "example.com; none")]
    assert forged_indices(headers, OURS, False) == [1]
    assert forged_indices(headers, OURS, True) == [2, 1]


def test_arc_authentication_results_is_never_counted() -> None:
    headers = [h("ARC-Authentication-Results", f"i=1; {OURS}; none"),
               h("ARC-Authentication-Results", f"{OURS}; none"),
               h("Authentication-Results", f"{OURS}; none")]
    assert forged_indices(headers, OURS, True) == [1]


@pytest.mark.parametrize(("value", "expected"), [
    (f"{OURS}; none", OURS),
    (f"{OURS} 1; none", OURS),
    (f"{OURS};spf=pass", OURS),
    (f"  {OURS}  ;  none", OURS),
    (f"(comment) {OURS}; none", OURS),
    (f"(nested (comment) here) {OURS}; none", OURS),
    (f"(escaped \\) paren) {OURS}; none", OURS),
    (f"(a)(b) {OURS}(c); none", OURS),
    (f'"{OURS}"; none', OURS),
    ('"mx.example\\.com"; none', OURS),
    (f'"{OURS}', OURS),  # unterminated quote: read like a lax reader would
    (f"{OURS}\r\n\t; none", OURS),
    ("", None),
    ("   ", None),
    ("(only a comment)", None),
    ("(unterminated comment mx.example.com; none", None),
    ("; none", None),
])
def test_extract_authserv_id(value: str, expected: str | None) -> None:
    assert extract_authserv_id(value) == expected


@pytest.mark.parametrize(("theirs", "subdomains", "expected"), [
    (OURS, False, True),
    (OURS.upper(), False, True),
    (OURS + ".", False, True),
    (" " + OURS + " ", False, True),
    ("a.b." + OURS, False, False),
    ("a.b." + OURS, True, True),
    ("x" + OURS, True, False),
    ("example.com", True, False),
    (None, True, False),
    ("", True, False),
])
def test_claims_our_id(theirs: str | None, subdomains: bool, expected: bool) -> None:
    assert claims_our_id(theirs, OURS, subdomains) is expected


AR_IDS = st.sampled_from([OURS, OURS.upper(), f"(c) {OURS}", f'"{OURS}"', f"sub.{OURS}",
                          "other.example", f"evil{OURS}", f"{OURS}.evil.example"])
NAMES = st.sampled_from(["Authentication-Results", "authentication-results",
                         "ARC-Authentication-Results", "Received", "DKIM-Signature"])


@given(st.lists(st.tuples(NAMES, AR_IDS), max_size=25), st.booleans())
def test_deletion_property(fields: list[tuple[str, str]], subdomains: bool) -> None:
    headers = [h(name, f"{authserv}; none") for name, authserv in fields]
    indices = forged_indices(headers, OURS, subdomains)
    assert indices == sorted(set(indices), reverse=True)
    remaining = delete_in_order(headers, indices)
    assert remaining == [x for x in headers if not is_ours(x, subdomains)]


# --- quote_value / comment -----------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("example.com", "example.com"),
    ("joe@example.com", "joe@example.com"),
    ("@example.com", "@example.com"),
    ("bounce+x=y@example.com", "bounce+x=y@example.com"),
    ("a..b@example.com", '"a..b@example.com"'),
    ("joe@example..com", '"joe@example..com"'),
    ("joe@", '"joe@"'),
    ("<>", '"<>"'),
    ("", '""'),
    ("a b", '"a b"'),
    ('a"b', '"a\\"b"'),
    ("a\\b", '"a\\\\b"'),
    ("a;b", '"a;b"'),
    ("a\r\nX-Injected: yes", '"a??X-Injected: yes"'),
    ("caf\u00e9", '"caf?"'),
])
def test_quote_value(text: str, expected: str) -> None:
    assert quote_value(text) == expected


def test_quote_value_for_a_plain_value_quotes_addresses() -> None:
    # RFC 8601: authserv-id and reason are a "value" (token / quoted-string): no bare "@".
    assert quote_value("joe@example.com", address=False) == '"joe@example.com"'
    assert quote_value("example.com", address=False) == "example.com"


@pytest.mark.parametrize(("text", "expected"), [
    ("good signature", "(good signature)"),
    ("", ""),
    ("a (b) c", "(a \\(b\\) c)"),
    ("a)\r\nX-Injected: yes", "(a\\)??X-Injected: yes)"),
    ("back\\slash", "(back\\\\slash)"),
])
def test_comment(text: str, expected: str) -> None:
    assert comment(text) == expected


# --- render --------------------------------------------------------------------------------------

def test_no_results_is_none() -> None:
    value = render(OURS, [])
    assert value == f"{OURS}; none"
    assert parse(value).results == []


def test_reason_with_an_address_is_quoted_and_parses() -> None:
    value = render(OURS, [ResInfo("dmarc", "fail", reason="from joe@example.com",
                                  properties=(("header.from", "example.com"),))])
    assert parsed_entries(value) == [("dmarc", "fail", "from joe@example.com",
                                      [("header.from", "example.com")])]
    value = render(OURS, [ResInfo("dmarc", "fail", reason="joe@example.com")])
    assert parsed_entries(value) == [("dmarc", "fail", "joe@example.com", [])]


def test_realistic_analysis_renders_parses_and_keeps_everything() -> None:
    results = results_for(realistic_analysis())
    value = render(OURS, results)
    assert_one_safe_header(value, len(results))
    assert_folded_within(value)
    assert all(len(line) <= 78 for line in (PREFIX + value).split("\n")), value
    parsed = parse(value)
    assert parsed.authserv_id == OURS
    assert parsed_entries(value) == [
        ("spf", "pass", None, [("smtp.mailfrom", "joe@football.example.com")]),
        ("spf", "none", None, [("smtp.helo", "mail.football.example.com")]),
        ("dkim", "pass", None, [("header.d", "football.example.com"),
                                ("header.i", "@football.example.com"),
                                ("header.s", "brisbane"), ("header.a", "ed25519-sha256"),
                                ("header.b", "/gCrinpcQOoI")]),
        ("dkim", "fail", None, [("header.d", "football.example.com"), ("header.s", "test"),
                                ("header.a", "rsa-sha256"), ("header.b", "F45dVWDfMbQD")]),
        ("dkim", "temperror", None, [("header.d", "lists.example.org"), ("header.s", "s2024"),
                                     ("header.a", "rsa-sha256"), ("header.b", "aBcD+eF/gH==")]),
        ("x-tls", "pass", None, [("smtp.tls-version", "TLSv1.3"),
                                 ("smtp.cipher", "TLS_AES_256_GCM_SHA384"),
                                 ("smtp.cipher-bits", "256")]),
    ]
    # the comments survive as comments
    assert "(256-bit key)" in value.replace("\n", "")
    assert "(key lookup timeout)" in value.replace("\n", "")


def test_unfolding_gives_back_the_unfolded_text() -> None:
    long_comment = " ".join(f"word{i}" for i in range(25))  # under the 200 cap
    quoted = " ".join(f"q{i}" for i in range(60))
    results = [ResInfo("x-test", "pass", long_comment, (("smtp.x", quoted),))]
    value = render(OURS, results)
    assert_folded_within(value)
    assert_evenly_indented(value)
    assert unfold(value) == f"{OURS}; x-test=pass ({long_comment}) smtp.x=\"{quoted}\""
    # the comment folds; the quoted-string does not (its spaces are part of the value)
    assert f'smtp.x="{quoted}"' in value.split("\n")[-1]
    assert all(len(line) <= 78 for line in (PREFIX + value).split("\n")[:-1])
    assert parsed_entries(value) == [("x-test", "pass", None, [("smtp.x", quoted)])]


def test_every_continuation_line_is_indented_the_same() -> None:
    """Issue 13: results started with LF + TAB but folds inside a result with LF + space, so a
    long DKIM or DMARC entry's second line sat left of the others."""
    results = results_for(realistic_analysis())
    value = render(OURS, results)
    assert any(len(line) > 70 for line in unfold(value).split("; ")), "nothing to fold"
    assert value.count("\n") > len(results), "no result was folded"
    assert_evenly_indented(value)


def test_a_single_long_word_stays_whole() -> None:
    word = "x" * 150
    value = render(OURS, [ResInfo("dkim", "pass", word, (("header.d", "example.com"),))])
    assert f"({word})" in value
    assert_folded_within(value)
    assert parsed_entries(value) == [("dkim", "pass", None, [("header.d", "example.com")])]


HOSTILE_MAIL_FROM = ['"evil;dkim=pass"@example.com', "a(b@example.com",
                     "x\r\nX-Injected: yes@example.com", "caf\u00e9\udcff@example.com",
                     "a\\\"; dkim=pass (@example.com", ";" * 300, "\n\n\n", "(" * 50,
                     "\\" * 9 + " " + '"' * 5]


@pytest.mark.parametrize("mail_from", HOSTILE_MAIL_FROM)
def test_hostile_mail_from_stays_inside_its_value(mail_from: str) -> None:
    analysis = realistic_analysis()
    analysis = Analysis(SpfOutcome(SpfIdentity.MAILFROM, AuthResult.FAIL, mail_from,
                                   "example.com", f"{mail_from} is not allowed"),
                        None, analysis.dkim, analysis.tls)
    results = results_for(analysis)
    value = render(OURS, results)
    assert_one_safe_header(value, len(results))
    assert_folded_within(value)
    entries = parsed_entries(value)
    assert [(m, r) for m, r, _, _ in entries] == [(x.method, x.result) for x in results]
    assert entries[0][3] == [("smtp.mailfrom", re.sub(r"[^\x20-\x7e]", "?", mail_from)[:256])]


TLS_MACROS = [
    TlsInfo(version="TLSv1.3\r\nX-Injected: yes", cipher="a;dkim=pass", cipher_bits=256),
    TlsInfo(version="TLSv1.3", cipher="(x", verify="OK\r\nX-Injected: yes"),
    TlsInfo(version='"; dkim=pass', cipher=")\n\tX-Injected: yes"),
    TlsInfo(version="\u00e9" * 100, cipher=";" * 100, cipher_bits=10**9),
]


@pytest.mark.parametrize("tls", TLS_MACROS)
def test_hostile_tls_macros_through_check_tls(tls: TlsInfo) -> None:
    analysis = realistic_analysis()
    analysis = Analysis(analysis.spf_mailfrom, None, DkimOutcome(), check_tls(tls))
    results = results_for(analysis)
    value = render(OURS, results)
    assert_one_safe_header(value, len(results))
    entries = parsed_entries(value)
    assert [(m, r) for m, r, _, _ in entries] == [
        ("spf", "pass"), ("dkim", "none"), ("x-tls", "pass")]
    for _, pvalue in entries[-1][3]:
        assert re.fullmatch(r"[A-Za-z0-9._+-]+", pvalue)


@pytest.mark.parametrize("tls", TLS_MACROS)
def test_hostile_tls_values_are_safe_even_without_check_tls(tls: TlsInfo) -> None:
    outcome = TlsOutcome(AuthResult.PASS, tls.version or "", tls.cipher or "", None,
                         tls.verify or "")
    analysis = Analysis(realistic_analysis().spf_mailfrom, None, DkimOutcome(), outcome)
    results = results_for(analysis)
    value = render(OURS, results)
    assert_one_safe_header(value, len(results))
    assert [r.method for r in parse(value).results] == ["spf", "dkim", "x-tls"]


def test_hostile_dkim_tags_stay_inside_their_values() -> None:
    sig = DkimSignatureOutcome(AuthResult.PERMERROR, 'ok.example(.evil"; dkim=pass',
                               "s\r\nX-Injected: yes", 'rsa-sha256"', "@x;y", "ab/c;d=",
                               None, "invalid signature: d= value is not valid (b'\\x00(;')")
    analysis = Analysis(realistic_analysis().spf_mailfrom, None, DkimOutcome((sig,)),
                        TlsOutcome(AuthResult.NONE))
    results = results_for(analysis)
    value = render(OURS, results)
    assert_one_safe_header(value, len(results))
    assert [(r.method, r.result) for r in parse(value).results] == [
        ("spf", "pass"), ("dkim", "permerror"), ("x-tls", "none")]


# --- properties (hypothesis) ---------------------------------------------------------------------

ANY_TEXT = st.text(st.characters(codec="utf-8"), max_size=300) | st.text(
    st.sampled_from(list(' ;()"\\\r\n\t@=.x')), max_size=120)
HYPOTHESIS = settings(max_examples=300, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow])


@HYPOTHESIS
@given(ANY_TEXT)
@example("a\\ b")
@example('"')
@example("\\")
def test_quote_value_property(text: str) -> None:
    quoted = quote_value(text)
    assert "\r" not in quoted and "\n" not in quoted
    value = render(OURS, [ResInfo("x-test", "pass", properties=(("smtp.x", text),))])
    assert_one_safe_header(value, 1)
    entries = parsed_entries(value)
    expected = re.sub(r"[^\x20-\x7e]", "?", text)[:256]
    assert entries == [("x-test", "pass", None, [("smtp.x", expected)] if text else [])]


@HYPOTHESIS
@given(ANY_TEXT)
@example("a\\ b")
@example("(")
@example("\\)")
def test_comment_property(text: str) -> None:
    rendered = comment(text)
    assert "\r" not in rendered and "\n" not in rendered
    value = render(OURS, [ResInfo("x-test", "pass", text, (("smtp.x", "y"),))])
    assert_one_safe_header(value, 1)
    assert_folded_within(value)
    assert parsed_entries(value) == [("x-test", "pass", None, [("smtp.x", "y")])]


RESINFO = st.builds(
    ResInfo,
    method=st.sampled_from(["spf", "dkim", "dmarc", "x-tls", "iprev"]),
    result=st.sampled_from([r.value for r in AuthResult]),
    comment=ANY_TEXT,
    properties=st.lists(st.tuples(st.sampled_from(["smtp.mailfrom", "header.d", "header.b",
                                                   "policy.x"]), ANY_TEXT), max_size=4)
    .map(tuple),
    reason=ANY_TEXT,
)


@HYPOTHESIS
@given(st.lists(RESINFO, max_size=6))
def test_render_property(results: list[ResInfo]) -> None:
    value = render(OURS, results)
    assert_one_safe_header(value, len(results))
    assert_folded_within(value)
    parsed = parse(value)
    assert parsed.authserv_id == OURS
    assert [(r.method, r.result) for r in parsed.results] == [
        (r.method, r.result) for r in results]
    # what authres kept of the properties is exactly what we rendered (it drops a quoted value
    # that is not the last property: a bug of authres 1.2.0, see test below)
    for res, got in zip(results, parsed.results, strict=True):
        rendered = {(name, re.sub(r"[^\x20-\x7e]", "?", text)[:256])
                    for name, text in res.properties if text}
        kept = {(f"{p.type}.{p.name}", unquote(p.value)) for p in got.properties}
        assert kept <= rendered
        if res.reason:
            assert unquote(got.reason) == re.sub(r"[^\x20-\x7e]", "?", res.reason)[:256]


def test_authres_drops_a_quoted_property_that_is_not_last() -> None:
    """Known authres 1.2.0 limitation: documents why test_render_property uses ``<=``."""
    value = render(OURS, [ResInfo("dkim", "pass", properties=(("header.d", "a b"),
                                                               ("header.s", "sel")))])
    assert 'header.d="a b" header.s=sel' in value
    assert parsed_entries(value) == [("dkim", "pass", None, [("header.s", "sel")])]


def test_runs_of_spaces_never_make_a_blank_line() -> None:
    for text in ("a" + " " * 150 + "b", " " * 200, "x " + " " * 90 + "y" * 90):
        value = render(OURS, [ResInfo("x-test", "pass", text, (("smtp.x", text),))])
        assert_one_safe_header(value, 1)
        assert_folded_within(value)
        assert parsed_entries(value) == [("x-test", "pass", None, [("smtp.x", text)])]


def test_an_escaped_space_is_never_a_folding_point() -> None:
    from mailsec_milter.authres import _fold

    text = "(" + "y" * 70 + "\\ " + "z" * 10 + " w)"  # the only space within 78 is escaped
    pieces = _fold(text, 78)
    assert " ".join(pieces) == text
    assert all(not piece.endswith("\\") for piece in pieces[:-1])
    assert pieces == ["(" + "y" * 70 + "\\ " + "z" * 10, "w)"]


def test_a_space_inside_a_quoted_string_is_never_a_folding_point() -> None:
    from mailsec_milter.authres import _fold

    text = 'smtp.mailfrom="' + "a " * 50 + '"@example.com (' + "c " * 30 + "end)"
    pieces = _fold(text, 40)
    assert " ".join(pieces) == text
    assert pieces[0] == 'smtp.mailfrom="' + "a " * 50 + '"@example.com'
    assert all(len(piece) <= 40 for piece in pieces[1:])


def test_a_long_quoted_authserv_id_stays_whole_on_the_first_line() -> None:
    authserv_id = " ".join(["relay"] * 20)  # odd, but it is configuration: still a legal value
    value = render(authserv_id, [ResInfo("spf", "pass")])
    assert_folded_within(value)
    assert value.split("\n")[0] == f'"{authserv_id}";'  # its spaces are part of the value
    assert extract_authserv_id(unfold(value)) == authserv_id
    # (authres 1.2.0 reads only a dot-atom authserv-id, not RFC 8601's quoted-string form)
