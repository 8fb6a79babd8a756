"""Hypothesis: parse_record never raises and keeps its invariants; check_dmarc never raises, and
adding an author address never makes the outcome less strict (CVE-2019-16378)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailsec_milter.addresses import author_domains
from mailsec_milter.checks.dkim import DkimOutcome, DkimSignatureOutcome
from mailsec_milter.checks.dmarc import (
    DmarcOutcome,
    DmarcSettings,
    Policy,
    RecordStatus,
    check_dmarc,
    parse_record,
)
from mailsec_milter.checks.spf import SpfIdentity, SpfOutcome
from mailsec_milter.dns import StaticResolver
from mailsec_milter.model import AuthResult

TAG_NAMES = st.sampled_from(["v", "p", "sp", "np", "psd", "t", "adkim", "aspf", "pct", "rua",
                             "ruf", "fo", "rf", "ri", "P", "Sp", "x"])
TAG_VALUES = st.one_of(
    st.sampled_from(["none", "quarantine", "reject", "REJECT", "y", "n", "u", "r", "s", "100",
                     "0", "mailto:a@example.com", "bogus", "", "DMARC1"]),
    st.text(max_size=12),
)
RECORDS = st.builds(
    lambda version, tags, sep: version + sep.join(f"{n}={v}" for n, v in tags),
    st.sampled_from(["v=DMARC1; ", "v=DMARC1;", " V = DMARC1 ; ", "v=dmarc1; ", ""]),
    st.lists(st.tuples(TAG_NAMES, TAG_VALUES), max_size=8),
    st.sampled_from(["; ", ";", " ; ", ";;"]),
)


def _invariants(text: str | bytes) -> None:
    for mode in ("rfc9989", "rfc7489"):
        parsed = parse_record(text, mode=mode)  # type: ignore[arg-type]
        assert parsed.status in RecordStatus
        assert (parsed.record is not None) == (parsed.status is RecordStatus.VALID)
        assert parsed.psd in ("y", "n", "u")
        record = parsed.record
        if record is not None:
            assert {record.p, record.sp, record.np} <= set(Policy)
            assert record.pct is None or 0 <= record.pct <= 100
            if mode == "rfc7489":
                assert not record.t and record.psd == "u"


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
def test_parse_record_any_text(text: str) -> None:
    _invariants(text)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parse_record_any_bytes(data: bytes) -> None:
    _invariants(data)


@settings(max_examples=500, deadline=None)
@given(RECORDS)
def test_parse_record_grammar_like(text: str) -> None:
    _invariants(text)
    parsed = parse_record(text)
    if not text.strip().lower().startswith("v") or "DMARC1" not in text.split(";")[0]:
        assert parsed.status is RecordStatus.NOT_DMARC


ZONE = """
_dmarc.reject.example. TXT "v=DMARC1; p=reject"
_dmarc.quarantine.example. TXT "v=DMARC1; p=quarantine; t=y"
_dmarc.monitor.example. TXT "v=DMARC1; p=none"
_dmarc.broken.example. TXT "v=DMARC1; p=bogus"
_dmarc.slow.example. TXT TIMEOUT
_dmarc.psd.example. TXT "v=DMARC1; p=reject; psd=y"
"""
DOMAINS = ["reject.example", "quarantine.example", "monitor.example", "broken.example",
           "slow.example", "nothing.example", "a.reject.example", "x.psd.example"]
RANK = {AuthResult.PASS: 0, AuthResult.NONE: 1, AuthResult.PERMERROR: 2,
        AuthResult.TEMPERROR: 3, AuthResult.FAIL: 4}
DISPOSITION = {None: 0, Policy.NONE: 0, Policy.QUARANTINE: 1, Policy.REJECT: 2}


def _strictness(outcome: DmarcOutcome) -> tuple[int, int]:
    rank = RANK[outcome.result]
    return rank, DISPOSITION[outcome.disposition] if outcome.result is AuthResult.FAIL else 0


def _evaluate(values: list[str], passing: str) -> DmarcOutcome:
    return check_dmarc(
        StaticResolver.from_zone_text(ZONE), author_domains(values),
        SpfOutcome(SpfIdentity.MAILFROM, AuthResult.PASS, f"b@{passing}", passing),
        DkimOutcome((DkimSignatureOutcome(AuthResult.PASS, passing),)),
        DmarcSettings(max_author_domains=20))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(DOMAINS), min_size=1, max_size=4), st.sampled_from(DOMAINS),
       st.sampled_from(DOMAINS), st.booleans())
def test_another_author_never_softens_the_outcome(domains: list[str], extra: str, passing: str,
                                                  same_header: bool) -> None:
    values = [", ".join(f"u@{d}" for d in domains)]
    before = _evaluate(values, passing)
    after_values = ([values[0] + f", u@{extra}"] if same_header else [*values, f"u@{extra}"])
    after = _evaluate(after_values, passing)
    assert _strictness(after) >= _strictness(before)
    if before.result is AuthResult.FAIL:
        assert after.result is AuthResult.FAIL


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(st.sampled_from("ab@.<>,;:()\" rejctmonx"), max_size=60), max_size=3),
       st.text(max_size=40))
def test_check_dmarc_never_raises(values: list[str], identifier: str) -> None:
    outcome = check_dmarc(
        StaticResolver.from_zone_text(ZONE), author_domains(values),
        SpfOutcome(SpfIdentity.MAILFROM, AuthResult.PASS, identifier, identifier),
        DkimOutcome((DkimSignatureOutcome(AuthResult.TEMPERROR, identifier),)),
        DmarcSettings())
    assert outcome.result in RANK
