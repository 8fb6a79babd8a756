"""The decision table of policy.decide(), row by row (docs/POLICY.md lists the same rows)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from mailsec_milter.checks.arc import ArcOutcome, ArcSet
from mailsec_milter.checks.dkim import DkimOutcome, DkimSignatureOutcome
from mailsec_milter.checks.dmarc import DmarcOutcome, DomainEvaluation, Policy
from mailsec_milter.checks.spf import SpfIdentity, SpfOutcome
from mailsec_milter.checks.tls import TlsOutcome
from mailsec_milter.config import settings_from_mapping
from mailsec_milter.engine import Analysis, CheckError
from mailsec_milter.evidence import Marks
from mailsec_milter.model import AuthResult, Envelope, normalise_ip
from mailsec_milter.policy import (
    ACTIONS_FOR_REASON,
    Action,
    OverrideReason,
    Reason,
    decide,
    possible_dry_run_verdicts,
    possible_verdicts,
)

R = AuthResult
DOMAIN = "bank.example"


def dmarc(result: AuthResult, policy: Policy | None = Policy.REJECT,
          disposition: Policy | None = None, *, testing: bool = False,
          sampled: bool | None = None, domain: str = DOMAIN) -> DmarcOutcome:
    if disposition is None and result is R.FAIL:
        disposition = policy
    return DmarcOutcome(result, header_from=domain, policy=policy, testing=testing,
                        disposition=disposition, sampled=sampled,
                        evaluations=(DomainEvaluation(domain, result, policy=policy),),
                        reason="test")


def analysis(dmarc_outcome: DmarcOutcome | None, *, spf: AuthResult = R.FAIL,
             tls: bool = False, errors: tuple[CheckError, ...] = ()) -> Analysis:
    return Analysis(
        spf_mailfrom=SpfOutcome(SpfIdentity.MAILFROM, spf, "x@evil.example", "evil.example"),
        spf_helo=None,
        # a failing signature by someone else's domain: not an RFC 9989 §8 sign (a failing
        # *aligned* one is: tests/unit/test_evidence.py)
        dkim=DkimOutcome((DkimSignatureOutcome(R.FAIL, domain="evil.example"),)),
        tls=TlsOutcome(R.PASS, "TLSv1.3", "X", 256) if tls else TlsOutcome(R.NONE),
        dmarc=dmarc_outcome, errors=errors)


ENVELOPE = Envelope(client_ip="198.51.100.7", helo="evil.example", mail_from="x@evil.example")


def settings(**policy: Any) -> Any:
    return settings_from_mapping({"milter": {"authserv_id": "mx.test.example"},
                                  "policy": policy})


def test_row_authenticated_submitter_is_never_enforced() -> None:
    env = Envelope(client_ip="198.51.100.7", sasl_user="alice")
    verdict = decide(analysis(dmarc(R.FAIL)), env, settings())
    assert verdict.action is Action.ACCEPT and verdict.reason is Reason.AUTHENTICATED
    assert verdict.evaluated_disposition == "reject" and verdict.applied_disposition == "none"
    assert verdict.override_reason is OverrideReason.LOCAL_POLICY


def test_row_authenticated_submitter_enforced_when_switched_off() -> None:
    env = Envelope(client_ip="198.51.100.7", sasl_user="alice")
    verdict = decide(analysis(dmarc(R.FAIL)), env, settings(skip_authenticated=False))
    assert verdict.action is Action.REJECT


def test_row_trusted_network() -> None:
    verdict = decide(analysis(dmarc(R.FAIL)), ENVELOPE,
                     settings(trusted_networks=["198.51.100.0/24"]))
    assert verdict.action is Action.ACCEPT and verdict.reason is Reason.TRUSTED_NETWORK
    assert verdict.override_reason is OverrideReason.TRUSTED_FORWARDER
    untrusted = decide(analysis(dmarc(R.FAIL)), ENVELOPE,
                       settings(trusted_networks=["192.0.2.0/24"]))
    assert untrusted.action is Action.REJECT


@pytest.mark.parametrize("client_ip", ["127.0.0.1", "127.0.0.2", "::1"])
def test_row_trusted_network_loopback_by_default(client_ip: str) -> None:
    """Postfix hands sendmail(1)/pickup mail over as localhost[127.0.0.1] (or ::1): not inbound."""
    env = Envelope(client_ip=client_ip, helo="localhost", mail_from=f"ceo@{DOMAIN}")
    verdict = decide(analysis(dmarc(R.FAIL)), env, settings())
    assert verdict.action is Action.ACCEPT and verdict.reason is Reason.TRUSTED_NETWORK
    # Still checked and recorded: the evaluated reject, not applied, and why.
    assert verdict.evaluated_disposition == "reject" and verdict.applied_disposition == "none"
    assert verdict.override_reason is OverrideReason.TRUSTED_FORWARDER
    network = "::1/128" if ":" in client_ip else "127.0.0.0/8"
    assert verdict.override_detail == f"trusted network {network}"


@pytest.mark.parametrize("client_ip", ["198.51.100.7", "128.0.0.1", "::2"])
def test_row_trusted_network_default_is_loopback_only(client_ip: str) -> None:
    env = Envelope(client_ip=client_ip, helo="evil.example", mail_from="x@evil.example")
    assert decide(analysis(dmarc(R.FAIL)), env, settings()).action is Action.REJECT


def test_row_trusted_network_loopback_reported_ipv4_mapped_is_trusted() -> None:
    """A dual-stack socket reports ::ffff:127.0.0.1; the adapter normalises it first."""
    env = Envelope(client_ip=normalise_ip("::ffff:127.0.0.1"), helo="localhost",
                   mail_from=f"ceo@{DOMAIN}")
    assert decide(analysis(dmarc(R.FAIL)), env, settings()).reason is Reason.TRUSTED_NETWORK


def test_row_trusted_network_emptied_enforces_on_loopback() -> None:
    """trusted_networks = [] is the setting for a content filter re-injecting via loopback."""
    env = Envelope(client_ip="127.0.0.1", helo="localhost", mail_from="x@evil.example")
    verdict = decide(analysis(dmarc(R.FAIL)), env, settings(trusted_networks=[]))
    assert verdict.action is Action.REJECT and verdict.reason is Reason.DMARC_POLICY


def test_row_internal_error_tempfails_by_default() -> None:
    crashed = analysis(dmarc(R.PASS), errors=(CheckError("dkim", "boom"),))
    verdict = decide(crashed, ENVELOPE, settings())
    assert verdict.action is Action.TEMPFAIL and verdict.reason is Reason.INTERNAL_ERROR
    assert verdict.reply is not None and verdict.reply.code == "451"
    assert decide(crashed, ENVELOPE, settings(on_internal_error="accept")).action is Action.ACCEPT


@pytest.mark.parametrize("policy", [None, Policy.REJECT, Policy.QUARANTINE])
def test_row_dmarc_temperror_that_could_matter_tempfails(policy: Policy | None) -> None:
    verdict = decide(analysis(dmarc(R.TEMPERROR, policy)), ENVELOPE, settings())
    assert verdict.action is Action.TEMPFAIL and verdict.reason is Reason.DNS_TEMPERROR
    assert verdict.reply is not None and verdict.reply.status.startswith("4.")


def test_row_dmarc_temperror_under_p_none_cannot_matter() -> None:
    verdict = decide(analysis(dmarc(R.TEMPERROR, Policy.NONE)), ENVELOPE, settings())
    assert verdict.action is Action.ACCEPT and verdict.reason is Reason.NO_POLICY


def test_row_dmarc_temperror_accept_when_configured() -> None:
    verdict = decide(analysis(dmarc(R.TEMPERROR, None)), ENVELOPE,
                     settings(on_dns_temperror="accept"))
    assert verdict.action is Action.ACCEPT


def test_row_dmarc_reject() -> None:
    verdict = decide(analysis(dmarc(R.FAIL)), ENVELOPE, settings())
    assert verdict.action is Action.REJECT and verdict.reason is Reason.DMARC_POLICY
    assert verdict.reply is not None
    assert (verdict.reply.code, verdict.reply.status) == ("550", "5.7.1")
    assert DOMAIN in verdict.reply.text
    assert "spf=fail" in verdict.reply.text and "dkim=fail" in verdict.reply.text
    assert (verdict.published_policy, verdict.evaluated_disposition,
            verdict.applied_disposition) == ("reject", "reject", "reject")
    assert verdict.override_reason is None


def test_row_dmarc_quarantine() -> None:
    verdict = decide(analysis(dmarc(R.FAIL, Policy.QUARANTINE)), ENVELOPE, settings())
    assert verdict.action is Action.QUARANTINE and verdict.reason is Reason.DMARC_POLICY


def test_row_testing_mode_disposition_is_what_dmarc_evaluated() -> None:
    # check_dmarc already stepped t=y down (reject → quarantine); policy applies it as is.
    outcome = dmarc(R.FAIL, Policy.REJECT, Policy.QUARANTINE, testing=True)
    verdict = decide(analysis(outcome), ENVELOPE, settings())
    assert verdict.action is Action.QUARANTINE
    assert verdict.published_policy == "reject" and verdict.evaluated_disposition == "quarantine"


def test_row_dmarc_fail_under_p_none_is_accepted() -> None:
    verdict = decide(analysis(dmarc(R.FAIL, Policy.NONE)), ENVELOPE, settings())
    assert verdict.action is Action.ACCEPT and verdict.applied_disposition == "none"


def test_row_override_forces_reject_for_a_p_none_domain() -> None:
    verdict = decide(analysis(dmarc(R.FAIL, Policy.NONE)), ENVELOPE,
                     settings(domain_overrides={DOMAIN: "reject"}))
    assert verdict.action is Action.REJECT and verdict.reason is Reason.LOCAL_OVERRIDE
    assert verdict.override_reason is OverrideReason.LOCAL_POLICY
    assert verdict.applied_disposition == "reject"


def test_row_override_never_reject_for_a_partner() -> None:
    verdict = decide(analysis(dmarc(R.FAIL)), ENVELOPE,
                     settings(domain_overrides={DOMAIN: "never_reject"}))
    assert verdict.action is Action.QUARANTINE and verdict.reason is Reason.LOCAL_OVERRIDE


def test_row_override_accept() -> None:
    verdict = decide(analysis(dmarc(R.FAIL)), ENVELOPE,
                     settings(domain_overrides={DOMAIN: "accept"}))
    assert verdict.action is Action.ACCEPT and verdict.applied_disposition == "none"


def test_row_override_of_another_domain_does_not_apply() -> None:
    verdict = decide(analysis(dmarc(R.FAIL)), ENVELOPE,
                     settings(domain_overrides={"other.example": "accept"}))
    assert verdict.action is Action.REJECT


def test_row_downgrade_reject() -> None:
    verdict = decide(analysis(dmarc(R.FAIL)), ENVELOPE, settings(downgrade_reject=True))
    assert verdict.action is Action.QUARANTINE and verdict.reason is Reason.LOCAL_OVERRIDE
    assert verdict.applied_disposition == "quarantine"


def test_row_reject_on_spf_fail_is_off_by_default() -> None:
    verdict = decide(analysis(dmarc(R.NONE, None)), ENVELOPE, settings())
    assert verdict.action is Action.ACCEPT


def test_row_reject_on_spf_fail_when_dmarc_did_not_pass() -> None:
    verdict = decide(analysis(dmarc(R.NONE, None)), ENVELOPE, settings(reject_on_spf_fail=True))
    assert verdict.action is Action.REJECT and verdict.reason is Reason.SPF_FAIL
    assert verdict.reply is not None and verdict.reply.status == "5.7.23"


def test_row_reject_on_spf_fail_not_when_dmarc_passed() -> None:
    verdict = decide(analysis(dmarc(R.PASS)), ENVELOPE, settings(reject_on_spf_fail=True))
    assert verdict.action is Action.ACCEPT and verdict.reason is Reason.DMARC_PASS


def test_row_spf_temperror_with_reject_on_spf_fail_tempfails() -> None:
    verdict = decide(analysis(dmarc(R.NONE, None), spf=R.TEMPERROR), ENVELOPE,
                     settings(reject_on_spf_fail=True))
    assert verdict.action is Action.TEMPFAIL and verdict.reason is Reason.DNS_TEMPERROR


def test_row_tls_required() -> None:
    plaintext = decide(analysis(dmarc(R.PASS)), ENVELOPE,
                       settings(tls_required_domains=[DOMAIN]))
    assert plaintext.action is Action.REJECT and plaintext.reason is Reason.TLS_REQUIRED
    assert plaintext.reply is not None and plaintext.reply.status == "5.7.10"
    encrypted = decide(analysis(dmarc(R.PASS), tls=True), ENVELOPE,
                       settings(tls_required_domains=[DOMAIN]))
    assert encrypted.action is Action.ACCEPT


def test_row_dry_run_accepts_and_records_the_would_be_verdict() -> None:
    verdict = decide(analysis(dmarc(R.FAIL)), ENVELOPE, settings(dry_run=True))
    assert verdict.action is Action.ACCEPT and verdict.reply is None
    assert verdict.dry_run_action is Action.REJECT and verdict.reason is Reason.DMARC_POLICY
    assert verdict.applied_disposition == "none"


def test_row_dmarc_pass_and_none() -> None:
    assert decide(analysis(dmarc(R.PASS)), ENVELOPE, settings()).reason is Reason.DMARC_PASS
    assert decide(analysis(dmarc(R.NONE, None)), ENVELOPE, settings()).reason is Reason.NO_POLICY
    assert decide(analysis(None), ENVELOPE, settings()).action is Action.ACCEPT


def test_row_permerror_is_not_enforced() -> None:
    verdict = decide(analysis(dmarc(R.PERMERROR, None)), ENVELOPE, settings())
    assert verdict.action is Action.ACCEPT


def test_the_strictest_candidate_wins() -> None:
    verdict = decide(analysis(dmarc(R.FAIL, Policy.QUARANTINE)), ENVELOPE,
                     settings(tls_required_domains=[DOMAIN]))
    assert verdict.action is Action.REJECT and verdict.reason is Reason.TLS_REQUIRED


def test_rfc7489_sampled_out_is_recorded() -> None:
    outcome = dmarc(R.FAIL, Policy.REJECT, Policy.QUARANTINE, sampled=False)
    verdict = decide(analysis(outcome), ENVELOPE, settings())
    assert verdict.action is Action.QUARANTINE
    assert verdict.override_reason is OverrideReason.SAMPLED_OUT


def test_reply_templates_are_validated_at_load() -> None:
    from mailsec_milter.config import ConfigError

    with pytest.raises(ConfigError, match=r"\[policy\] reject_reply: unknown placeholder"):
        settings(reject_reply="550 5.7.1 {sender} is bad")
    with pytest.raises(ConfigError, match=r"\[policy\] reject_reply: this reply must be a 5xx"):
        settings(reject_reply="451 4.7.1 later")
    with pytest.raises(ConfigError, match=r"\[policy\] domain_overrides: bank.example"):
        settings(domain_overrides={"bank.example": "drop"})


def test_hostile_domain_text_cannot_break_the_reply_line() -> None:
    verdict = decide(analysis(dmarc(R.FAIL, domain="evil\r\n250 ok.example")), ENVELOPE,
                     settings())
    assert verdict.reply is not None
    assert "\r" not in verdict.reply.text and "\n" not in verdict.reply.text


SEALER = "lists.example"
ARC_PASS = ArcOutcome(AuthResult.PASS, 1, 1, (ArcSet(1, SEALER, True, True, "none",
                                                     (("dmarc", "pass"),), DOMAIN),), SEALER)
ARC_TEMPERROR = ArcOutcome(AuthResult.TEMPERROR, 1, newest_sealer=SEALER)


def every_verdict(dry_run: bool) -> set[tuple[Action, Reason, Action | None]]:
    """decide() over a grid of inputs that reaches every row of the table."""
    outcomes: list[DmarcOutcome | None] = [
        None, dmarc(R.PASS), dmarc(R.NONE, None), dmarc(R.PERMERROR, None),
        # rows 5a/5b: too many author domains; not one readable
        replace(dmarc(R.PERMERROR, None), incomplete=True), DmarcOutcome(R.PERMERROR)]
    for policy in (Policy.REJECT, Policy.QUARANTINE, Policy.NONE, None):
        outcomes.append(dmarc(R.TEMPERROR, policy))
        if policy is not None:
            outcomes.append(dmarc(R.FAIL, policy))
            outcomes.append(dmarc(R.FAIL, policy, Policy.NONE, sampled=False))
    envelopes = [ENVELOPE, Envelope(client_ip="198.51.100.7", sasl_user="alice"),
                 Envelope(client_ip="192.0.2.1")]
    configurations: list[dict[str, Any]] = [
        {}, {"reject_on_spf_fail": True}, {"tls_required_domains": [DOMAIN]},
        {"on_internal_error": "accept"}, {"on_dns_temperror": "accept"},
        {"downgrade_reject": True}, {"trusted_networks": ["192.0.2.0/24"]},
        {"trusted_arc_sealers": [SEALER]}, {"skip_authenticated": False},
        {"unusable_from": "reject"}, {"unusable_from": "accept"},
        *({"domain_overrides": {DOMAIN: o}} for o in ("reject", "quarantine", "never_reject",
                                                        "accept"))]
    seen: set[tuple[Action, Reason, Action | None]] = set()
    for config in configurations:
        chosen = settings(**config, dry_run=dry_run)
        for outcome in outcomes:
            for spf in (R.FAIL, R.PASS, R.TEMPERROR):
                for arc, marks in ((ArcOutcome(), Marks()), (ARC_PASS, Marks()),
                                   (ARC_TEMPERROR, Marks()),
                                   (ArcOutcome(), Marks(list_fields=("List-Id",)))):
                    for errors in ((), (CheckError("dkim", "boom"),)):
                        for tls in (False, True):
                            message = replace(analysis(outcome, spf=spf, tls=tls,
                                                       errors=errors), arc=arc, marks=marks)
                            for envelope in envelopes:
                                verdict = decide(message, envelope, chosen)
                                seen.add((verdict.action, verdict.reason,
                                          verdict.dry_run_action))
    return seen


def test_the_table_of_possible_verdicts_is_exactly_what_decide_returns() -> None:
    """The metrics create exactly these (verdict, reason) series: a pair decide() returns
    that is missing would appear late; a pair it never returns would be a series stuck at 0."""
    table = {(action, reason) for reason, actions in ACTIONS_FOR_REASON.items()
             for action in actions}
    assert set(ACTIONS_FOR_REASON) == set(Reason)
    assert {(action, reason) for action, reason, _ in every_verdict(False)} == table


def test_dry_run_verdicts_are_among_the_possible_ones() -> None:
    seen = every_verdict(True)
    assert {(action, reason) for action, reason, _ in seen} <= set(possible_verdicts())
    would = {(would, reason) for _, reason, would in seen if would is not None}
    assert would == set(possible_dry_run_verdicts())
