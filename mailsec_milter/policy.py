"""The one place a verdict is decided: accept, quarantine, reject or tempfail, and why.

Owns: the decision table (docs/POLICY.md shows it row by row) from an Analysis, the envelope
and the settings to a Verdict with a closed reason, the sender's published policy, the
evaluated and the applied disposition, and any local override.
Must not: do I/O, render headers, or call the MTA.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from enum import StrEnum

from .addresses import AuthorProblem, normalise_domain
from .checks.dmarc import DmarcOutcome, Policy
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
    domain = dmarc.header_from or "the author domain"
    override = settings.domain_override(dmarc.header_from) if dmarc.header_from else None
    if dmarc.result is AuthResult.TEMPERROR:
        # Could the missing answer change the verdict? Only if something would be enforced.
        can_matter = override != "accept" and (
            dmarc.policy is None or dmarc.policy is not Policy.NONE
            or override in ("reject", "quarantine"))
        if can_matter and settings.on_dns_temperror == "tempfail":
            return Verdict(Action.TEMPFAIL, Reason.DNS_TEMPERROR, settings.tempfail_reply,
                           f"DMARC for {domain} could not be evaluated: {dmarc.reason}",
                           published_policy=published)
        return None
    if dmarc.result is not AuthResult.FAIL or dmarc.disposition is None:
        return None
    action = _ACTION_FOR[dmarc.disposition]
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
    if action is Action.REJECT and settings.downgrade_reject:
        action, override_detail = Action.QUARANTINE, "downgrade_reject"
    applied = _DISPOSITION_FOR[action]
    if override_detail and applied != evaluated:
        reason = Reason.LOCAL_OVERRIDE
    else:
        override_detail = ""
    failed = _failed_identities(analysis, dmarc)
    return Verdict(
        action, reason,
        _fill(settings.reject_reply, domain, failed) if action is Action.REJECT else None,
        detail=f"DMARC {dmarc.result.value} for {domain} ({failed})",
        published_policy=published, evaluated_disposition=evaluated,
        applied_disposition=applied,
        override_reason=OverrideReason.LOCAL_POLICY if override_detail else (
            OverrideReason.SAMPLED_OUT if dmarc.sampled is False else None),
        override_detail=override_detail)


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
