"""RFC 9989 §8: a p=reject failure is rejected only when no sign of a legitimate indirect flow
or known sender is found (``[policy] dmarc_reject``; docs/POLICY.md rows 6a-6c).

One test per sign alone, per mode, several signs together, signs a forger adds, t=y and
domain overrides combined; the marks read from real headers (hostile List-Id values,
thousands of List-* fields, an ARC set that does not parse); what the verdict shows in the
A-R header, the RFC 9990 report reasons and the metrics.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from mailsec_milter import authres
from mailsec_milter.checks.arc import ArcOutcome
from mailsec_milter.checks.dkim import DkimOutcome, DkimSignatureOutcome
from mailsec_milter.checks.dmarc import (
    Alignment,
    DmarcOutcome,
    DmarcRecord,
    DomainEvaluation,
    Policy,
)
from mailsec_milter.checks.spf import SpfIdentity, SpfOutcome
from mailsec_milter.checks.tls import TlsOutcome
from mailsec_milter.config import settings_from_mapping
from mailsec_milter.dns import StaticResolver
from mailsec_milter.engine import Analysis, Engine
from mailsec_milter.evidence import Marks, header_marks, read_marks
from mailsec_milter.metrics import Metrics
from mailsec_milter.model import AuthResult, Envelope, Header, MessageSnapshot, parse_message
from mailsec_milter.policy import (
    Action,
    OverrideReason,
    Reason,
    Sign,
    broken_aligned_signature,
    decide,
)
from mailsec_milter.reports.record import records_for

R = AuthResult
AUTHOR = "bank.example"
ENVELOPE = Envelope(client_ip="198.51.100.7", helo="mail.lists.example",
                    mail_from="bounces@lists.example")
LIST = Marks(list_fields=("List-Id",))
KNOWN = Marks(known_network="198.51.100.0/24", history=True)
ARC_FAIL = ArcOutcome(R.FAIL, 1, newest_sealer="lists.example", comment="cv=fail")


def record(adkim: Alignment = Alignment.RELAXED, p: Policy = Policy.REJECT,
           t: bool = False) -> DmarcRecord:
    return DmarcRecord(p=p, sp=p, np=p, adkim=adkim, t=t, rua="mailto:r@bank.example")


NO_MARKS = Marks()
NO_ARC = ArcOutcome()


def failing(*, signatures: tuple[tuple[R, str], ...] = (), marks: Marks = NO_MARKS,
            arc: ArcOutcome = NO_ARC, policy: Policy = Policy.REJECT,
            disposition: Policy | None = None, org: str | None = AUTHOR,
            adkim: Alignment = Alignment.RELAXED, testing: bool = False) -> Analysis:
    """A DMARC fail for bank.example: SPF passes for the list's bounce domain (not aligned)."""
    disposition = disposition or policy
    rec = record(adkim, policy, testing)
    evaluation = DomainEvaluation(AUTHOR, R.FAIL, policy=policy, policy_tag="p",
                                  testing=testing, disposition=disposition, record=rec,
                                  record_domain=AUTHOR, policy_domain=AUTHOR, org_domain=org)
    return Analysis(
        spf_mailfrom=SpfOutcome(SpfIdentity.MAILFROM, R.PASS, "bounces@lists.example",
                                "lists.example"),
        spf_helo=None,
        dkim=DkimOutcome(tuple(DkimSignatureOutcome(r, domain=d, selector="s")
                               for r, d in signatures)),
        tls=TlsOutcome(R.NONE),
        dmarc=DmarcOutcome(R.FAIL, header_from=AUTHOR, policy=policy, testing=testing,
                           disposition=disposition, evaluations=(evaluation,),
                           record_domain=AUTHOR, policy_domain=AUTHOR, org_domain=org,
                           reason="no aligned identifier"),
        arc=arc, marks=marks)


def settings(**policy: Any) -> Any:
    return settings_from_mapping({"milter": {"authserv_id": "mx.test.example"},
                                  "policy": policy})


def assert_quarantined(verdict: Any, *signs: Sign, override: OverrideReason) -> None:
    assert verdict.action is Action.QUARANTINE, verdict
    assert verdict.reason is Reason.MITIGATING_EVIDENCE
    assert verdict.signs == signs
    assert verdict.override_reason is override
    assert (verdict.evaluated_disposition, verdict.applied_disposition) == ("reject",
                                                                            "quarantine")
    assert verdict.reply is None
    for sign in signs:
        assert sign.value in verdict.override_detail and sign.value in verdict.detail


# --- no sign: the reject stands ------------------------------------------------------------------

def test_no_sign_rejects_with_dmarc_in_the_reply() -> None:
    verdict = decide(failing(), ENVELOPE, settings())
    assert verdict.action is Action.REJECT and verdict.reason is Reason.DMARC_POLICY
    assert verdict.signs == () and verdict.override_reason is None
    assert verdict.reply is not None and verdict.reply.code == "550"
    assert "DMARC" in verdict.reply.text  # RFC 9989 §7.2 keeps the word
    assert "no sign of" in verdict.detail


# --- each sign alone -----------------------------------------------------------------------------

def test_sign_a_list_fields_alone() -> None:
    verdict = decide(failing(marks=LIST), ENVELOPE, settings())
    assert_quarantined(verdict, Sign.LIST_FIELDS, override=OverrideReason.MAILING_LIST)
    assert "List-Id" in verdict.override_detail


@pytest.mark.parametrize("fields", [("List-Post",), ("List-Id", "List-Post")])
def test_sign_a_list_post_counts_too(fields: tuple[str, ...]) -> None:
    verdict = decide(failing(marks=Marks(list_fields=fields)), ENVELOPE, settings())
    assert_quarantined(verdict, Sign.LIST_FIELDS, override=OverrideReason.MAILING_LIST)


@pytest.mark.parametrize("arc", [
    ARC_FAIL,
    ArcOutcome(R.PASS, 1, 0, newest_sealer="lists.example"),  # untrusted sealer
    ArcOutcome(R.TEMPERROR, newest_sealer="lists.example"),
])
def test_sign_b_an_arc_set_from_any_sealer(arc: ArcOutcome) -> None:
    verdict = decide(failing(arc=arc), ENVELOPE, settings())
    assert_quarantined(verdict, Sign.ARC_SET, override=OverrideReason.MAILING_LIST)
    assert "lists.example" in verdict.override_detail


def test_sign_b_arc_fields_seen_with_arc_validation_off() -> None:
    verdict = decide(failing(marks=Marks(arc_fields=True)), ENVELOPE,
                     settings())
    assert_quarantined(verdict, Sign.ARC_SET, override=OverrideReason.MAILING_LIST)


def test_sign_c_an_aligned_signature_that_failed() -> None:
    verdict = decide(failing(signatures=((R.FAIL, AUTHOR),)), ENVELOPE, settings())
    assert_quarantined(verdict, Sign.BROKEN_SIGNATURE, override=OverrideReason.MAILING_LIST)
    assert f"d={AUTHOR}" in verdict.override_detail


def test_sign_d_a_known_sender_network() -> None:
    verdict = decide(failing(marks=KNOWN), ENVELOPE, settings())
    assert_quarantined(verdict, Sign.KNOWN_SENDER, override=OverrideReason.LOCAL_POLICY)
    assert "198.51.100.0/24" in verdict.override_detail


# --- what "aligned" means for a failing signature ------------------------------------------------

@pytest.mark.parametrize(("why", "signatures", "adkim", "org", "broken"), [
    ("d= is the author domain", ((R.FAIL, AUTHOR),), Alignment.RELAXED, AUTHOR, AUTHOR),
    ("d= under the org domain", ((R.FAIL, "mail.bank.example"),), Alignment.RELAXED, AUTHOR,
     "mail.bank.example"),
    ("d= the org domain of a sub-author", ((R.FAIL, "example"),), Alignment.RELAXED, AUTHOR,
     ""),
    ("strict: only the same name", ((R.FAIL, "mail.bank.example"),), Alignment.STRICT, AUTHOR,
     ""),
    ("strict, same name", ((R.FAIL, AUTHOR),), Alignment.STRICT, AUTHOR, AUTHOR),
    ("org unknown: the author stands in", ((R.FAIL, "mail.bank.example"),), Alignment.RELAXED,
     None, "mail.bank.example"),
    ("someone else's domain", ((R.FAIL, "evil.example"),), Alignment.RELAXED, AUTHOR, ""),
    ("a look-alike suffix", ((R.FAIL, "xbank.example"),), Alignment.RELAXED, AUTHOR, ""),
    ("no key / malformed is not transit", ((R.PERMERROR, AUTHOR),), Alignment.RELAXED, AUTHOR,
     ""),
    ("a DNS failure is not transit", ((R.TEMPERROR, AUTHOR),), Alignment.RELAXED, AUTHOR, ""),
    ("no signature at all", (), Alignment.RELAXED, AUTHOR, ""),
    ("upper case d=", ((R.FAIL, "BANK.Example."),), Alignment.RELAXED, AUTHOR, AUTHOR),
])
def test_sign_c_alignment_of_a_failing_signature(why: str, signatures: Any, adkim: Alignment,
                                                 org: str | None, broken: str) -> None:
    analysis = failing(signatures=signatures, adkim=adkim, org=org)
    assert broken_aligned_signature(analysis) == broken, why
    verdict = decide(analysis, ENVELOPE, settings())
    assert verdict.action is (Action.QUARANTINE if broken else Action.REJECT), why


def test_sign_c_the_org_domain_of_a_subdomain_author() -> None:
    """From: a@news.bank.example, org bank.example: a failing d=bank.example is aligned."""
    base = failing(signatures=((R.FAIL, AUTHOR),))
    assert base.dmarc is not None
    dmarc = dataclasses.replace(base.dmarc, header_from="news.bank.example", evaluations=(
        dataclasses.replace(base.dmarc.evaluations[0], domain="news.bank.example"),))
    assert broken_aligned_signature(dataclasses.replace(base, dmarc=dmarc)) == AUTHOR


# --- several signs together ----------------------------------------------------------------------

def test_every_sign_together_is_still_a_quarantine() -> None:
    analysis = failing(signatures=((R.FAIL, AUTHOR),), arc=ARC_FAIL,
                       marks=Marks(("List-Id", "List-Post"), True, "198.51.100.0/24", True))
    verdict = decide(analysis, ENVELOPE, settings())
    assert_quarantined(verdict, Sign.LIST_FIELDS, Sign.ARC_SET, Sign.BROKEN_SIGNATURE,
                       Sign.KNOWN_SENDER, override=OverrideReason.MAILING_LIST)


def test_known_sender_with_a_list_sign_reports_both_reason_types() -> None:
    analysis = failing(marks=Marks(("List-Id",), False, "198.51.100.0/24", True))
    verdict = decide(analysis, ENVELOPE, settings())
    assert_quarantined(verdict, Sign.LIST_FIELDS, Sign.KNOWN_SENDER,
                       override=OverrideReason.MAILING_LIST)
    (rec,) = records_for(ENVELOPE, analysis, verdict)
    assert [kind for kind, _ in rec.reasons] == ["mailing_list", "local_policy"]
    assert "list_fields" in rec.reasons[0][1] and "known_sender" in rec.reasons[1][1]
    assert rec.disposition == "quarantine"


# --- a forger's marks ----------------------------------------------------------------------------

def test_a_forger_adding_every_mark_gets_quarantine_never_accept() -> None:
    """From a network nobody knows, with a List-Id, a fake ARC set and a fake d=bank.example
    signature: the forger turned the reject into a quarantine and nothing more."""
    forged = failing(signatures=((R.FAIL, AUTHOR),),
                     arc=ArcOutcome(R.FAIL, 1, newest_sealer=AUTHOR, comment="bad seal"),
                     marks=Marks(("List-Id",), True, "", True))
    for mode in ("evidence", "never"):
        verdict = decide(forged, ENVELOPE, settings(dmarc_reject=mode))
        assert verdict.action is Action.QUARANTINE, mode
        assert verdict.applied_disposition == "quarantine"
    assert decide(forged, ENVELOPE, settings(dmarc_reject="always")).action is Action.REJECT


def test_signs_never_turn_quarantine_or_none_into_accept_or_into_something_else() -> None:
    marks = Marks(("List-Id",), True, "198.51.100.0/24", True)
    quarantine = decide(failing(policy=Policy.QUARANTINE, marks=marks), ENVELOPE, settings())
    assert quarantine.action is Action.QUARANTINE and quarantine.reason is Reason.DMARC_POLICY
    assert quarantine.signs == () and quarantine.override_reason is None
    none = decide(failing(policy=Policy.NONE, marks=marks), ENVELOPE, settings())
    assert none.action is Action.ACCEPT and none.signs == ()


# --- the modes -----------------------------------------------------------------------------------

def test_mode_always_rejects_on_the_policy_alone() -> None:
    marks = Marks(("List-Id",), True, "198.51.100.0/24", True)
    verdict = decide(failing(signatures=((R.FAIL, AUTHOR),), marks=marks), ENVELOPE,
                     settings(dmarc_reject="always"))
    assert verdict.action is Action.REJECT and verdict.reason is Reason.DMARC_POLICY
    assert verdict.signs == () and verdict.reply is not None


def test_mode_never_quarantines_without_any_sign() -> None:
    verdict = decide(failing(), ENVELOPE, settings(dmarc_reject="never"))
    assert verdict.action is Action.QUARANTINE and verdict.reason is Reason.LOCAL_OVERRIDE
    assert verdict.override_reason is OverrideReason.LOCAL_POLICY
    assert "dmarc_reject" in verdict.override_detail and verdict.signs == ()


def test_mode_evidence_is_the_default() -> None:
    assert settings().dmarc_reject == "evidence"
    assert decide(failing(marks=LIST), ENVELOPE, settings()).action is Action.QUARANTINE


def test_downgrade_reject_wins_over_the_signs() -> None:
    verdict = decide(failing(marks=LIST), ENVELOPE, settings(downgrade_reject=True))
    assert verdict.action is Action.QUARANTINE and verdict.reason is Reason.LOCAL_OVERRIDE
    assert verdict.signs == ()


# --- t=y and domain overrides combined -----------------------------------------------------------

def test_testing_mode_quarantine_is_not_an_override_whatever_the_signs() -> None:
    verdict = decide(failing(testing=True, disposition=Policy.QUARANTINE, marks=LIST),
                     ENVELOPE, settings())
    assert verdict.action is Action.QUARANTINE and verdict.reason is Reason.DMARC_POLICY
    assert verdict.signs == () and verdict.override_reason is None
    (rec,) = records_for(ENVELOPE, failing(testing=True, disposition=Policy.QUARANTINE,
                                           marks=LIST), verdict)
    assert rec.reasons == (("policy_test_mode", "t=y"),)


@pytest.mark.parametrize(("override", "action", "reason"), [
    ("reject", Action.REJECT, Reason.DMARC_POLICY),  # the operator's word: no sign lifts it
    ("quarantine", Action.QUARANTINE, Reason.LOCAL_OVERRIDE),
    ("never_reject", Action.QUARANTINE, Reason.LOCAL_OVERRIDE),
    ("accept", Action.ACCEPT, Reason.LOCAL_OVERRIDE),
])
def test_domain_overrides_come_before_the_signs(override: str, action: Action,
                                                reason: Reason) -> None:
    analysis = failing(signatures=((R.FAIL, AUTHOR),), marks=LIST)
    verdict = decide(analysis, ENVELOPE, settings(domain_overrides={AUTHOR: override}))
    assert verdict.action is action and verdict.reason is reason
    assert verdict.signs == ()


def test_testing_mode_with_a_reject_override_and_signs() -> None:
    analysis = failing(testing=True, disposition=Policy.QUARANTINE, marks=LIST)
    verdict = decide(analysis, ENVELOPE, settings(domain_overrides={AUTHOR: "reject"}))
    assert verdict.action is Action.REJECT and verdict.reason is Reason.LOCAL_OVERRIDE


def test_dry_run_keeps_the_would_be_quarantine() -> None:
    verdict = decide(failing(marks=LIST), ENVELOPE, settings(dry_run=True))
    assert verdict.action is Action.ACCEPT and verdict.dry_run_action is Action.QUARANTINE
    assert verdict.reason is Reason.MITIGATING_EVIDENCE


def test_trusted_networks_and_authenticated_clients_come_first() -> None:
    verdict = decide(failing(), ENVELOPE, settings(trusted_networks=["198.51.100.0/24"]))
    assert verdict.action is Action.ACCEPT and verdict.reason is Reason.TRUSTED_NETWORK


# --- where the outcome shows ---------------------------------------------------------------------

def test_the_header_names_the_sign() -> None:
    analysis = failing(signatures=((R.FAIL, AUTHOR),), marks=LIST)
    verdict = decide(analysis, ENVELOPE, settings())
    (dmarc,) = [r for r in authres.results_for(analysis, verdict) if r.method == "dmarc"]
    props = dict(dmarc.properties)
    assert props["policy.applied-disposition"] == "quarantine"
    assert props["policy.evaluated-disposition"] == "reject"
    assert props["policy.override-reason"] == "mailing_list"
    assert "list_fields" in dmarc.comment and "broken_signature" in dmarc.comment
    text = authres.render("mx.test.example", authres.results_for(analysis, verdict))
    assert "policy.override-reason=mailing_list" in text


def test_the_report_records_mailing_list() -> None:
    analysis = failing(marks=LIST)
    verdict = decide(analysis, ENVELOPE, settings())
    (rec,) = records_for(ENVELOPE, analysis, verdict)
    assert rec.reasons == (("mailing_list", "RFC 9989 section 8: list_fields"),)


def test_the_metrics_count_the_reason() -> None:
    metrics = Metrics()
    analysis = failing(marks=KNOWN)
    verdict = decide(analysis, ENVELOPE, settings())
    metrics.observe_message(analysis, verdict, 0, 0.01)
    value = metrics.registry.get_sample_value(
        "mailsec_messages_total", {"verdict": "quarantine", "reason": "mitigating_evidence"})
    assert value == 1.0


# --- marks read from real headers ----------------------------------------------------------------

def headers(*fields: tuple[str, bytes]) -> tuple[Header, ...]:
    return tuple(Header(name, value) for name, value in fields)


@pytest.mark.parametrize("value", [
    b" <list.lists.example>",
    b" \"(\\\r\n\t)\" <\x00evil;\r\n\tdkim=pass>",  # quotes, folding, NUL, a fake result
    b" " + b"A" * 100_000,
    " Bücher <bücher.lists.example>".encode(),
    b" \xff\xfe not UTF-8",
])
def test_hostile_list_id_values_are_a_sign_whose_value_never_leaves(value: bytes) -> None:
    marks = header_marks(headers(("From", b" a@bank.example"), ("List-Id", value)))
    assert marks.list_fields == ("List-Id",)
    analysis = failing(marks=marks)
    verdict = decide(analysis, ENVELOPE, settings())
    assert verdict.action is Action.QUARANTINE
    text = authres.render("mx.test.example", authres.results_for(analysis, verdict))
    assert "evil" not in text and "AAAA" not in text and "\x00" not in text
    assert "\r" not in verdict.detail and len(verdict.override_detail) < 300


def test_an_empty_list_id_is_no_sign() -> None:
    assert header_marks(headers(("List-Id", b""), ("List-Post", b"  \r\n\t"))).list_fields == ()


def test_thousands_of_list_fields_are_one_mark() -> None:
    many = headers(*[(f"List-{name}", b" <x>") for name in ("Id", "Post", "Unsubscribe")
                     for _ in range(3000)])
    marks = header_marks(many)
    assert marks.list_fields == ("List-Id", "List-Post")
    assert header_marks(headers(*[("List-Unsubscribe", b" <x>")] * 5000)).list_fields == ()


def test_field_names_are_matched_as_the_from_field_is() -> None:
    assert header_marks(headers(("list-ID ", b" <a>"))).list_fields == ("List-Id",)
    # a non-ASCII look-alike (Cyrillic I) is not a List-Id field
    assert header_marks(headers(("List-\u0406d", b" <a>"))).list_fields == ()
    assert header_marks(headers(("ARC-Seal", b" i=1"))).arc_fields


class _Boom:
    def known_network(self, domain: str, client_ip: str | None) -> str:
        raise RuntimeError("broken summary")


def test_a_broken_history_costs_only_its_sign() -> None:
    marks = read_marks(headers(("List-Id", b" <a>")), "198.51.100.7", AUTHOR, _Boom())
    assert marks.list_fields == ("List-Id",) and marks.known_network == ""


# --- through the engine: the marks, and an ARC set that does not parse ---------------------------

ZONE = """
_dmarc.bank.example. TXT "v=DMARC1; p=reject"
lists.example. TXT "v=spf1 ip4:198.51.100.0/24 -all"
"""


class _Known:
    def __init__(self, network: str) -> None:
        self.network = network
        self.asked: list[tuple[str, str | None]] = []

    def known_network(self, domain: str, client_ip: str | None) -> str:
        self.asked.append((domain, client_ip))
        return self.network


def analyse(raw: bytes, history: Any = None, **policy: Any) -> tuple[Analysis, Any]:
    config = settings_from_mapping({"milter": {"authserv_id": "mx.test.example",
                                               "message_deadline": "2s"}, "policy": policy})
    head, body = parse_message(raw)
    with ThreadPoolExecutor(2) as pool:
        engine = Engine(config, StaticResolver.from_zone_text(ZONE), pool, history=history)
        analysis = engine.analyse(MessageSnapshot(ENVELOPE, head, body))
    return analysis, decide(analysis, ENVELOPE, config)


BASE = (b"From: ceo@bank.example\r\nTo: b@example.net\r\nSubject: hi\r\n"
        b"Message-ID: <1@bank.example>\r\n")


def test_engine_reads_list_fields_and_rejects_without_them() -> None:
    plain, verdict = analyse(BASE + b"\r\nbody\r\n")
    assert verdict.action is Action.REJECT and plain.marks == Marks()
    listed, verdict = analyse(BASE + b"List-Id: <a.lists.example>\r\n\r\nbody\r\n")
    assert listed.marks.list_fields == ("List-Id",)
    assert verdict.action is Action.QUARANTINE and verdict.signs == (Sign.LIST_FIELDS,)


def test_engine_asks_the_history_for_the_author_and_client() -> None:
    known = _Known("198.51.100.0/24")
    analysis, verdict = analyse(BASE + b"\r\nbody\r\n", known)
    assert known.asked == [(AUTHOR, "198.51.100.7")]
    assert analysis.marks.history and verdict.signs == (Sign.KNOWN_SENDER,)
    _, verdict = analyse(BASE + b"\r\nbody\r\n", _Known(""))
    assert verdict.action is Action.REJECT


@pytest.mark.parametrize("arc", [
    b"ARC-Seal: garbage without tags\r\n",
    b"ARC-Seal: i=1; a=rsa-sha256; d=lists.example; s=x; cv=none; b=!!!\r\n"
    b"ARC-Message-Signature: i=1; \x00\r\n",
    b"ARC-Authentication-Results: i=1; (((\r\n",
])
def test_an_arc_set_that_does_not_parse_is_a_defined_sign(arc: bytes) -> None:
    analysis, verdict = analyse(BASE + arc + b"\r\nbody\r\n")
    assert analysis.arc.result is R.FAIL and not analysis.errors
    assert verdict.action is Action.QUARANTINE and Sign.ARC_SET in verdict.signs
    _, verdict = analyse(BASE + arc + b"\r\nbody\r\n", dmarc_reject="always")
    assert verdict.action is Action.REJECT


def test_marks_are_not_read_unless_dmarc_fails() -> None:
    known = _Known("198.51.100.0/24")
    zone_pass = BASE.replace(b"bank.example", b"lists.example")
    analysis, _ = analyse(zone_pass + b"List-Id: <a>\r\n\r\nbody\r\n", known)
    assert analysis.marks == Marks() and known.asked == []


# --- the property: signs never accept -------------------------------------------------------------

@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    lists=st.sampled_from([(), ("List-Id",), ("List-Post",), ("List-Id", "List-Post")]),
    arc_fields=st.booleans(),
    arc=st.sampled_from([R.NONE, R.PASS, R.FAIL, R.TEMPERROR]),
    known=st.sampled_from(["", "198.51.100.0/24"]),
    signatures=st.lists(st.tuples(st.sampled_from([R.PASS, R.FAIL, R.PERMERROR, R.TEMPERROR]),
                                  st.sampled_from([AUTHOR, "mail.bank.example", "evil.example",
                                                   ""])), max_size=4),
    mode=st.sampled_from(["evidence", "always", "never"]),
    testing=st.booleans(),
)
def test_no_combination_of_signs_accepts_a_p_reject_failure(
        lists: tuple[str, ...], arc_fields: bool, arc: R, known: str,
        signatures: list[tuple[R, str]], mode: str, testing: bool) -> None:
    """Whatever a forger adds (the sealer is no trusted one here), a DMARC fail under p=reject
    is rejected or quarantined — and rejected under "always"."""
    analysis = failing(signatures=tuple(signatures),
                       marks=Marks(lists, arc_fields, known, True),
                       arc=ArcOutcome(arc, newest_sealer="lists.example")
                       if arc is not R.NONE else NO_ARC,
                       testing=testing,
                       disposition=Policy.QUARANTINE if testing else Policy.REJECT)
    verdict = decide(analysis, ENVELOPE, settings(dmarc_reject=mode))
    assert verdict.action in (Action.REJECT, Action.QUARANTINE)
    if mode == "always" and not testing:
        assert verdict.action is Action.REJECT
    if testing or mode == "never":
        assert verdict.action is Action.QUARANTINE
    if verdict.action is Action.QUARANTINE and not testing and mode == "evidence":
        assert verdict.signs and verdict.reason is Reason.MITIGATING_EVIDENCE
