"""What DMARC aggregate reports (RFC 9990 §3) need from one message, as one small record.

Owns: turning an analysed, decided message into the RFC 9990 record tuple of every author
domain whose DMARC Policy Record was found — row (source IP, evaluated disposition, DMARC
dkim/spf, override reasons), identifiers (header_from, envelope_from), auth_results (every
attempted DKIM signature in §3.1.3 priority order, the MAIL FROM SPF result) and the policy
as published — plus the UTC day it belongs to. The store aggregates equal tuples with a count.
Must not: do I/O, log, or be called before the verdict is decided (it runs on the recorder's
writer thread, off the reply path).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime

from ..checks.dmarc import DmarcOutcome, DomainEvaluation
from ..engine import Analysis
from ..model import AuthResult, Envelope
from ..policy import SIGN_OVERRIDE, Action, OverrideReason, Reason, Verdict

MAX_DKIM_PER_ROW = 100  # RFC 9990 §3.1.3: "no more than 100 signatures for a given row"


class ReasonType:
    """RFC 9990 §3.1.6 PolicyOverrideType words used in reports."""

    LOCAL_POLICY = "local_policy"
    MAILING_LIST = "mailing_list"
    TRUSTED_FORWARDER = "trusted_forwarder"
    POLICY_TEST_MODE = "policy_test_mode"


@dataclass(frozen=True)
class PublishedPolicy:
    """RFC 9990 §3.1.1.5 policy_published, as discovered (defaults filled in)."""

    domain: str
    discovery_method: str  # "treewalk" (RFC 9989) or "psl" (RFC 7489)
    p: str
    sp: str
    np: str
    adkim: str
    aspf: str
    testing: str  # "y" / "n"


@dataclass(frozen=True)
class ReportRecord:
    """One message's contribution to one policy domain's report (an RFC 9990 record tuple)."""

    day: date
    policy_domain: str
    rua: str
    published: PublishedPolicy
    source_ip: str
    header_from: str
    envelope_from: str
    disposition: str  # none / quarantine / reject: what was applied (§3.1.1.9)
    dmarc_dkim: str  # pass / fail
    dmarc_spf: str  # pass / fail
    reasons: tuple[tuple[str, str], ...] = ()  # (type, comment)
    dkim: tuple[tuple[str, str, str], ...] = ()  # (domain, selector, result), priority order
    spf: tuple[str, str, str] | None = None  # (domain, scope, result)

    def tuple_json(self) -> str:
        """The aggregation key's canonical text (everything but the day and the count)."""
        return json.dumps([
            self.policy_domain, self.rua, list(vars(self.published).values()), self.source_ip,
            self.header_from, self.envelope_from, self.disposition, self.dmarc_dkim,
            self.dmarc_spf, [list(r) for r in self.reasons], [list(d) for d in self.dkim],
            list(self.spf) if self.spf else None,
        ], ensure_ascii=False, separators=(",", ":"))

    def tuple_key(self) -> str:
        """A short fixed-size key for the aggregation index."""
        return hashlib.sha256(self.tuple_json().encode("utf-8")).hexdigest()[:32]


_APPLIED = {Action.ACCEPT: "none", Action.QUARANTINE: "quarantine", Action.REJECT: "reject",
            Action.TEMPFAIL: "none"}


def records_for(envelope: Envelope, analysis: Analysis, verdict: Verdict,
                now: datetime | None = None) -> tuple[ReportRecord, ...]:
    """The records one message contributes: one per author domain whose DMARC Policy Record
    was found and evaluated (none for a tempfailed message: it will come again)."""
    dmarc = analysis.dmarc
    if dmarc is None or verdict.action is Action.TEMPFAIL or not envelope.client_ip:
        return ()
    day = (now or datetime.now(UTC)).astimezone(UTC).date()
    out = []
    for evaluation in dmarc.evaluations:
        if evaluation.record is None or not evaluation.policy_domain:
            continue
        if evaluation.result not in (AuthResult.PASS, AuthResult.FAIL):
            continue  # temperror/permerror: no evaluated result to report
        out.append(_record(day, envelope, analysis, verdict, dmarc, evaluation))
    return tuple(out)


def _record(day: date, envelope: Envelope, analysis: Analysis, verdict: Verdict,
            dmarc: DmarcOutcome, evaluation: DomainEvaluation) -> ReportRecord:
    record = evaluation.record
    assert record is not None  # records_for() only passes evaluations with a record
    author = evaluation.domain
    decisive = evaluation.domain == dmarc.header_from
    disposition = _APPLIED[verdict.action] if decisive else (
        evaluation.disposition.value if evaluation.disposition else "none")
    if evaluation.result is AuthResult.PASS:
        # ActionDispositionType: "pass" = no action, passing DMARC under an enforcing policy
        enforcing = evaluation.policy is not None and evaluation.policy.value != "none"
        disposition = "pass" if enforcing else "none"
    mail_domain = envelope.mail_from.rpartition("@")[2].lower() if envelope.mail_from else ""
    spf = analysis.spf_mailfrom
    return ReportRecord(
        day=day,
        policy_domain=evaluation.policy_domain or author,
        rua=record.rua or "",
        published=PublishedPolicy(
            domain=evaluation.policy_domain or author,
            discovery_method="psl" if dmarc.mode == "rfc7489" else "treewalk",
            p=record.p.value, sp=record.sp.value, np=record.np.value,
            adkim=record.adkim.value, aspf=record.aspf.value,
            testing="y" if record.t else "n"),
        source_ip=envelope.client_ip or "",
        header_from=author,
        envelope_from=mail_domain,
        disposition=disposition,
        dmarc_dkim="pass" if evaluation.dkim_aligned else "fail",
        dmarc_spf="pass" if evaluation.spf_aligned else "fail",
        reasons=_reasons(verdict, evaluation) if decisive else (),
        dkim=_dkim_results(analysis, evaluation),
        spf=(spf.domain or mail_domain, "mfrom", spf.result.value) if spf.domain else None,
    )


def _reasons(verdict: Verdict, evaluation: DomainEvaluation) -> tuple[tuple[str, str], ...]:
    """RFC 9990 §3.1.6 override reasons for the applied disposition."""
    reasons: list[tuple[str, str]] = []
    if evaluation.testing and evaluation.policy is not None \
            and evaluation.disposition is not evaluation.policy:
        reasons.append((ReasonType.POLICY_TEST_MODE, "t=y"))
    override = verdict.override_reason
    if verdict.signs:
        # RFC 9989 §8 signs: one reason per type, each naming its signs (the comment of the
        # A-R header says what showed each one)
        for kind in (OverrideReason.MAILING_LIST, OverrideReason.LOCAL_POLICY):
            names = [sign.value for sign in verdict.signs if SIGN_OVERRIDE[sign] is kind]
            if names:
                reasons.append((kind.value, "RFC 9989 section 8: " + ", ".join(names)))
    elif override is OverrideReason.TRUSTED_FORWARDER:
        reasons.append((ReasonType.TRUSTED_FORWARDER, verdict.override_detail[:200]))
    elif override is OverrideReason.LOCAL_POLICY or verdict.reason is Reason.LOCAL_OVERRIDE:
        reasons.append((ReasonType.LOCAL_POLICY, verdict.override_detail[:200]))
    elif override is OverrideReason.MAILING_LIST:
        reasons.append((ReasonType.MAILING_LIST, verdict.override_detail[:200]))
    return tuple(reasons)


def _dkim_results(analysis: Analysis, evaluation: DomainEvaluation
                  ) -> tuple[tuple[str, str, str], ...]:
    """Every attempted signature, in RFC 9990 §3.1.3 order: passing and strictly aligned,
    passing and relaxed-aligned, other passes, the rest; at most 100."""
    author = evaluation.domain

    def rank(signature: tuple[str, str, AuthResult]) -> int:
        domain, _selector, result = signature
        if result is not AuthResult.PASS:
            return 3
        if domain == author:
            return 0
        return 1 if domain in evaluation.dkim_aligned else 2

    signatures = [(s.domain.lower().rstrip("."), s.selector, s.result)
                  for s in analysis.dkim.signatures]
    ordered = sorted(signatures, key=rank)
    return tuple((d, sel, r.value) for d, sel, r in ordered[:MAX_DKIM_PER_ROW])
