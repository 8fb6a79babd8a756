"""The words a reject text's ``{failed}`` and ``check`` use for each identity (issue 13).

Alignment is said of passes only: a failed SPF for the author's own domain is a fail, and a
DKIM pass for another domain is named as not aligned, the reason it did not count.
"""

from __future__ import annotations

from mailsec_milter.checks.dkim import DkimOutcome, DkimSignatureOutcome
from mailsec_milter.checks.dmarc import DmarcOutcome, DomainEvaluation, Policy
from mailsec_milter.checks.spf import SpfIdentity, SpfOutcome
from mailsec_milter.checks.tls import TlsOutcome
from mailsec_milter.config import settings_from_mapping
from mailsec_milter.engine import Analysis
from mailsec_milter.model import AuthResult, Envelope
from mailsec_milter.policy import Action, decide, explain_identities

R = AuthResult
# "always": these tests are about the reject text; under the default "evidence" a failing
# aligned signature (one of them below) would quarantine instead (docs/POLICY.md row 6a).
SETTINGS = settings_from_mapping({"milter": {"authserv_id": "mx.test.example"},
                                  "policy": {"dmarc_reject": "always"}})
ENVELOPE = Envelope(client_ip="198.51.100.7", helo="mail.bank.example",
                    mail_from="x@bank.example")


def rejected_text(spf: SpfOutcome, *signatures: DkimSignatureOutcome,
                  spf_aligned: bool = False, dkim_aligned: tuple[str, ...] = ()) -> str:
    outcome = DmarcOutcome(R.FAIL, header_from="bank.example", policy=Policy.REJECT,
                           disposition=Policy.REJECT, spf_aligned=spf_aligned,
                           dkim_aligned=dkim_aligned,
                           evaluations=(DomainEvaluation("bank.example", R.FAIL,
                                                         policy=Policy.REJECT),))
    analysis = Analysis(spf_mailfrom=spf, spf_helo=None, dkim=DkimOutcome(signatures),
                        tls=TlsOutcome(R.NONE), dmarc=outcome)
    verdict = decide(analysis, ENVELOPE, SETTINGS)
    assert verdict.action is Action.REJECT and verdict.reply is not None
    assert explain_identities(analysis) in verdict.reply.text
    return verdict.reply.text


def spf(result: AuthResult, domain: str) -> SpfOutcome:
    return SpfOutcome(SpfIdentity.MAILFROM, result, f"x@{domain}", domain)


def test_a_same_domain_spf_fail_is_a_fail_not_an_alignment_problem() -> None:
    text = rejected_text(spf(R.FAIL, "bank.example"))
    assert "spf=fail (mailfrom bank.example)" in text
    assert "aligned" not in text


def test_an_spf_pass_for_another_domain_is_not_aligned() -> None:
    text = rejected_text(spf(R.PASS, "list.example"))
    assert "spf=pass (mailfrom list.example, not aligned)" in text


def test_an_unaligned_dkim_pass_says_so() -> None:
    text = rejected_text(spf(R.SOFTFAIL, "bank.example"),
                         DkimSignatureOutcome(R.PASS, domain="list.example"),
                         DkimSignatureOutcome(R.FAIL, domain="bank.example"))
    assert "dkim=pass (d=list.example, not aligned)" in text
    assert text.endswith("dkim=fail (d=bank.example)")


def test_an_aligned_pass_is_named_aligned() -> None:
    outcome = DmarcOutcome(R.PASS, header_from="bank.example", dkim_aligned=("bank.example",))
    analysis = Analysis(spf_mailfrom=spf(R.FAIL, "bank.example"), spf_helo=None,
                        dkim=DkimOutcome((DkimSignatureOutcome(R.PASS, domain="Bank.Example"),)),
                        tls=TlsOutcome(R.NONE), dmarc=outcome)
    assert explain_identities(analysis) == (
        "spf=fail (mailfrom bank.example), dkim=pass (d=Bank.Example, aligned)")


def test_without_dmarc_nothing_is_said_about_alignment() -> None:
    analysis = Analysis(spf_mailfrom=spf(R.PASS, "list.example"), spf_helo=None,
                        dkim=DkimOutcome(()), tls=TlsOutcome(R.NONE), dmarc=None)
    assert explain_identities(analysis) == "spf=pass (mailfrom list.example), dkim=none"
