"""check_dkim: RFC 6376 verification, RFC 8301 hardening and dkimpy's lossy answers mapped to
RFC 8601 results. Keys come from tests/support/dkimkeys.py; DNS is a StaticResolver."""

from __future__ import annotations

import dkim
import pytest

from mailsec_milter.checks.dkim import (
    DkimOutcome,
    DkimSettings,
    DkimSignatureOutcome,
    check_dkim,
    key_name,
    parse_tag_list,
)
from mailsec_milter.dns import StaticResolver
from mailsec_milter.model import AuthResult, Envelope, Header, MessageSnapshot, parse_message
from tests.support.dkimkeys import (
    KeyPair,
    ed25519_key,
    rsa_key,
    sign,
    sign_with_tags,
    zone_line,
)

MESSAGE = (
    b"From: Joe SixPack <joe@example.com>\r\n"
    b"To: Suzie Q <suzie@example.net>\r\n"
    b"Subject: Is dinner ready?\r\n"
    b"Date: Fri, 11 Jul 2003 21:00:37 -0700\r\n"
    b"Message-ID: <20030712040037.46341.5F8J@example.com>\r\n"
    b"\r\n"
    b"Hi.\r\n"
    b"\r\n"
    b"We lost the game. Are you hungry yet?\r\n"
)
KEY_NAME = "sel._domainkey.example.com"


def snapshot_of(raw: bytes) -> MessageSnapshot:
    headers, body = parse_message(raw)
    return MessageSnapshot(Envelope("192.0.2.1"), headers, body)


def run(raw: bytes, zone: str, **settings: object) -> DkimOutcome:
    resolver = StaticResolver.from_zone_text(zone)
    return check_dkim(resolver, snapshot_of(raw), DkimSettings(**settings))  # type: ignore[arg-type]


def only(outcome: DkimOutcome) -> DkimSignatureOutcome:
    assert len(outcome.signatures) == 1, outcome
    return outcome.signatures[0]


def key_zone(key: KeyPair, extra: str = "", name: str = KEY_NAME) -> str:
    return zone_line(name, key.record(extra))


@pytest.fixture(scope="module")
def rsa() -> KeyPair:
    return rsa_key(2048)


@pytest.fixture(scope="module")
def ed() -> KeyPair:
    return ed25519_key()


# --- passing signatures ------------------------------------------------------------------------

def test_rsa_sha256_passes_and_reports_the_signature(rsa: KeyPair) -> None:
    zone = key_zone(rsa)
    assert zone.count('" "') >= 1, "a 2048-bit key record must be split into 255-byte strings"
    resolver = StaticResolver.from_zone_text(zone)
    outcome = check_dkim(resolver, snapshot_of(sign(MESSAGE, rsa)), DkimSettings())
    sig = only(outcome)
    assert sig.result is AuthResult.PASS
    assert outcome.result is AuthResult.PASS
    assert (sig.domain, sig.selector, sig.algorithm, sig.identity) == (
        "example.com", "sel", "rsa-sha256", "@example.com")
    assert sig.key_bits == 2048
    assert len(sig.b_prefix) == 12
    assert resolver.queries == [(KEY_NAME, "TXT")]


def test_ed25519_sha256_passes(ed: KeyPair) -> None:
    sig = only(run(sign(MESSAGE, ed), key_zone(ed)))
    assert sig.result is AuthResult.PASS
    assert sig.algorithm == "ed25519-sha256"
    assert sig.key_bits == 256


def test_rsa_key_in_pkcs1_form_is_accepted(rsa: KeyPair) -> None:
    # RFC 6376 3.6.1 says SubjectPublicKeyInfo; a bare RSAPublicKey is common in the wild and
    # dkimpy accepts it: it is the same key, so the result must not depend on the wrapping.
    import base64

    spki = base64.b64decode(rsa.public_b64)
    pkcs1 = spki[24:]  # the BIT STRING content of a 2048-bit SPKI is the RSAPublicKey
    assert pkcs1[:1] == b"\x30"
    zone = zone_line(KEY_NAME, "v=DKIM1; k=rsa; p=" + base64.b64encode(pkcs1).decode())
    assert only(run(sign(MESSAGE, rsa), zone)).result is AuthResult.PASS


# --- RFC 8301 ------------------------------------------------------------------------------------

def test_rsa_sha1_is_policy_although_the_signature_verifies(rsa: KeyPair) -> None:
    signed = sign(MESSAGE, rsa, algorithm="rsa-sha1")
    zone = key_zone(rsa)
    # dkimpy itself says the rsa-sha1 signature is valid (LIBRARY-NOTES), so policy is our doing.
    assert dkim.DKIM(signed).verify(dnsfunc=lambda name, timeout=5: rsa.record().encode())
    sig = only(run(signed, zone))
    assert sig.result is AuthResult.POLICY
    assert "RFC 8301" in sig.comment
    assert "rsa-sha1" in sig.comment


def test_rsa_sha1_forgery_is_fail_not_policy(rsa: KeyPair) -> None:
    signed = sign(MESSAGE, rsa, algorithm="rsa-sha1").replace(b"Subject: Is", b"Subject: IS")
    assert only(run(signed, key_zone(rsa))).result is AuthResult.FAIL


@pytest.mark.parametrize("bits", [512, 768])
def test_short_rsa_key_is_policy_with_its_size(bits: int) -> None:
    key = rsa_key(bits)
    sig = only(run(sign(MESSAGE, key), key_zone(key)))
    assert sig.result is AuthResult.POLICY
    assert str(bits) in sig.comment
    assert "RFC 8301" in sig.comment
    assert sig.key_bits == bits


def test_1024_bit_rsa_key_is_the_minimum_that_passes() -> None:
    key = rsa_key(1024)
    assert only(run(sign(MESSAGE, key), key_zone(key))).result is AuthResult.PASS


# --- key problems --------------------------------------------------------------------------------

@pytest.mark.parametrize("failure", ["TIMEOUT", "SERVFAIL"])
def test_temporary_dns_failure_on_the_key_is_temperror(rsa: KeyPair, failure: str) -> None:
    outcome = run(sign(MESSAGE, rsa), f"{KEY_NAME}. TXT {failure}")
    sig = only(outcome)
    assert sig.result is AuthResult.TEMPERROR
    assert failure.lower() in sig.comment
    assert outcome.result is AuthResult.TEMPERROR


def test_missing_key_is_permerror(rsa: KeyPair) -> None:
    sig = only(run(sign(MESSAGE, rsa), 'other._domainkey.example.com. TXT "v=DKIM1; p=AAAA"'))
    assert sig.result is AuthResult.PERMERROR
    assert "no key" in sig.comment


def test_nodata_key_is_permerror(rsa: KeyPair) -> None:
    sig = only(run(sign(MESSAGE, rsa), f"{KEY_NAME}. A 192.0.2.1"))
    assert sig.result is AuthResult.PERMERROR


def test_revoked_key_is_permerror(rsa: KeyPair) -> None:
    sig = only(run(sign(MESSAGE, rsa), zone_line(KEY_NAME, "v=DKIM1; k=rsa; p=")))
    assert sig.result is AuthResult.PERMERROR
    assert "revoked" in sig.comment


@pytest.mark.parametrize("record", [
    "v=DKIM1; k=rsa; p=garbage!!",
    "v=DKIM1; k=rsa; p=AAAA",
    "v=DKIM1; k=rsa",
    "v=DKIM2; k=rsa; p=AAAA",
    "this is not a key record",
    "v=DKIM1; k=rsa; k=rsa; p=AAAA",
    "v=DKIM1; k=dsa; p=AAAA",
    "",
])
def test_garbage_key_is_permerror(rsa: KeyPair, record: str) -> None:
    sig = only(run(sign(MESSAGE, rsa), zone_line(KEY_NAME, record)))
    assert sig.result is AuthResult.PERMERROR


def test_ed25519_key_for_an_rsa_signature_is_permerror(rsa: KeyPair, ed: KeyPair) -> None:
    sig = only(run(sign(MESSAGE, rsa), key_zone(ed)))
    assert sig.result is AuthResult.PERMERROR
    assert "k=" in sig.comment or "type" in sig.comment


def test_rsa_key_for_an_ed25519_signature_is_permerror(rsa: KeyPair, ed: KeyPair) -> None:
    assert only(run(sign(MESSAGE, ed), key_zone(rsa))).result is AuthResult.PERMERROR


def test_other_key_of_the_right_type_is_fail(ed: KeyPair) -> None:
    other = ed25519_key(b"\x01" * 32)
    assert only(run(sign(MESSAGE, ed), key_zone(other))).result is AuthResult.FAIL


def test_key_h_tag_restricts_the_hash(rsa: KeyPair) -> None:
    signed = sign(MESSAGE, rsa)
    assert only(run(signed, key_zone(rsa, "h=sha1"))).result is AuthResult.PERMERROR
    assert only(run(signed, key_zone(rsa, "h=sha1:sha256"))).result is AuthResult.PASS


def test_key_t_s_forbids_an_identity_in_a_subdomain(ed: KeyPair) -> None:
    tags = [("v", "1"), ("a", "ed25519-sha256"), ("d", "example.com"), ("s", "sel"),
            ("i", "joe@sub.example.com")]
    signed = sign_with_tags(MESSAGE, ed, tags, ["from", "subject"])
    assert only(run(signed, key_zone(ed))).result is AuthResult.PASS
    assert only(run(signed, key_zone(ed, "t=s"))).result is AuthResult.PERMERROR


def test_key_for_another_service_type_is_permerror(rsa: KeyPair) -> None:
    signed = sign(MESSAGE, rsa)
    assert only(run(signed, key_zone(rsa, "s=tlsrpt"))).result is AuthResult.PERMERROR
    ftp = only(run(signed, key_zone(rsa, "s=ftp")))
    assert ftp.result is AuthResult.PERMERROR
    assert "s=" in ftp.comment
    assert only(run(signed, key_zone(rsa, "s=email"))).result is AuthResult.PASS


# --- modified messages ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_modified_body_fails(kind: str) -> None:
    key = rsa_key(2048) if kind == "rsa" else ed25519_key()
    signed = sign(MESSAGE, key).replace(b"hungry", b"Hungry")
    sig = only(run(signed, key_zone(key)))
    assert sig.result is AuthResult.FAIL
    assert "body" in sig.comment


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_modified_signed_header_fails(kind: str) -> None:
    key = rsa_key(2048) if kind == "rsa" else ed25519_key()
    signed = sign(MESSAGE, key).replace(b"Subject: Is dinner", b"Subject: Is winner")
    assert only(run(signed, key_zone(key))).result is AuthResult.FAIL


def test_added_second_from_header_fails(rsa: KeyPair) -> None:
    signed = sign(MESSAGE, rsa) + b""
    head, _, body = signed.partition(b"\r\n\r\n")
    forged = head + b"\r\nFrom: ceo@example.com\r\n\r\n" + body
    assert only(run(forged, key_zone(rsa))).result is AuthResult.FAIL


def test_unsigned_header_may_change(rsa: KeyPair) -> None:
    signed = sign(MESSAGE, rsa, include_headers=["from", "subject"])
    changed = signed.replace(b"To: Suzie Q", b"To: Mallory")
    assert only(run(changed, key_zone(rsa))).result is AuthResult.PASS


def test_from_not_in_h_is_permerror_even_when_the_crypto_holds(ed: KeyPair) -> None:
    tags = [("v", "1"), ("a", "ed25519-sha256"), ("d", "example.com"), ("s", "sel")]
    signed = sign_with_tags(MESSAGE, ed, tags, ["subject", "date"])
    # dkimpy alone accepts it: the RFC 6376 5.4 rule is ours.
    assert dkim.DKIM(signed).verify(dnsfunc=lambda name, timeout=5: ed.record().encode())
    sig = only(run(signed, key_zone(ed)))
    assert sig.result is AuthResult.PERMERROR
    assert "From" in sig.comment


# --- l= ------------------------------------------------------------------------------------------

def test_l_equal_to_the_body_passes(rsa: KeyPair) -> None:
    signed = sign(MESSAGE, rsa, length=True)
    assert b"l=" in signed.partition(b"\r\nFrom:")[0]
    assert only(run(signed, key_zone(rsa))).result is AuthResult.PASS


def test_l_with_appended_body_is_policy_by_default(rsa: KeyPair) -> None:
    signed = sign(MESSAGE, rsa, length=True) + b"Click here: http://evil.example/\r\n"
    sig = only(run(signed, key_zone(rsa)))
    assert sig.result is AuthResult.POLICY
    assert "l=" in sig.comment
    assert "unsigned" in sig.comment


def test_l_with_appended_body_passes_when_allowed(rsa: KeyPair) -> None:
    signed = sign(MESSAGE, rsa, length=True) + b"Click here: http://evil.example/\r\n"
    sig = only(run(signed, key_zone(rsa), allow_partial_body=True))
    assert sig.result is AuthResult.PASS


def test_l_with_simple_body_and_appended_blank_lines_passes(rsa: KeyPair) -> None:
    # simple body canonicalisation drops trailing empty lines, so nothing unsigned is added
    signed = sign(MESSAGE, rsa, length=True, canonicalize=(b"simple", b"simple"))
    assert only(run(signed + b"\r\n\r\n", key_zone(rsa))).result is AuthResult.PASS


def test_l_with_modified_signed_part_fails(rsa: KeyPair) -> None:
    signed = sign(MESSAGE, rsa, length=True).replace(b"hungry", b"angry!")
    assert only(run(signed, key_zone(rsa), allow_partial_body=True)).result is AuthResult.FAIL


# --- several signatures --------------------------------------------------------------------------

def _three_signatures() -> tuple[bytes, str]:
    good, bad, slow = rsa_key(2048), ed25519_key(), ed25519_key(b"\x02" * 32)
    signed = sign(MESSAGE, good, "good")          # ends up third
    signed = sign(signed, bad, "bad")             # second
    signed = sign(signed, slow, "slow")           # first
    zone = "\n".join([
        zone_line("good._domainkey.example.com", good.record()),
        zone_line("bad._domainkey.example.com", ed25519_key(b"\x03" * 32).record()),
        "slow._domainkey.example.com. TXT TIMEOUT",
    ])
    return signed, zone


def test_three_signatures_are_each_reported_in_header_order() -> None:
    signed, zone = _three_signatures()
    outcome = run(signed, zone)
    assert [(s.selector, s.result) for s in outcome.signatures] == [
        ("slow", AuthResult.TEMPERROR), ("bad", AuthResult.FAIL), ("good", AuthResult.PASS)]
    assert outcome.result is AuthResult.PASS
    assert outcome.skipped == 0


def test_max_signatures_caps_the_work_and_counts_the_rest() -> None:
    signed, zone = _three_signatures()
    resolver = StaticResolver.from_zone_text(zone)
    outcome = check_dkim(resolver, snapshot_of(signed), DkimSettings(max_signatures=2))
    assert [s.selector for s in outcome.signatures] == ["slow", "bad"]
    assert outcome.skipped == 1
    assert outcome.result is AuthResult.TEMPERROR  # the passing one was never looked at
    assert ("good._domainkey.example.com", "TXT") not in resolver.queries


def test_max_signatures_zero_evaluates_nothing() -> None:
    signed, zone = _three_signatures()
    outcome = run(signed, zone, max_signatures=0)
    assert outcome.signatures == ()
    assert outcome.skipped == 3


@pytest.mark.parametrize(("results", "expected"), [
    ((), AuthResult.NONE),
    ((AuthResult.FAIL, AuthResult.PASS, AuthResult.TEMPERROR), AuthResult.PASS),
    ((AuthResult.FAIL, AuthResult.TEMPERROR), AuthResult.TEMPERROR),
    ((AuthResult.PERMERROR, AuthResult.FAIL), AuthResult.FAIL),
    ((AuthResult.PERMERROR, AuthResult.POLICY), AuthResult.POLICY),
    ((AuthResult.PERMERROR,), AuthResult.PERMERROR),
])
def test_outcome_result_aggregation(results: tuple[AuthResult, ...],
                                    expected: AuthResult) -> None:
    outcome = DkimOutcome(tuple(DkimSignatureOutcome(r) for r in results))
    assert outcome.result is expected


def test_unsigned_message_is_none() -> None:
    resolver = StaticResolver()
    outcome = check_dkim(resolver, snapshot_of(MESSAGE), DkimSettings())
    assert outcome.result is AuthResult.NONE
    assert resolver.queries == []


# --- malformed signatures ------------------------------------------------------------------------

GOOD_TAGS = "v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=sel; h=from:subject"
MALFORMED = {
    "no tag list": b"this is not a tag list",
    "empty": b"",
    "duplicate tags": f"{GOOD_TAGS}; s=other; bh=AAAA; b=AAAA".encode(),
    "missing b=": f"{GOOD_TAGS}; bh=AAAA".encode(),
    "missing bh=": f"{GOOD_TAGS}; b=AAAA".encode(),
    "missing d=": b"v=1; a=rsa-sha256; s=sel; h=from; bh=AAAA; b=AAAA",
    "bad base64 b=": f"{GOOD_TAGS}; bh=AAAA; b=!!!*".encode(),
    "b= not a multiple of 4": f"{GOOD_TAGS}; bh=AAAA; b=AAA".encode(),
    "bad base64 bh=": f"{GOOD_TAGS}; bh=A!A=; b=AAAA".encode(),
    "unknown algorithm": b"v=1; a=rsa-md5; d=example.com; s=sel; h=from; bh=AAAA; b=AAAA",
    "bad version": b"v=2; a=rsa-sha256; d=example.com; s=sel; h=from; bh=AAAA; b=AAAA",
    "i= not under d=": f"{GOOD_TAGS}; i=@evil.example; bh=AAAA; b=AAAA".encode(),
    "i= equal to d= without @": f"{GOOD_TAGS}; i=example.com; bh=AAAA; b=AAAA".encode(),
    "bad c=": b"v=1; a=rsa-sha256; c=odd; d=example.com; s=sel; h=from; bh=AAAA; b=AAAA",
    "empty l=": f"{GOOD_TAGS}; l=; bh=AAAA; b=AAAA".encode(),
    "expired": f"{GOOD_TAGS}; x=1; bh=AAAA; b=AAAA".encode(),
    "t= in the future": f"{GOOD_TAGS}; t=99999999999; bh=AAAA; b=AAAA".encode(),
    "q= not dns/txt": f"{GOOD_TAGS}; q=http; bh=AAAA; b=AAAA".encode(),
    "d= with specials": b"v=1; a=rsa-sha256; d=ok.example(.evil; s=sel; h=from; bh=AAAA; b=AAAA",
    "non-ASCII d=": "v=1; a=rsa-sha256; d=ex\u00e4mple.com; s=sel; h=from; bh=AAAA; b=AAAA"
                    .encode(),
    "binary junk": b"\xff\xfe\x00; v=1",
}


@pytest.mark.parametrize("value", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_signature_is_permerror_without_exception(rsa: KeyPair, value: bytes) -> None:
    raw = b"DKIM-Signature: " + value + b"\r\n" + MESSAGE
    outcome = run(raw, key_zone(rsa))
    assert [s.result for s in outcome.signatures] == [AuthResult.PERMERROR]
    assert outcome.signatures[0].comment


def test_malformed_signature_does_not_spoil_a_good_one(rsa: KeyPair) -> None:
    signed = sign(MESSAGE, rsa)
    broken = f"DKIM-Signature: {GOOD_TAGS}; i=example.com; bh=AAAA; b=AAAA\r\n".encode()
    outcome = run(broken + signed, key_zone(rsa))
    assert [s.result for s in outcome.signatures] == [AuthResult.PERMERROR, AuthResult.PASS]
    assert outcome.result is AuthResult.PASS


def test_odd_header_name_does_not_spoil_a_good_signature(rsa: KeyPair) -> None:
    # dkimpy's own message parser refuses a field name with a space in it, and with it every
    # signature on the message; the snapshot is what we verify, field by field.
    headers, body = parse_message(sign(MESSAGE, rsa))
    snapshot = MessageSnapshot(Envelope("192.0.2.1"),
                               (*headers, Header("X Odd Name", b" value")), body)
    resolver = StaticResolver.from_zone_text(key_zone(rsa))
    assert only(check_dkim(resolver, snapshot, DkimSettings())).result is AuthResult.PASS


def test_parse_tag_list_and_key_name() -> None:
    tags = parse_tag_list(b" v=1; a = rsa-sha256 ;\r\n\td=Example.COM.; s=Sel; b=ab\r\n cd;")
    assert tags is not None
    assert tags["b"] == b"ab\r\n cd"  # stripped only, as dkimpy holds values
    assert key_name(tags) == "sel._domainkey.example.com"
    assert parse_tag_list(b"v=1; v=1") is None
    assert parse_tag_list(b"garbage") is None
    assert key_name({"s": b"a b", "d": b"example.com"}) is None
    assert key_name({"d": b"example.com"}) is None


# --- byte-exactness (c=simple) ---------------------------------------------------------------

FOLDED = (
    b"From: Joe SixPack\r\n  <joe@example.com>\r\n"
    b"To: Suzie Q <suzie@example.net>,\r\n\tBob <bob@example.net>  \r\n"
    b"Subject:   Is dinner\r\n ready?  \r\n"
    b"Date: Fri, 11 Jul 2003 21:00:37 -0700\r\n"
    b"\r\n"
    b"Hi.  \r\n\r\n"
)


def test_simple_canonicalisation_sees_folded_headers_byte_exactly(rsa: KeyPair) -> None:
    signed = sign(FOLDED, rsa, include_headers=["from", "to", "subject", "date"],
                  canonicalize=(b"simple", b"simple"))
    headers, _ = parse_message(signed)
    subject = next(h for h in headers if h.name == "Subject")
    assert subject.raw_value == b"   Is dinner\r\n ready?  "
    assert only(run(signed, key_zone(rsa))).result is AuthResult.PASS


def test_simple_canonicalisation_notices_refolding(rsa: KeyPair) -> None:
    signed = sign(FOLDED, rsa, include_headers=["from", "to", "subject", "date"],
                  canonicalize=(b"simple", b"simple"))
    refolded = signed.replace(b"\r\n\tBob", b"\r\n Bob")
    assert only(run(refolded, key_zone(rsa))).result is AuthResult.FAIL
    relaxed = sign(FOLDED, rsa, include_headers=["from", "to", "subject", "date"],
                   canonicalize=(b"relaxed", b"relaxed"))
    assert only(run(relaxed.replace(b"\r\n\tBob", b"\r\n Bob"), key_zone(rsa))).result \
        is AuthResult.PASS


def test_bare_lf_message_verifies_like_crlf(rsa: KeyPair) -> None:
    signed = sign(FOLDED, rsa, canonicalize=(b"simple", b"simple"))
    assert only(run(signed.replace(b"\r\n", b"\n"), key_zone(rsa))).result is AuthResult.PASS
