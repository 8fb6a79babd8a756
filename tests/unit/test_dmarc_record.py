"""parse_record: the three outcomes (not a DMARC record / invalid / valid) and RFC 9989 §4.7,
§4.8 and §4.10.1 rules, plus the RFC 7489 tag set."""

from __future__ import annotations

import pytest

from mailsec_milter.checks.dmarc import (
    Alignment,
    Policy,
    RecordStatus,
    parse_record,
)

NOT_DMARC = RecordStatus.NOT_DMARC
INVALID = RecordStatus.INVALID
VALID = RecordStatus.VALID


@pytest.mark.parametrize(
    ("text", "status", "why"),
    [
        ("v=DMARC1; p=reject", VALID, "§4.7 minimal record"),
        ("v=DMARC1;p=reject", VALID, "§4.8 dmarc-sep: *WSP is optional"),
        ("  v = DMARC1 ;  p = quarantine ;  ", VALID, "§4.8 *WSP around = and ;"),
        ("V=DMARC1; P=Reject", VALID, "tag names and ABNF literals are case-insensitive"),
        ("v=DMARC1; p=none; foo=bar; x=;", VALID, "§4.7 unknown tags MUST be ignored"),
        ("v=DMARC1; p=none; garbage", VALID, "§4.8 syntax errors are ignored outright"),
        ("v=DMARC1; p=reject; adkim=x; aspf=y; t=q; psd=z", VALID, "§4.8 bad values → defaults"),
        ("v=DMARC1; rua=mailto:a@example.com", VALID, "§4.10.1 no p but rua → p=none"),
        ("", NOT_DMARC, "empty"),
        ("v=spf1 -all", NOT_DMARC, "another record type"),
        ("p=reject; v=DMARC1", NOT_DMARC, "§4.7 v MUST be the first tag"),
        ("v=dmarc1; p=reject", NOT_DMARC, "§4.7 v value is case sensitive"),
        ("v=DMARC2; p=reject", NOT_DMARC, "only DMARC1"),
        ("v=DMARC1p=reject", NOT_DMARC, "no separator: the version value is not DMARC1"),
        ("xv=DMARC1; p=reject", NOT_DMARC, "tag name is v"),
        ("v=DMARC1", INVALID, "§4.10.1 no p and no rua"),
        ("v=DMARC1; p=", INVALID, "§4.8 1*dmarc-value: empty p"),
        ("v=DMARC1; p=bogus", INVALID, "§4.10.1 invalid p, no rua"),
        ("v=DMARC1; p=none; sp=bogus", INVALID, "§4.10.1 invalid sp, no rua"),
        ("v=DMARC1; p=none; np=bogus", INVALID, "§4.10.1 invalid np, no rua"),
        ("v=DMARC1; p=bogus; rua=not a uri", INVALID, "§4.10.1 rua holds no valid URI"),
        ("v=DMARC1; p=reject; rua=not a uri", VALID, "rua only matters when p is unusable"),
        ("v=DMARC1; p=none; p=reject", INVALID, "§4.7 → RFC 6376 §3.2 repeated tag"),
        ("v=DMARC1; p=reject; v=DMARC1", INVALID, "repeated v"),
    ],
)
def test_record_outcomes(text: str, status: RecordStatus, why: str) -> None:
    assert parse_record(text).status is status, why


def test_defaults_and_fields() -> None:
    text = "v=DMARC1; p=quarantine; rua=mailto:a@example.com; ruf=mailto:f@x.y"
    record = parse_record(text).record
    assert record is not None
    assert (record.p, record.sp, record.np) == (Policy.QUARANTINE,) * 3  # sp → p, np → sp
    assert (record.adkim, record.aspf, record.psd, record.t) == (
        Alignment.RELAXED, Alignment.RELAXED, "u", False)
    assert record.rua == "mailto:a@example.com" and record.ruf == "mailto:f@x.y"
    assert record.explicit == frozenset({"p"}) and record.fallback == ""


def test_np_defaults_to_sp_then_p() -> None:
    record = parse_record("v=DMARC1; p=none; sp=reject").record
    assert record is not None and record.np is Policy.REJECT
    record = parse_record("v=DMARC1; p=none; sp=reject; np=quarantine").record
    assert record is not None
    assert (record.p, record.sp, record.np) == (Policy.NONE, Policy.REJECT, Policy.QUARANTINE)
    assert record.explicit == frozenset({"p", "sp", "np"})


def test_every_tag() -> None:
    record = parse_record(
        "v=DMARC1; p=reject; sp=quarantine; np=none; psd=n; t=y; adkim=s; aspf=s; fo=1").record
    assert record is not None
    assert record.psd == "n" and record.t
    assert record.adkim is Alignment.STRICT and record.aspf is Alignment.STRICT


@pytest.mark.parametrize(
    "text",
    [
        "v=DMARC1; p=bogus; rua=mailto:d@example.com",
        "v=DMARC1; rua=mailto:d@example.com",
        "v=DMARC1; p=reject; sp=bogus; rua=mailto:d@example.com",
        "v=DMARC1; p=reject; np=x; rua=mailto:d@example.com!10m",
        "v=DMARC1; p=reject; np=x; rua=bad, https://r.example/report",
    ],
)
def test_rua_makes_an_unusable_policy_act_as_none(text: str) -> None:
    """RFC 9989 §4.10.1: "MUST act as if a record containing p=none was retrieved"."""
    parsed = parse_record(text)
    assert parsed.status is VALID and parsed.record is not None
    record = parsed.record
    assert (record.p, record.sp, record.np) == (Policy.NONE,) * 3
    assert record.fallback and record.explicit == frozenset({"p"})


def test_psd_is_kept_for_invalid_records() -> None:
    """A PSO may publish a marker without a usable policy; the Tree Walk still needs psd."""
    parsed = parse_record("v=DMARC1; psd=y")
    assert parsed.status is INVALID and parsed.psd == "y" and parsed.record is None


def test_pct_only_in_rfc7489_mode() -> None:
    record = parse_record("v=DMARC1; p=reject; pct=20").record
    assert record is not None and record.pct is None  # RFC 9989 Appendix C.5.2: removed
    record = parse_record("v=DMARC1; p=reject; pct=20", mode="rfc7489").record
    assert record is not None and record.pct == 20
    for bad in ("500", "-1", "x", "", "1.5"):
        record = parse_record(f"v=DMARC1; p=reject; pct={bad}", mode="rfc7489").record
        assert record is not None and record.pct is None  # RFC 7489 §6.3: default (100)


def test_rfc7489_mode_ignores_np_psd_t() -> None:
    parsed = parse_record("v=DMARC1; p=none; np=bogus; psd=y; t=y", mode="rfc7489")
    assert parsed.status is VALID and parsed.record is not None
    assert parsed.record.np is Policy.NONE and parsed.psd == "u" and not parsed.record.t


def test_bytes_and_odd_input_never_raise() -> None:
    assert parse_record(b"v=DMARC1; p=reject").status is VALID
    assert parse_record(b"\xff\xfe v=DMARC1").status is NOT_DMARC
    assert parse_record(b"v=DMARC1; p=reject\x00; rua=\xff").status is INVALID
    assert parse_record("v=DMARC1; p=r\u00e9ject; rua=mailto:x@y").record is not None
    assert parse_record("v=DMARC1; " + "a=b; " * 10_000 + "p=none").status is VALID
