"""A missing DNS answer tempfails only when some answer it could have had changes the verdict
(issue 15 item 2; docs/POLICY.md "When an answer is missing"), branch by branch, from the
DMARC check through policy.decide."""

from __future__ import annotations

from typing import Any

import pytest

from mailsec_milter import authres
from mailsec_milter.addresses import author_domains
from mailsec_milter.checks.dkim import DkimOutcome, DkimSignatureOutcome
from mailsec_milter.checks.dmarc import DmarcOutcome, DmarcSettings, Policy, check_dmarc
from mailsec_milter.checks.spf import SpfIdentity, SpfOutcome
from mailsec_milter.checks.tls import TlsOutcome
from mailsec_milter.config import settings_from_mapping
from mailsec_milter.dns import StaticResolver
from mailsec_milter.engine import Analysis
from mailsec_milter.evidence import Marks
from mailsec_milter.model import AuthResult, Envelope
from mailsec_milter.policy import Action, Reason, decide

R = AuthResult
ENVELOPE = Envelope(client_ip="192.0.2.7", helo="mail.example", mail_from="x@example")


def spf(result: R = R.NONE, domain: str = "") -> SpfOutcome:
    return SpfOutcome(SpfIdentity.MAILFROM, result, f"x@{domain}", domain)


def dkim(*signatures: tuple[R, str]) -> DkimOutcome:
    return DkimOutcome(tuple(DkimSignatureOutcome(r, d) for r, d in signatures))


def evaluate(zone: str, author: str, spf_outcome: SpfOutcome | None = None,
             dkim_outcome: DkimOutcome | None = None, **dmarc: Any) -> DmarcOutcome:
    return check_dmarc(StaticResolver.from_zone_text(zone), author_domains([f"a@{author}"]),
                       spf_outcome or spf(), dkim_outcome or DkimOutcome(),
                       DmarcSettings(**dmarc))


NO_MARKS = Marks()


def verdict(outcome: DmarcOutcome, marks: Marks = NO_MARKS, **policy: Any) -> Any:
    analysis = Analysis(spf(), None, DkimOutcome(), TlsOutcome(R.NONE), outcome, marks=marks)
    config = settings_from_mapping({"milter": {"authserv_id": "mx.test.example"},
                                    "policy": policy})
    return decide(analysis, ENVELOPE, config), analysis


DISCOVERY_DOWN = """
_dmarc.bank.example. TXT TIMEOUT
"""


# --- discovery failed: an identifier equal to the author domain passes under any record ----------

def test_dkim_d_equal_to_the_author_passes_although_dmarc_timed_out() -> None:
    outcome = evaluate(DISCOVERY_DOWN, "bank.example",
                       dkim_outcome=dkim((R.PASS, "bank.example")))
    assert outcome.result is R.PASS and outcome.dkim_aligned == ("bank.example",)
    assert outcome.policy is None and "any record" in outcome.reason
    decided, analysis = verdict(outcome)
    assert decided.action is Action.ACCEPT and decided.reason is Reason.DMARC_PASS
    (dmarc,) = [r for r in authres.results_for(analysis, decided) if r.method == "dmarc"]
    assert dmarc.result == "pass"
    assert "any record" in dmarc.comment and "timeout" in dmarc.comment  # the header says why


def test_spf_mail_from_equal_to_the_author_passes_although_dmarc_timed_out() -> None:
    outcome = evaluate(DISCOVERY_DOWN, "bank.example", spf(R.PASS, "bank.example"))
    assert outcome.result is R.PASS and outcome.spf_aligned
    assert verdict(outcome)[0].action is Action.ACCEPT


@pytest.mark.parametrize(("why", "spf_outcome", "dkim_outcome"), [
    ("dkim d= a subdomain: adkim=s would not align", spf(),
     dkim((R.PASS, "mail.bank.example"))),
    ("dkim d= the parent: adkim=s would not align", spf(), dkim((R.PASS, "example"))),
    ("spf for a subdomain: aspf=s would not align", spf(R.PASS, "bounce.bank.example"),
     DkimOutcome()),
    ("the identical signature failed", spf(), dkim((R.FAIL, "bank.example"))),
    ("spf softfail for the author", spf(R.SOFTFAIL, "bank.example"), DkimOutcome()),
    ("nothing passes", spf(), DkimOutcome()),
])
def test_anything_less_than_identical_still_tempfails(why: str, spf_outcome: SpfOutcome,
                                                      dkim_outcome: DkimOutcome) -> None:
    outcome = evaluate(DISCOVERY_DOWN, "bank.example", spf_outcome, dkim_outcome)
    assert outcome.result is R.TEMPERROR, why
    decided, _ = verdict(outcome)
    assert decided.action is Action.TEMPFAIL and decided.reason is Reason.DNS_TEMPERROR, why


def test_discovery_failed_under_an_accept_override_cannot_matter() -> None:
    outcome = evaluate(DISCOVERY_DOWN, "bank.example")
    decided, _ = verdict(outcome, domain_overrides={"bank.example": "accept"})
    assert decided.action is Action.ACCEPT


def test_discovery_failed_in_never_mode_still_matters() -> None:
    # no record would accept, a p=reject record would quarantine: the answer decides
    decided, _ = verdict(evaluate(DISCOVERY_DOWN, "bank.example"), dmarc_reject="never")
    assert decided.action is Action.TEMPFAIL


def test_identical_pass_after_a_tree_walk_failure() -> None:
    zone = """
    _dmarc.example. TXT TIMEOUT
    """
    outcome = evaluate(zone, "bank.example", dkim_outcome=dkim((R.PASS, "bank.example")))
    assert outcome.result is R.PASS


def test_identical_pass_in_rfc7489_mode() -> None:
    outcome = evaluate(DISCOVERY_DOWN, "bank.example",
                       dkim_outcome=dkim((R.PASS, "bank.example")), mode="rfc7489")
    assert outcome.result is R.PASS


# --- the np existence test failed ----------------------------------------------------------------

def np_zone(record: str) -> str:
    return f"""
    _dmarc.bank.example. TXT "{record}"
    ghost.bank.example. A TIMEOUT
    ghost.bank.example. AAAA TIMEOUT
    ghost.bank.example. MX TIMEOUT
    """


def test_np_unknown_but_sp_and_np_agree_is_a_plain_fail() -> None:
    outcome = evaluate(np_zone("v=DMARC1; p=none; sp=reject; np=reject"), "ghost.bank.example")
    assert outcome.result is R.FAIL and outcome.policy is Policy.REJECT
    assert verdict(outcome)[0].action is Action.REJECT


def test_np_unknown_and_sp_np_differ_tempfails() -> None:
    outcome = evaluate(np_zone("v=DMARC1; p=reject; sp=quarantine; np=reject"),
                       "ghost.bank.example")
    assert outcome.result is R.TEMPERROR and not outcome.pass_possible
    assert set(outcome.possible_dispositions) == {Policy.QUARANTINE, Policy.REJECT}
    assert verdict(outcome)[0].action is Action.TEMPFAIL


def test_np_unknown_where_every_answer_quarantines_quarantines() -> None:
    outcome = evaluate(np_zone("v=DMARC1; p=reject; sp=quarantine; np=reject"),
                       "ghost.bank.example")
    never, _ = verdict(outcome, dmarc_reject="never")
    assert never.action is Action.QUARANTINE and "every possible answer" in never.detail
    # evidence mode with a sign: reject would become quarantine too
    listed, _ = verdict(outcome, Marks(list_fields=("List-Id",)))
    assert listed.action is Action.QUARANTINE


def test_np_unknown_with_t_y_where_both_step_down_to_none_accepts() -> None:
    outcome = evaluate(np_zone("v=DMARC1; p=reject; sp=none; np=quarantine; t=y"),
                       "ghost.bank.example")
    assert outcome.result is R.TEMPERROR
    assert set(outcome.possible_dispositions) == {Policy.NONE}
    decided, _ = verdict(outcome)
    assert decided.action is Action.ACCEPT


# --- alignment unknown ---------------------------------------------------------------------------

ALIGNMENT_DOWN = """
_dmarc.bank.example. TXT "{record}"
_dmarc.mail.bank.example. TXT TIMEOUT
"""


def alignment_unknown(record: str) -> DmarcOutcome:
    # d=mail.bank.example passes; whether it aligns needs its own Tree Walk, which times out
    return evaluate(ALIGNMENT_DOWN.format(record=record), "bank.example",
                    dkim_outcome=dkim((R.PASS, "mail.bank.example")))


def test_alignment_unknown_under_reject_tempfails() -> None:
    outcome = alignment_unknown("v=DMARC1; p=reject")
    assert outcome.result is R.TEMPERROR and outcome.pass_possible
    assert verdict(outcome)[0].action is Action.TEMPFAIL


def test_alignment_unknown_under_p_none_accepts() -> None:
    decided, _ = verdict(alignment_unknown("v=DMARC1; p=none"))
    assert decided.action is Action.ACCEPT and decided.reason is Reason.NO_POLICY


def test_alignment_unknown_under_quarantine_t_y_accepts() -> None:
    """p=quarantine; t=y evaluates to none: pass or fail, the message is accepted (this used
    to tempfail because the published policy was not none)."""
    outcome = alignment_unknown("v=DMARC1; p=quarantine; t=y")
    assert outcome.possible_dispositions == (Policy.NONE,)
    assert verdict(outcome)[0].action is Action.ACCEPT


def test_alignment_unknown_in_never_mode_still_matters() -> None:
    # pass would accept, fail would quarantine
    assert verdict(alignment_unknown("v=DMARC1; p=reject"),
                   dmarc_reject="never")[0].action is Action.TEMPFAIL


def test_alignment_unknown_accepted_when_configured() -> None:
    decided, _ = verdict(alignment_unknown("v=DMARC1; p=reject"), on_dns_temperror="accept")
    assert decided.action is Action.ACCEPT
