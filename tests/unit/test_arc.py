"""ARC (RFC 8617): check_arc over chains sealed here with dkimpy, the trusted-sealer rows of
the policy, the ``arc=`` A-R entry, the engine's key prefetch and the metric."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import authres
import authres.arc
import pytest
from prometheus_client import CollectorRegistry

from mailsec_milter.authres import render, results_for
from mailsec_milter.checks.arc import ArcOutcome, ArcSet, check_arc
from mailsec_milter.checks.dkim import DkimOutcome, DkimSignatureOutcome
from mailsec_milter.checks.dmarc import DmarcOutcome, DomainEvaluation, Policy
from mailsec_milter.checks.spf import SpfIdentity, SpfOutcome
from mailsec_milter.checks.tls import TlsOutcome
from mailsec_milter.config import settings_from_mapping
from mailsec_milter.dns import StaticResolver, parse_zone_text
from mailsec_milter.engine import Analysis
from mailsec_milter.metrics import Metrics
from mailsec_milter.model import AuthResult, Envelope, MessageSnapshot, parse_message
from mailsec_milter.policy import Action, OverrideReason, Reason, decide
from tests.support.dkimkeys import KeyPair, arc_seal, key_name, rsa_key, zone_line

R = AuthResult
AUTHOR = "bank.example"
SEALER = "lists.example"
ORIGINAL = (b"From: CEO <ceo@bank.example>\r\nTo: list@lists.example\r\nSubject: quarterly\r\n"
            b"Message-ID: <q1@bank.example>\r\n\r\nNumbers attached.\r\n")
RECORDED_PASS = ("spf=pass smtp.mailfrom=bank.example; dkim=pass header.d=bank.example; "
                 "dmarc=pass (p=reject) header.from=bank.example")


@pytest.fixture(scope="module")
def key() -> KeyPair:
    return rsa_key(1024)


def zone(key: KeyPair, *extra: str) -> StaticResolver:
    lines = [zone_line(key_name("arc", SEALER), key.record()), *extra]
    return StaticResolver.from_zone_text("\n".join(lines))


def snapshot(raw: bytes) -> MessageSnapshot:
    headers, body = parse_message(raw)
    return MessageSnapshot(Envelope("192.0.2.25"), headers, body)


# --- check_arc --------------------------------------------------------------------------------

def test_no_arc_fields_is_none_without_a_query(key: KeyPair) -> None:
    resolver = zone(key)
    assert check_arc(resolver, snapshot(ORIGINAL)) == ArcOutcome()
    assert resolver.queries == []


def test_a_sealed_message_passes_and_reads_the_sealers_results(key: KeyPair) -> None:
    sealed = arc_seal(ORIGINAL, key, "arc", SEALER, RECORDED_PASS)
    outcome = check_arc(zone(key), snapshot(sealed))
    assert outcome.result is R.PASS, outcome.comment
    assert (outcome.instances, outcome.oldest_pass, outcome.newest_sealer) == (1, 0, SEALER)
    newest = outcome.newest
    assert newest is not None
    assert newest.recorded == (("spf", "pass"), ("dkim", "pass"), ("dmarc", "pass"))
    assert newest.recorded_header_from == AUTHOR
    assert newest.recorded_result("dmarc") == "pass" and newest.recorded_result("arc") is None


def test_two_sealers_pass_and_the_newest_is_first(key: KeyPair) -> None:
    first = arc_seal(ORIGINAL, key, "arc", "first.example", "dmarc=pass header.from=bank.example")
    both = arc_seal(first, key, "arc", SEALER, "arc=pass; dmarc=fail header.from=bank.example")
    outcome = check_arc(zone(key, zone_line(key_name("arc", "first.example"), key.record())),
                        snapshot(both))
    assert outcome.result is R.PASS, outcome.comment
    assert [s.seal_domain for s in outcome.sets] == [SEALER, "first.example"]
    assert outcome.newest is not None and outcome.newest.recorded_result("dmarc") == "fail"


def test_a_body_changed_after_sealing_fails(key: KeyPair) -> None:
    sealed = arc_seal(ORIGINAL, key, "arc", SEALER, RECORDED_PASS)
    outcome = check_arc(zone(key), snapshot(sealed.replace(b"Numbers", b"Wire $1M")))
    assert outcome.result is R.FAIL
    assert outcome.newest_sealer == SEALER


def test_a_missing_key_fails_and_a_dns_timeout_is_temperror(key: KeyPair) -> None:
    sealed = snapshot(arc_seal(ORIGINAL, key, "arc", SEALER, RECORDED_PASS))
    assert check_arc(StaticResolver(), sealed).result is R.FAIL
    timeout = StaticResolver.from_zone_text(f"arc._domainkey.{SEALER}. TXT TIMEOUT")
    outcome = check_arc(timeout, sealed)
    assert outcome.result is R.TEMPERROR and "timeout" in outcome.comment
    assert outcome.newest_sealer == SEALER  # known from the header without DNS


def test_an_oversized_rsa_key_is_refused_before_any_arithmetic(key: KeyPair) -> None:
    """dkimpy's RSA is a pure-Python pow(): a 16400-bit key with a 16400-bit exponent from the
    sealer's DNS would hold the GIL for a minute. The key fetch answers "no key" instead."""
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicNumbers

    from mailsec_milter.checks.arc import _dnsfunc

    modulus = (1 << 16400) - 1
    big = RSAPublicNumbers((1 << 16399) + 1, modulus).public_key()
    der = big.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    record = f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    name = key_name("arc", SEALER)
    costly = StaticResolver.from_zone_text(zone_line(name, record))
    assert _dnsfunc(costly)(name.encode() + b".") is None
    # dkimpy is handed only the k= and p= of a usable key (dkim_tags.read_key_record)
    assert _dnsfunc(zone(key))(name.encode() + b".") == f"k=rsa; p={key.public_b64}".encode()
    sealed = snapshot(arc_seal(ORIGINAL, key, "arc", SEALER, RECORDED_PASS))
    assert check_arc(costly, sealed).result is R.FAIL


@pytest.mark.parametrize("mangle", [
    lambda raw: raw.replace(b"ARC-Seal: i=1", b"ARC-Seal: i=x"),
    lambda raw: raw.replace(b"ARC-Seal:", b"ARC-Seal: i=1; i=2;", 1),
    lambda raw: b"ARC-Authentication-Results: i=1; x; none\r\n" + raw,
    lambda raw: raw.replace(b"ARC-Message-Signature:", b"X-Gone:"),
    lambda raw: raw.replace(b"b=", b"b=;;;\x00", 1),
])
def test_mangled_chains_fail_and_never_raise(key: KeyPair, mangle: Any) -> None:
    sealed = arc_seal(ORIGINAL, key, "arc", SEALER, RECORDED_PASS)
    assert check_arc(zone(key), snapshot(mangle(sealed))).result is R.FAIL


def test_a_seal_that_says_cv_fail_fails_the_chain(key: KeyPair) -> None:
    """RFC 8617 §5.2 step 2 (dkimpy alone answers None, "chain terminated"); the ValiMail
    cv_fail_* cases check the same with valid seals."""
    sealed = arc_seal(ORIGINAL, key, "arc", SEALER, RECORDED_PASS)
    assert b"cv=none" in sealed
    outcome = check_arc(zone(key), snapshot(sealed.replace(b"cv=none", b"cv=fail", 1)))
    assert outcome.result is R.FAIL


# --- policy: trusted ARC sealers --------------------------------------------------------------

def arc_pass(sealer: str = SEALER, recorded: tuple[tuple[str, str], ...] = (("dmarc", "pass"),),
             header_from: str = AUTHOR) -> ArcOutcome:
    return ArcOutcome(R.PASS, 1, 0, (ArcSet(1, sealer, True, True, "none", recorded,
                                            header_from),), sealer)


def forwarded(arc: ArcOutcome, policy: Policy = Policy.REJECT) -> Analysis:
    """Mail of a p=reject domain that a list re-sent: SPF and DKIM fail here."""
    return Analysis(
        spf_mailfrom=SpfOutcome(SpfIdentity.MAILFROM, R.FAIL, "ceo@bank.example", AUTHOR),
        spf_helo=None,
        dkim=DkimOutcome((DkimSignatureOutcome(R.FAIL, domain=AUTHOR),)),
        tls=TlsOutcome(R.NONE),
        dmarc=DmarcOutcome(R.FAIL, header_from=AUTHOR, policy=policy, disposition=policy,
                           evaluations=(DomainEvaluation(AUTHOR, R.FAIL, policy=policy),)),
        arc=arc)


def settings(**policy: Any) -> Any:
    return settings_from_mapping({"milter": {"authserv_id": "mx.test.example"},
                                  "policy": policy})


ENVELOPE = Envelope(client_ip="192.0.2.25", helo="mail.lists.example",
                    mail_from="list-bounces@lists.example")
TRUSTING = {"trusted_arc_sealers": [SEALER]}


def test_a_trusted_sealer_that_saw_dmarc_pass_lifts_the_reject() -> None:
    verdict = decide(forwarded(arc_pass()), ENVELOPE, settings(**TRUSTING))
    assert verdict.action is Action.ACCEPT and verdict.reason is Reason.TRUSTED_ARC_SEALER
    assert verdict.override_reason is OverrideReason.TRUSTED_FORWARDER
    assert (verdict.evaluated_disposition, verdict.applied_disposition) == ("reject", "none")
    assert SEALER in verdict.override_detail


@pytest.mark.parametrize(("why", "arc", "policy"), [
    ("nobody trusted", arc_pass(), {}),
    ("another sealer", arc_pass("other.example"), TRUSTING),
    ("it saw dmarc fail", arc_pass(recorded=(("dmarc", "fail"),)), TRUSTING),
    ("it recorded no dmarc", arc_pass(recorded=(("spf", "pass"),)), TRUSTING),
    ("another From domain", arc_pass(header_from="evil.example"), TRUSTING),
    ("no header.from", arc_pass(header_from=""), TRUSTING),
    ("chain failed", dataclasses.replace(arc_pass(), result=R.FAIL), TRUSTING),
    ("domain override", arc_pass(), {**TRUSTING, "domain_overrides": {AUTHOR: "reject"}}),
])
def test_the_reject_stands_unless_every_condition_holds(why: str, arc: ArcOutcome,
                                                       policy: dict[str, Any]) -> None:
    verdict = decide(forwarded(arc), ENVELOPE, settings(**policy, dmarc_reject="always"))
    assert verdict.action is Action.REJECT, why
    # RFC 9989 §8 (the default): an ARC set that does not vouch is still a sign of an
    # intermediary: quarantined, never accepted; an operator's "reject" override stays reject
    default = decide(forwarded(arc), ENVELOPE, settings(**policy))
    expected = Action.REJECT if "domain_overrides" in policy else Action.QUARANTINE
    assert default.action is expected, why


def test_a_trusted_sealers_chain_that_could_not_be_checked_tempfails() -> None:
    arc = ArcOutcome(R.TEMPERROR, newest_sealer=SEALER, comment="key lookup timeout")
    verdict = decide(forwarded(arc), ENVELOPE, settings(**TRUSTING))
    assert verdict.action is Action.TEMPFAIL and verdict.reason is Reason.DNS_TEMPERROR
    # an untrusted sealer's DNS trouble cannot change the verdict: the policy applies
    other = ArcOutcome(R.TEMPERROR, newest_sealer="other.example")
    assert decide(forwarded(other), ENVELOPE,
                  settings(**TRUSTING, dmarc_reject="always")).action is Action.REJECT
    assert decide(forwarded(other), ENVELOPE, settings(**TRUSTING)).action is Action.QUARANTINE


def test_a_trusted_sealer_also_lifts_reject_on_spf_fail() -> None:
    vouched = decide(forwarded(arc_pass(), Policy.NONE), ENVELOPE,
                     settings(reject_on_spf_fail=True, **TRUSTING))
    assert vouched.action is Action.ACCEPT
    plain = decide(forwarded(arc_pass(), Policy.NONE), ENVELOPE,
                   settings(reject_on_spf_fail=True))
    assert plain.action is Action.REJECT and plain.reason is Reason.SPF_FAIL


# --- A-R and metrics --------------------------------------------------------------------------

def test_arc_entry_renders_and_parses() -> None:
    analysis = forwarded(arc_pass())
    verdict = decide(analysis, ENVELOPE, settings(**TRUSTING))
    value = render("mx.test.example", results_for(analysis, verdict))
    parsed = authres.FeatureContext(authres.arc).parse_value(value.replace("\n", ""))
    arc = [r for r in parsed.results if r.method == "arc"]
    assert len(arc) == 1 and arc[0].result == "pass"
    assert [(p.type, p.name, p.value) for p in arc[0].properties] == [
        ("header", "oldest-pass", "0")]
    assert "policy.override-reason=trusted_forwarder" in value.replace("\n\t", " ")
    assert re.search(r"arc=pass \(i=1, sealed by lists\.example\)", value.replace("\n\t", " "))


def test_no_arc_entry_without_arc_fields() -> None:
    value = render("mx.test.example", results_for(forwarded(ArcOutcome())))
    assert not re.search(r"\barc=", value), value


def test_the_arc_result_is_counted() -> None:
    metrics = Metrics(CollectorRegistry())
    analysis = forwarded(arc_pass())
    metrics.observe_message(analysis, decide(analysis, ENVELOPE, settings()), 0, 0.001)
    value = metrics.registry.get_sample_value("mailsec_auth_results_total",
                                              {"method": "arc", "result": "pass"})
    assert value == 1.0


# --- engine -----------------------------------------------------------------------------------

def test_the_engine_prefetches_seal_keys_and_reports_the_chain(key: KeyPair) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from mailsec_milter.engine import Engine

    class Recording(StaticResolver):
        def __init__(self, text: str) -> None:
            super().__init__(parse_zone_text(text))
            self.prefetched: list[str] = []

        def prefetch(self, name: str, rdtype: str) -> None:
            self.prefetched.append(name)

    resolver = Recording(zone_line(key_name("arc", SEALER), key.record()))
    sealed = snapshot(arc_seal(ORIGINAL, key, "arc", SEALER, RECORDED_PASS))
    config = settings_from_mapping({"milter": {"authserv_id": "mx.test.example"}})
    with ThreadPoolExecutor(2) as pool:
        engine = Engine(config, resolver, pool)
        run = engine.begin(sealed.envelope)
        for header in sealed.headers:
            run.saw_header(header)
        analysis = run.finish(sealed)
    assert f"arc._domainkey.{SEALER}" in resolver.prefetched
    assert analysis.arc.result is R.PASS
    off = settings_from_mapping({"milter": {"authserv_id": "mx.test.example"},
                                 "arc": {"enabled": False}})
    with ThreadPoolExecutor(2) as pool:
        assert Engine(off, resolver, pool).analyse(sealed).arc == ArcOutcome()


def test_a_truncated_body_is_not_validated_and_says_why(key: KeyPair) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from mailsec_milter.engine import Engine

    sealed = snapshot(arc_seal(ORIGINAL, key, "arc", SEALER, RECORDED_PASS))
    config = settings_from_mapping({"milter": {"authserv_id": "mx.test.example"}})
    with ThreadPoolExecutor(2) as pool:
        engine = Engine(config, zone(key), pool)
        cut = engine.begin(sealed.envelope).finish(sealed, body_too_large=True).arc
        plain = engine.begin(sealed.envelope).finish(snapshot(ORIGINAL), body_too_large=True).arc
    assert (cut.result, cut.newest_sealer) == (R.FAIL, SEALER)
    assert "max_body_bytes" in cut.comment
    assert plain == ArcOutcome()


def test_results_the_reader_cannot_parse_record_nothing() -> None:
    """authres refuses CFWS after a method version; such a sealer vouches for nothing."""
    from mailsec_milter.checks.arc import _read_aar

    good = b" i=1; lists.example;\r\n dmarc=pass (p=reject) header.from=Bank.Example."
    assert _read_aar(good) == ((("dmarc", "pass"),), "bank.example")
    odd = b" i=1; lists.example; dkim / 1 (One yay) = pass; dmarc=pass header.from=bank.example"
    assert _read_aar(odd) == ((), "")
