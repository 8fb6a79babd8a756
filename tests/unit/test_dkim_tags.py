"""Issue 12, items 6-10: DKIM tag lists (RFC 6376 §3.2), what a key record allows (§3.6.1),
q= lists (§3.5) and the one way a header field name is compared — each through check_dkim,
with its control (the one-change variant that was already handled). The same cases through
the daemon: tests/adapter/test_dkim_tags_adapter.py; the generated differential against dkimpy:
tests/unit/test_dkim_tags_differential.py.
"""

from __future__ import annotations

import pytest

from mailsec_milter.checks.arc import _dnsfunc, check_arc
from mailsec_milter.checks.dkim import DkimOutcome, DkimSettings, check_dkim
from mailsec_milter.checks.dkim_tags import (
    KeyRecord,
    key_refusal,
    parse_tag_list,
    query_methods_problem,
    read_key_record,
)
from mailsec_milter.dns import StaticResolver
from mailsec_milter.model import (
    AuthResult,
    Envelope,
    Header,
    MessageSnapshot,
    field_name_is,
    field_name_key,
    parse_message,
)
from tests.support.dkimkeys import (
    KeyPair,
    arc_seal,
    ed25519_key,
    rsa_key,
    sign_with_tags,
    zone_line,
)

MESSAGE = (
    b"From: Joe <joe@example.com>\r\n"
    b"To: Sam <sam@example.net>\r\n"
    b"Subject: tags\r\n"
    b"Message-ID: <tags-1@example.com>\r\n"
    b"\r\n"
    b"Hello.\r\n"
)
KEY = ed25519_key(b"\x0c" * 32)
KEY_NAME = "sel._domainkey.example.com"
BASE_TAGS = [("v", "1"), ("a", "ed25519-sha256"), ("d", "example.com"), ("s", "sel")]


def snapshot_of(raw: bytes) -> MessageSnapshot:
    headers, body = parse_message(raw)
    return MessageSnapshot(Envelope("192.0.2.1"), headers, body)


def verify(raw: bytes, key_record: str, *more_zone: str) -> DkimOutcome:
    resolver = StaticResolver.from_zone_text("\n".join([zone_line(KEY_NAME, key_record),
                                                        *more_zone]))
    return check_dkim(resolver, snapshot_of(raw), DkimSettings())


def result(raw: bytes, key_record: str) -> AuthResult:
    outcome = verify(raw, key_record)
    assert len(outcome.signatures) == 1, outcome
    return outcome.signatures[0].result


def signed(*extra: tuple[str, str], key: KeyPair = KEY) -> bytes:
    return sign_with_tags(MESSAGE, key, [*BASE_TAGS, *extra], ["from", "subject"])


def record(extra: str = "", key: KeyPair = KEY) -> str:
    return key.record(extra)


# --- item 6: s= is a list of service types ----------------------------------------------------

@pytest.mark.parametrize("services", ["email:tlsrpt", "tlsrpt:email", "tlsrpt : email",
                                      "x-other:*", "EMAIL"])
def test_key_for_several_services_including_email_passes(services: str) -> None:
    assert result(signed(), record(f"s={services}")) is AuthResult.PASS


def test_control_key_for_email_alone_passes() -> None:
    assert result(signed(), record("s=email")) is AuthResult.PASS


@pytest.mark.parametrize("services", ["tlsrpt", "tlsrpt:x-other", ""])
def test_key_for_other_services_only_is_refused_with_its_reason(services: str) -> None:
    outcome = verify(signed(), record(f"s={services}"))
    assert outcome.signatures[0].result is AuthResult.PERMERROR
    assert "not for email" in outcome.signatures[0].comment


# --- item 7: q= is a list of query methods ------------------------------------------------------

@pytest.mark.parametrize("methods", ["dns/txt:x-other", "x-other:dns/txt", "x-other/a:dns/txt",
                                     "dns/txt : x-other"])
def test_unknown_query_methods_beside_dns_txt_are_ignored(methods: str) -> None:
    assert result(signed(("q", methods)), record()) is AuthResult.PASS


def test_control_q_dns_txt_alone_passes() -> None:
    assert result(signed(("q", "dns/txt")), record()) is AuthResult.PASS


def test_q_without_dns_txt_is_permerror() -> None:
    outcome = verify(signed(("q", "x-other")), record())
    assert outcome.signatures[0].result is AuthResult.PERMERROR
    assert "dns/txt" in outcome.signatures[0].comment


# --- item 8: tag names are case-sensitive -------------------------------------------------------

@pytest.mark.parametrize("extension", [("D", "other.example"), ("S", "x"), ("A", "rsa-sha1"),
                                       ("B", "AAAA"), ("Q", "x-other")])
def test_upper_case_extension_tag_beside_its_lower_case_namesake_passes(
        extension: tuple[str, str]) -> None:
    assert result(signed(extension), record()) is AuthResult.PASS


def test_control_signature_without_the_extension_tag_passes() -> None:
    assert result(signed(), record()) is AuthResult.PASS


def test_upper_case_tags_reported_are_the_lower_case_ones() -> None:
    outcome = verify(signed(("D", "other.example")), record())
    assert outcome.signatures[0].domain == "example.com"


def test_a_true_duplicate_tag_is_still_permerror() -> None:
    assert result(signed(("d", "example.com")), record()) is AuthResult.PERMERROR


@pytest.mark.parametrize("extension", ["P=AAAA", "K=rsa", "S=tlsrpt", "V=DKIM2", "H=sha1"])
def test_upper_case_tag_in_a_key_record_is_an_unknown_tag(extension: str) -> None:
    assert result(signed(), record(extension)) is AuthResult.PASS


def test_duplicate_tag_in_a_key_record_is_permerror() -> None:
    outcome = verify(signed(), record("k=ed25519"))
    assert outcome.signatures[0].result is AuthResult.PERMERROR
    assert "malformed key record" in outcome.signatures[0].comment


# --- item 9: a key's restrictions are never dropped ---------------------------------------------

SUBDOMAIN_IDENTITY = ("i", "joe@sub.example.com")


@pytest.mark.parametrize("odd", ["T=y", "x-foo=bar", "X-Y=z", "a.b=c", "t_2=x", "Z9=1"])
def test_t_s_is_enforced_beside_an_odd_tag(odd: str) -> None:
    outcome = verify(signed(SUBDOMAIN_IDENTITY), record(f"t=s; {odd}"))
    assert outcome.signatures[0].result is AuthResult.PERMERROR
    assert "t=s" in outcome.signatures[0].comment


def test_control_t_s_alone_is_enforced_and_a_same_domain_identity_passes() -> None:
    assert result(signed(SUBDOMAIN_IDENTITY), record("t=s")) is AuthResult.PERMERROR
    assert result(signed(SUBDOMAIN_IDENTITY), record("T=y")) is AuthResult.PASS
    assert result(signed(("i", "joe@example.com")), record("t=s; T=y")) is AuthResult.PASS


@pytest.mark.parametrize("odd", ["T=y", "x-foo=bar", "H=sha256"])
def test_h_is_enforced_beside_an_odd_tag(odd: str) -> None:
    outcome = verify(signed(), record(f"h=sha1; {odd}"))
    assert outcome.signatures[0].result is AuthResult.PERMERROR
    assert "h=" in outcome.signatures[0].comment


def test_control_h_listing_the_hash_passes() -> None:
    assert result(signed(), record("h=sha1:sha256; T=y")) is AuthResult.PASS


def test_s_and_k_are_enforced_beside_an_odd_tag() -> None:
    outcome = verify(signed(), record("s=tlsrpt; S=email; x-a=b"))
    assert outcome.signatures[0].result is AuthResult.PERMERROR
    rsa = rsa_key(1024)
    # an ed25519 signature against an RSA key: k= (default rsa) is read despite K=ed25519
    rsa_record = f"v=DKIM1; p={rsa.public_b64}; K=ed25519; x-k=ed25519"
    assert result(signed(), rsa_record) is AuthResult.PERMERROR


@pytest.mark.parametrize("broken", ["t=s; garbage", "t=s;; k=ed25519", "t=s; 1x=2", "t s=y",
                                    "t=s; =x", "t=s; t=y"])
def test_a_key_record_we_cannot_read_is_no_key_never_a_key_without_restrictions(
        broken: str) -> None:
    outcome = verify(signed(SUBDOMAIN_IDENTITY), record(broken))
    assert outcome.signatures[0].result is AuthResult.PERMERROR
    assert "malformed key record" in outcome.signatures[0].comment


def test_key_record_v_must_be_dkim1_wherever_it_stands() -> None:
    assert result(signed(), f"k=ed25519; p={KEY.public_b64}; v=DKIM2") is AuthResult.PERMERROR
    assert result(signed(), f"k=ed25519; p={KEY.public_b64}; v=DKIM1") is AuthResult.PASS


# --- item 10: one comparison of field names ----------------------------------------------------

VICTIM_KEY = "sel._domainkey.victim.example"
KELVIN = "D\u212aIM-Signature"  # "\u212a".lower() == "k"


def _kelvin_attack() -> tuple[MessageSnapshot, str]:
    """A message signed (validly) for example.com, plus a field named with a Kelvin sign that
    holds the same signature with d=victim.example. The victim's key record happens to hold the
    same public key (a selector shared through an ESP): before the fix the Kelvin field's d=
    and key were paired with the real field's signature, and victim.example passed."""
    raw = signed()
    headers, body = parse_message(raw)
    real = headers[0]
    assert real.is_named("DKIM-Signature")
    forged = Header(KELVIN, real.raw_value.replace(b"d=example.com", b"d=victim.example"))
    zone = "\n".join([zone_line(KEY_NAME, record()), zone_line(VICTIM_KEY, record())])
    return MessageSnapshot(Envelope("192.0.2.1"), (forged, *headers), body), zone


def test_a_kelvin_sign_field_is_not_a_signature_and_lends_nothing() -> None:
    snapshot, zone = _kelvin_attack()
    outcome = check_dkim(StaticResolver.from_zone_text(zone), snapshot, DkimSettings())
    assert [(s.domain, s.result) for s in outcome.signatures] == [
        ("example.com", AuthResult.PASS)]


def test_control_the_same_field_named_in_ascii_is_its_own_signature() -> None:
    snapshot, zone = _kelvin_attack()
    ascii_named = Header("dkim-SIGNATURE", snapshot.headers[0].raw_value)
    snapshot = MessageSnapshot(snapshot.envelope, (ascii_named, *snapshot.headers[1:]),
                               snapshot.body)
    outcome = check_dkim(StaticResolver.from_zone_text(zone), snapshot, DkimSettings())
    # the victim.example field is checked against its own bytes: d= was changed, so it fails
    assert [(s.domain, s.result) for s in outcome.signatures] == [
        ("victim.example", AuthResult.FAIL), ("example.com", AuthResult.PASS)]


@pytest.mark.parametrize(("name", "expected"), [
    ("DKIM-Signature", True), ("dkim-signature", True), ("DKIM-SIGNATURE ", True),
    (" DKIM-Signature\t", True), (KELVIN, False), ("DKIM-Signature\u200b", False),
    ("DKIM-Signatur\udce9", False), ("DKIM_Signature", False),
])
def test_field_name_is_ascii_case_insensitive_only(name: str, expected: bool) -> None:
    assert field_name_is(name, "DKIM-Signature") is expected
    assert (field_name_key(name) == "dkim-signature") is expected
    assert Header(name, b"").is_named("dkim-signature") is expected
    assert bool(MessageSnapshot(Envelope(None), (Header(name, b""),))
                .headers_named("DKIM-Signature")) is expected


# --- the parser and the key reader on their own --------------------------------------------------

def test_parse_tag_list_names_and_values() -> None:
    tags = parse_tag_list(b" v=1; D = x ;\r\n\td=Example.COM.; x-foo=1; X-foo=2; b=ab\r\n cd;")
    assert tags == {"v": b"1", "D": b"x", "d": b"Example.COM.", "b": b"ab\r\n cd"}
    assert parse_tag_list(b"") == {}
    for invalid in (b"a=1; a=2", b"x-a=1; x-a=2", b"a=1;;b=2", b"a", b"1a=2", b"a b=1", b"=1",
                    b";", b"a=1; ;", b"\xc3\xa4=1"):
        assert parse_tag_list(invalid) is None, invalid


def test_read_key_record_defaults_and_refusals() -> None:
    key = read_key_record(b"p=AAAA")
    assert key == KeyRecord("rsa", b"AAAA", frozenset({"*"}), None, frozenset())
    assert key.for_dkimpy() == b"k=rsa; p=AAAA"
    assert read_key_record(b"k=ED25519; p=AAAA; s=Email : TLSRPT; h=SHA256; t=Y:s") == KeyRecord(
        "ed25519", b"AAAA", frozenset({"email", "tlsrpt"}), frozenset({"sha256"}),
        frozenset({"y", "s"}))
    assert read_key_record(b"v=DKIM1; p=") == "key revoked"
    assert read_key_record(b"v=DKIM1") == "key record has no p="
    assert read_key_record(b"k=dsa; p=AAAA") == "unknown key type k=dsa"
    assert read_key_record(b"p=AAAA; s=tlsrpt") == "key is not for email (s=tlsrpt)"


def test_key_refusal_and_query_methods() -> None:
    key = read_key_record(b"p=AAAA; h=sha1; t=s")
    assert isinstance(key, KeyRecord)
    assert "h=" in key_refusal(key, "rsa-sha256", None)
    assert key_refusal(key, "rsa-sha1", None) == ""
    assert "t=s" in key_refusal(key, "rsa-sha1", {b"d": b"a.example", b"i": b"@b.a.example"})
    assert key_refusal(key, "rsa-sha1", {b"d": b"A.example", b"i": b"x@a.EXAMPLE."}) == ""
    assert query_methods_problem({}) == ""
    assert query_methods_problem({"q": b"DNS/TXT:foo"}) == ""
    assert query_methods_problem({"q": b"foo"}) != ""


# --- siblings: ARC reads key records the same way ------------------------------------------------

SEALER = "sealer.example"
ARC_KEY_NAME = f"arc._domainkey.{SEALER}"


@pytest.fixture(scope="module")
def arc_rsa() -> KeyPair:
    return rsa_key(1024)


def _arc_result(key: KeyPair, key_record: str) -> AuthResult:
    sealed = snapshot_of(arc_seal(MESSAGE, key, "arc", SEALER, "dmarc=pass header.from=x"))
    resolver = StaticResolver.from_zone_text(zone_line(ARC_KEY_NAME, key_record))
    return check_arc(resolver, sealed).result


@pytest.mark.parametrize("extra", ["s=email:tlsrpt", "T=y; t=y", "x-foo=1", "h=sha256"])
def test_arc_key_with_a_service_list_or_odd_tags_passes(arc_rsa: KeyPair, extra: str) -> None:
    assert _arc_result(arc_rsa, arc_rsa.record(extra)) is AuthResult.PASS


def test_control_arc_key_plain_passes_and_restrictions_hold(arc_rsa: KeyPair) -> None:
    assert _arc_result(arc_rsa, arc_rsa.record()) is AuthResult.PASS
    assert _arc_result(arc_rsa, arc_rsa.record("s=tlsrpt")) is AuthResult.FAIL
    assert _arc_result(arc_rsa, arc_rsa.record("h=sha1; T=y")) is AuthResult.FAIL
    resolver = StaticResolver.from_zone_text(zone_line(ARC_KEY_NAME, arc_rsa.record("t=s; ;")))
    assert _dnsfunc(resolver)(ARC_KEY_NAME.encode()) is None
