"""The one place a verdict is decided: accept, quarantine, reject or tempfail, and why.

Owns: the decision table (docs/POLICY.md shows it row by row) from an Analysis, the envelope
and the settings to a Verdict with a closed reason, the sender's published policy, the
evaluated and the applied disposition, and any local override; which marks of a message are
signs of a legitimate indirect flow or a known sender (RFC 9989 §8), and whether a missing DNS
answer could change the verdict.
Must not: do I/O (the sending history arrives in the Analysis, read from memory), render
headers, or call the MTA.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from enum import StrEnum

from .addresses import AuthorProblem, normalise_domain
from .checks.dmarc import Alignment, DmarcOutcome, Policy, within_organizational_domain
from .config import Reply, Settings
from .engine import Analysis
from .model import AuthResult, Envelope


class Action(StrEnum):
    ACCEPT = "accept"
    QUARANTINE = "quarantine"
    REJECT = "reject"
    TEMPFAIL = "tempfail"


_SEVERITY = {Action.ACCEPT: 0, Action.QUARANTINE: 1, Action.TEMPFAIL: 2, Action.REJECT: 3}


class Reason(StrEnum):
    """What decided the verdict; a closed set (metric label)."""

    DMARC_PASS = "dmarc_pass"
    NO_POLICY = "no_policy"  # nothing to enforce: no record, p=none, permerror, none
    DMARC_POLICY = "dmarc_policy"  # the sender's published policy, as published
    LOCAL_OVERRIDE = "local_override"  # a domain override or the downgrade switch changed it
    TRUSTED_ARC_SEALER = "trusted_arc_sealer"  # a trusted forwarder's ARC chain vouched for it
    SPF_FAIL = "spf_fail"
    TLS_REQUIRED = "tls_required"
    DNS_TEMPERROR = "dns_temperror"
    INTERNAL_ERROR = "internal_error"
    TRUSTED_NETWORK = "trusted_network"
    AUTHENTICATED = "authenticated"
    UNUSABLE_FROM = "unusable_from"  # no author domain to evaluate, or too many to evaluate
    # p=reject quarantined instead: a sign of a legitimate indirect flow or known sender
    MITIGATING_EVIDENCE = "mitigating_evidence"


# Every (action, reason) pair decide() can return with dry run off: the metrics create exactly
# these label pairs at start-up (a pair that cannot happen would be a series that is always 0).
# A new Reason needs its row here; tests/unit/test_policy.py checks the table against decide().
ACTIONS_FOR_REASON: dict[Reason, frozenset[Action]] = {
    Reason.DMARC_PASS: frozenset({Action.ACCEPT}),
    Reason.NO_POLICY: frozenset({Action.ACCEPT}),
    # p=none (or sampled out) accepts; quarantine and reject as published.
    Reason.DMARC_POLICY: frozenset({Action.ACCEPT, Action.QUARANTINE, Action.REJECT}),
    Reason.LOCAL_OVERRIDE: frozenset({Action.ACCEPT, Action.QUARANTINE, Action.REJECT}),
    Reason.TRUSTED_ARC_SEALER: frozenset({Action.ACCEPT}),
    Reason.SPF_FAIL: frozenset({Action.REJECT}),
    Reason.TLS_REQUIRED: frozenset({Action.REJECT}),
    Reason.DNS_TEMPERROR: frozenset({Action.TEMPFAIL}),
    Reason.INTERNAL_ERROR: frozenset({Action.TEMPFAIL}),
    Reason.TRUSTED_NETWORK: frozenset({Action.ACCEPT}),
    Reason.AUTHENTICATED: frozenset({Action.ACCEPT}),
    # rows 5a/5b: too many author domains rejects; none readable per [policy] unusable_from
    Reason.UNUSABLE_FROM: frozenset({Action.QUARANTINE, Action.REJECT}),
    # row 6a: a p=reject failure with a sign of a legitimate flow is quarantined, never more
    Reason.MITIGATING_EVIDENCE: frozenset({Action.QUARANTINE}),
}


def possible_verdicts() -> list[tuple[Action, Reason]]:
    """Every (action, reason) pair a message can be counted under, dry run included (it
    accepts what would have been refused, under the same reason)."""
    pairs = {(action, reason) for reason, actions in ACTIONS_FOR_REASON.items()
             for action in actions}
    pairs |= {(Action.ACCEPT, reason) for action, reason in set(pairs)
              if action is not Action.ACCEPT}
    return sorted(pairs, key=lambda pair: (list(Action).index(pair[0]),
                                           list(Reason).index(pair[1])))


def possible_dry_run_verdicts() -> list[tuple[Action, Reason]]:
    """The pairs dry run can record as "would have": the refusing ones."""
    return [(action, reason) for action, reason in possible_verdicts()
            if action is not Action.ACCEPT]


class OverrideReason(StrEnum):
    """Why the applied disposition differs from the evaluated one (RFC 7489 §7.2 words)."""

    LOCAL_POLICY = "local_policy"
    TRUSTED_FORWARDER = "trusted_forwarder"
    SAMPLED_OUT = "sampled_out"
    MAILING_LIST = "mailing_list"  # RFC 9990 §3.1.6: arrived via a list or other intermediary


class Sign(StrEnum):
    """A sign that a message failing DMARC under p=reject may be legitimate (RFC 9989 §8
    "other knowledge and analysis"); each one only turns reject into quarantine."""

    LIST_FIELDS = "list_fields"  # List-Id / List-Post present (RFC 2919, RFC 2369)
    ARC_SET = "arc_set"  # ARC header fields from any sealer (RFC 8617)
    BROKEN_SIGNATURE = "broken_signature"  # an aligned DKIM signature failed verification
    KNOWN_SENDER = "known_sender"  # the client's network sent passing mail for the domain


# RFC 9990 §3.1.6 words: the intermediary signs say "mailing_list" (authentication of the
# original was not expected to survive: a list, or a forwarder that ARC-sealed it — not
# "trusted_forwarder", which needs a locally maintained list: that is row 8a); the history
# is the receiver's own knowledge, "local_policy".
SIGN_OVERRIDE = {Sign.LIST_FIELDS: OverrideReason.MAILING_LIST,
                 Sign.ARC_SET: OverrideReason.MAILING_LIST,
                 Sign.BROKEN_SIGNATURE: OverrideReason.MAILING_LIST,
                 Sign.KNOWN_SENDER: OverrideReason.LOCAL_POLICY}


@dataclass(frozen=True)
class Verdict:
    """The decision. ``dry_run_action`` is what would have happened when dry-run accepted."""

    action: Action
    reason: Reason
    reply: Reply | None = None
    detail: str = ""
    published_policy: str | None = None
    evaluated_disposition: str | None = None
    applied_disposition: str | None = None
    override_reason: OverrideReason | None = None
    override_detail: str = ""
    dry_run_action: Action | None = None
    signs: tuple[Sign, ...] = ()  # the RFC 9989 §8 signs that turned a reject into quarantine


_ACTION_FOR = {Policy.REJECT: Action.REJECT, Policy.QUARANTINE: Action.QUARANTINE,
               Policy.NONE: Action.ACCEPT}
_DISPOSITION_FOR = {Action.REJECT: "reject", Action.QUARANTINE: "quarantine",
                    Action.ACCEPT: "none", Action.TEMPFAIL: "none"}


def decide(analysis: Analysis, envelope: Envelope, settings: Settings) -> Verdict:
    """Decide the verdict for one analysed message (see docs/POLICY.md for the table)."""
    verdict = _enforced(analysis, envelope, settings)
    if settings.dry_run and verdict.action is not Action.ACCEPT:
        return replace(verdict, action=Action.ACCEPT, reply=None, dry_run_action=verdict.action,
                       applied_disposition="none" if verdict.published_policy else None,
                       override_reason=OverrideReason.LOCAL_POLICY,
                       override_detail="dry run")
    return verdict


def _enforced(analysis: Analysis, envelope: Envelope, settings: Settings) -> Verdict:
    dmarc = analysis.dmarc
    published = dmarc.policy.value if dmarc is not None and dmarc.policy is not None else None
    evaluated = (dmarc.disposition.value if dmarc is not None and dmarc.disposition is not None
                 and dmarc.result is AuthResult.FAIL else None)

    trust = _trusted(envelope, settings)
    if trust is not None:
        reason, detail = trust
        return Verdict(Action.ACCEPT, reason, detail=detail, published_policy=published,
                       evaluated_disposition=evaluated,
                       applied_disposition="none" if evaluated else None,
                       override_reason=(OverrideReason.TRUSTED_FORWARDER
                                        if reason is Reason.TRUSTED_NETWORK
                                        else OverrideReason.LOCAL_POLICY) if evaluated else None,
                       override_detail=detail if evaluated else "")

    if analysis.errors and settings.on_internal_error == "tempfail":
        failed = ", ".join(sorted({e.check for e in analysis.errors}))
        return Verdict(Action.TEMPFAIL, Reason.INTERNAL_ERROR, settings.tempfail_reply,
                       f"internal error in {failed}", published_policy=published)

    candidates = [
        _author_verdict(dmarc, settings),
        _dmarc_verdict(analysis, settings, published, evaluated),
        _spf_verdict(analysis, settings),
        _tls_verdict(analysis, dmarc, settings),
    ]
    chosen = max((c for c in candidates if c is not None),
                 key=lambda v: _SEVERITY[v.action], default=None)
    if chosen is None:
        passed = dmarc is not None and dmarc.result is AuthResult.PASS
        return Verdict(Action.ACCEPT, Reason.DMARC_PASS if passed else Reason.NO_POLICY,
                       published_policy=published)
    if chosen.published_policy is None:
        chosen = replace(chosen, published_policy=published)
    return chosen


def _trusted(envelope: Envelope, settings: Settings) -> tuple[Reason, str] | None:
    if settings.skip_authenticated and envelope.sasl_user:
        return Reason.AUTHENTICATED, "authenticated submission"
    if envelope.client_ip and settings.trusted_networks:
        try:
            address = ipaddress.ip_address(envelope.client_ip)
        except ValueError:
            return None
        for network in settings.trusted_networks:
            if address in network:
                return Reason.TRUSTED_NETWORK, f"trusted network {network}"
    return None


def _author_verdict(dmarc: DmarcOutcome | None, settings: Settings) -> Verdict | None:
    """A From that DMARC could not evaluate is never "no policy" (docs/POLICY.md rows 5a/5b).

    Too many author domains: the ones left unevaluated could have asked for reject, so the
    message is refused (RFC 9989 §11.5 allows a negative disposition before DMARC). Not one
    author domain readable (no From, or nothing any reader could take an address from):
    ``[policy] unusable_from``.
    """
    if dmarc is None:
        return None
    if dmarc.incomplete:
        why = "too many author domains to evaluate (RFC 9989 §11.5)"
        return Verdict(Action.REJECT, Reason.UNUSABLE_FROM,
                       _fill(settings.unusable_from_reply, "", why), detail=why)
    if dmarc.evaluated_domains or settings.unusable_from == "accept":
        return None
    why = ("no From header field (RFC 5322 §3.6)" if AuthorProblem.NO_FROM in
           dmarc.author_problems else "no author domain can be read from the From header field")
    if settings.unusable_from == "reject":
        return Verdict(Action.REJECT, Reason.UNUSABLE_FROM,
                       _fill(settings.unusable_from_reply, "", why), detail=why)
    return Verdict(Action.QUARANTINE, Reason.UNUSABLE_FROM, detail=why)


def _dmarc_verdict(analysis: Analysis, settings: Settings, published: str | None,
                   evaluated: str | None) -> Verdict | None:
    dmarc = analysis.dmarc
    if dmarc is None:
        return None
    if dmarc.result is AuthResult.TEMPERROR:
        return _temperror_verdict(analysis, settings, dmarc, published)
    if dmarc.result is not AuthResult.FAIL or dmarc.disposition is None:
        return None
    return _fail_verdict(analysis, settings, dmarc, dmarc.disposition, published, evaluated)


def _temperror_verdict(analysis: Analysis, settings: Settings, dmarc: DmarcOutcome,
                       published: str | None) -> Verdict | None:
    """A missing DNS answer tempfails only when some answer it could have had changes the
    verdict (docs/POLICY.md, "When an answer is missing").

    The DMARC check says what the missing answers leave open: the dispositions a fail could
    have (``possible_dispositions``; none given = any, or the known policy) and whether a
    pass (or no record at all) is possible. Each is decided as if it were the answer; one
    verdict for all is the verdict, else the message is tempfailed.
    """
    domain = dmarc.header_from or "the author domain"
    possible = dmarc.possible_dispositions or (
        (dmarc.policy,) if dmarc.policy is not None else tuple(Policy))
    outcomes = [_fail_verdict(analysis, settings, dmarc, d, published, d.value)
                for d in possible]
    actions = {v.action for v in outcomes}
    if dmarc.pass_possible:
        actions.add(Action.ACCEPT)
    if len(actions) == 1:
        if Action.ACCEPT in actions:
            return None  # every answer accepts: rows 14/15 say why
        chosen = max(outcomes, key=lambda v: _SEVERITY[v.action])
        return replace(chosen, evaluated_disposition=None, detail=(
            f"DMARC temperror for {domain}, but every possible answer gives "
            f"{chosen.action.value}: {dmarc.reason}"))
    if settings.on_dns_temperror == "tempfail":
        return Verdict(Action.TEMPFAIL, Reason.DNS_TEMPERROR, settings.tempfail_reply,
                       f"DMARC for {domain} could not be evaluated: {dmarc.reason}",
                       published_policy=published)
    return None


def _fail_verdict(analysis: Analysis, settings: Settings, dmarc: DmarcOutcome,
                  disposition: Policy, published: str | None,
                  evaluated: str | None) -> Verdict:
    """Rows 6-10 for a DMARC fail whose evaluated disposition is ``disposition``."""
    domain = dmarc.header_from or "the author domain"
    override = settings.domain_override(dmarc.header_from) if dmarc.header_from else None
    action = _ACTION_FOR[disposition]
    reason = Reason.DMARC_POLICY
    override_detail = ""
    if override is None and action is not Action.ACCEPT:
        arc = analysis.arc
        if (arc.result is AuthResult.TEMPERROR and arc.newest_sealer in settings.trusted_arc_sealers
                and settings.on_dns_temperror == "tempfail"):
            # The chain of a trusted forwarder could not be checked: its answer decides.
            return Verdict(Action.TEMPFAIL, Reason.DNS_TEMPERROR, settings.tempfail_reply,
                           f"ARC chain sealed by trusted {arc.newest_sealer} could not be "
                           f"validated: {arc.comment}", published_policy=published)
        vouched = arc_vouch(analysis, settings)
        if vouched:
            return Verdict(Action.ACCEPT, Reason.TRUSTED_ARC_SEALER,
                           detail=f"DMARC {dmarc.result.value} for {domain}; {vouched}",
                           published_policy=published, evaluated_disposition=evaluated,
                           applied_disposition="none",
                           override_reason=OverrideReason.TRUSTED_FORWARDER,
                           override_detail=vouched)
    if override == "reject":
        action, override_detail = Action.REJECT, f"domain override for {domain}: reject"
    elif override == "quarantine":
        action, override_detail = Action.QUARANTINE, f"domain override for {domain}: quarantine"
    elif override == "never_reject" and action is Action.REJECT:
        action, override_detail = Action.QUARANTINE, f"domain override for {domain}: never reject"
    elif override == "accept":
        action, override_detail = Action.ACCEPT, f"domain override for {domain}: accept"
    failed = _failed_identities(analysis, dmarc)
    detail = f"DMARC {dmarc.result.value} for {domain} ({failed})"
    signs: tuple[tuple[Sign, str], ...] = ()
    if action is Action.REJECT and settings.downgrade_reject:
        action, override_detail = Action.QUARANTINE, "downgrade_reject"
    elif action is Action.REJECT and override is None:  # the published policy asks for reject
        if settings.dmarc_reject == "never":
            action, override_detail = Action.QUARANTINE, 'dmarc_reject = "never"'
        elif settings.dmarc_reject == "evidence":
            signs = evidence_signs(analysis)
            if signs:
                action = Action.QUARANTINE
                detail += "; not rejected, signs: " + ", ".join(s.value for s, _ in signs)
            else:
                detail += "; no sign of a mailing list, forwarder, changed message or known sender"
    applied = _DISPOSITION_FOR[action]
    override_reason: OverrideReason | None = None
    if signs:
        reason = Reason.MITIGATING_EVIDENCE
        names = [sign for sign, _ in signs]
        override_reason = next((SIGN_OVERRIDE[n] for n in names
                                if SIGN_OVERRIDE[n] is OverrideReason.MAILING_LIST),
                               OverrideReason.LOCAL_POLICY)
        # names first (the A-R comment is cut at 200 characters), ASCII only, no parentheses
        override_detail = ("RFC 9989 section 8 signs: " + ", ".join(n.value for n in names)
                           + "; " + "; ".join(f"{n.value}: {what}" for n, what in signs))
    elif override_detail and applied != evaluated:
        reason = Reason.LOCAL_OVERRIDE
        override_reason = OverrideReason.LOCAL_POLICY
    else:
        override_detail = ""
        override_reason = OverrideReason.SAMPLED_OUT if dmarc.sampled is False else None
    return Verdict(
        action, reason,
        _fill(settings.reject_reply, domain, failed) if action is Action.REJECT else None,
        detail=detail,
        published_policy=published, evaluated_disposition=evaluated,
        applied_disposition=applied,
        override_reason=override_reason,
        override_detail=override_detail,
        signs=tuple(sign for sign, _ in signs))


def evidence_signs(analysis: Analysis) -> tuple[tuple[Sign, str], ...]:
    """The RFC 9989 §8 signs this message shows, each with what showed it, in a fixed order.

    Every sign can be forged by whoever forges the From; that is why a sign only ever turns
    a reject into a quarantine, never into an accept.
    """
    dmarc = analysis.dmarc
    if dmarc is None:
        return ()
    marks = analysis.marks
    found: list[tuple[Sign, str]] = []
    if marks.list_fields:
        found.append((Sign.LIST_FIELDS, " and ".join(marks.list_fields)))
    arc = analysis.arc
    if arc.result is not AuthResult.NONE or marks.arc_fields:
        sealer = arc.newest_sealer[:64] or "no readable sealer"
        found.append((Sign.ARC_SET, f"sealed by {sealer}, arc={arc.result.value}"))
    broken = broken_aligned_signature(analysis)
    if broken:
        found.append((Sign.BROKEN_SIGNATURE, f"dkim d={broken} failed"))
    if marks.known_network:
        found.append((Sign.KNOWN_SENDER,
                      f"{marks.known_network} passed DMARC for {dmarc.header_from}"))
    return tuple(found)


def broken_aligned_signature(analysis: Analysis) -> str:
    """``d=`` of a DKIM signature that failed verification (``dkim=fail``: body hash or
    signature mismatch — the message changed in transit) and is aligned with the author
    domain, else "".

    Aligned, without a DNS query on the reply path: ``d=`` is the author domain, or — unless
    the record asks for ``adkim=s`` — the author's Organizational Domain or a name under it
    (checks/dmarc.py ``within_organizational_domain``; the author domain stands in for an
    Organizational Domain the DMARC check did not need to find). A signature that is
    malformed or has no key (``permerror``) says nothing about transit and is not a sign.
    """
    dmarc = analysis.dmarc
    if dmarc is None or not dmarc.header_from:
        return ""
    author = normalise_domain(dmarc.header_from) or dmarc.header_from
    record = next((e.record for e in dmarc.evaluations if e.domain == dmarc.header_from), None)
    strict = record is not None and record.adkim is Alignment.STRICT
    org = normalise_domain(dmarc.org_domain or "") or author
    if not within_organizational_domain(author, org):
        org = author  # defensive: an org domain is always the author or one of its parents
    for signature in analysis.dkim.signatures:
        if signature.result is not AuthResult.FAIL or not signature.domain:
            continue
        d = normalise_domain(signature.domain)
        if d is None:
            continue
        if d == author or (not strict and within_organizational_domain(d, org)):
            return d
    return ""


def arc_vouch(analysis: Analysis, settings: Settings) -> str:
    """Why a trusted forwarder's ARC chain vouches for this message, or ''.

    All of: the chain passes (RFC 8617 §5.2); the newest seal is by a domain in
    ``trusted_arc_sealers`` (so nobody after it could have changed the message unseen); and
    that sealer's ARC-Authentication-Results recorded ``dmarc=pass`` with ``header.from``
    equal to the From domain we evaluated (RFC 8617 §7.2: the receiver's local policy decides
    whom to trust).
    """
    arc = analysis.arc
    newest = arc.newest
    if not settings.trusted_arc_sealers or arc.result is not AuthResult.PASS or newest is None:
        return ""
    if newest.seal_domain not in settings.trusted_arc_sealers:
        return ""
    header_from = analysis.dmarc.header_from if analysis.dmarc is not None else ""
    recorded_from = normalise_domain(newest.recorded_header_from or "")
    if newest.recorded_result("dmarc") != "pass" or not header_from \
            or recorded_from != normalise_domain(header_from):
        return ""
    return (f"ARC sealed by trusted {newest.seal_domain} (i={newest.instance}), "
            f"which saw dmarc=pass for {newest.recorded_header_from}")


def _spf_verdict(analysis: Analysis, settings: Settings) -> Verdict | None:
    if not settings.reject_on_spf_fail:
        return None
    if analysis.dmarc is not None and analysis.dmarc.result is AuthResult.PASS:
        return None  # DKIM carried the message: RFC 7489 §10.1 warns against rejecting early
    if arc_vouch(analysis, settings):
        return None  # forwarded by a trusted sealer: SPF fails by the nature of forwarding
    spf = analysis.spf_mailfrom
    if spf.result is AuthResult.FAIL:
        failed = f"spf=fail smtp.mailfrom={spf.identity_value}"
        return Verdict(Action.REJECT, Reason.SPF_FAIL,
                       _fill(settings.spf_reject_reply, spf.domain, failed),
                       detail=f"SPF fail for {spf.domain}")
    if spf.result is AuthResult.TEMPERROR and settings.on_dns_temperror == "tempfail":
        return Verdict(Action.TEMPFAIL, Reason.DNS_TEMPERROR, settings.tempfail_reply,
                       f"SPF for {spf.domain} could not be evaluated")
    return None


def _tls_verdict(analysis: Analysis, dmarc: DmarcOutcome | None,
                 settings: Settings) -> Verdict | None:
    if not settings.tls_required_domains or analysis.tls.encrypted:
        return None
    domains = {e.domain for e in dmarc.evaluations if e.domain} if dmarc is not None else set()
    required = sorted(domains & settings.tls_required_domains)
    if not required:
        return None
    return Verdict(Action.REJECT, Reason.TLS_REQUIRED,
                   _fill(settings.tls_reject_reply, required[0], "plaintext session"),
                   detail=f"{required[0]} requires TLS; the session was plaintext")


def _failed_identities(analysis: Analysis, dmarc: DmarcOutcome | None) -> str:
    """Name what was checked, for the reject text and ``check``: e.g. ``spf=fail (mailfrom
    example.com), dkim=pass (d=list.example, not aligned)``.

    Alignment is said of passes only: DMARC counts an identifier only when it passes and
    aligns (RFC 9989 §4.4), so a failed SPF for the author's own domain is a fail, never "not
    aligned", and a DKIM pass for another domain is named as the reason it did not count.
    """
    aligned_dkim = {d.lower().rstrip(".") for d in dmarc.dkim_aligned} if dmarc else set()

    def alignment(result: AuthResult, aligned: bool) -> str:
        if result is not AuthResult.PASS or dmarc is None:
            return ""
        return ", aligned" if aligned else ", not aligned"

    spf = analysis.spf_mailfrom
    spf_text = (f"spf={spf.result.value} (mailfrom {spf.domain or '-'}"
                f"{alignment(spf.result, dmarc is not None and dmarc.spf_aligned)})")
    signatures = analysis.dkim.signatures
    if not signatures:
        return f"{spf_text}, dkim=none"
    dkim_text = ", ".join(
        f"dkim={s.result.value} (d={s.domain or '-'}"
        f"{alignment(s.result, s.domain.lower().rstrip('.') in aligned_dkim)})"
        for s in signatures[:3])
    return f"{spf_text}, {dkim_text}"


def _fill(reply: Reply, domain: str, failed: str) -> Reply:
    """Fill the reply template; the values are reduced to printable ASCII for the SMTP line."""
    def clean(text: str) -> str:
        return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)[:200]

    return Reply(reply.code, reply.status,
                 reply.text.format(domain=clean(domain), failed=clean(failed)))


def explain_identities(analysis: Analysis) -> str:
    """What ``check`` prints under the header: the words of the reject text's ``{failed}``."""
    return _failed_identities(analysis, analysis.dmarc)
