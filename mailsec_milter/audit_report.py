"""Rendering the domain posture audit (text for a person, JSON for machines) and choosing the
``--top N`` sender domains from the report store.

Owns: the one-screen text layout, the JSON document, and which reporting period ``--top`` reads.
Must not: import checkdmarc (mailsec_milter/audit.py runs the checks) or touch the network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .reports.store import open_store

if TYPE_CHECKING:
    from .audit import AuditRun, DomainAudit

_LADDER_TEXT = {"none": "p=none (step 1 of 3: monitoring only)",
                "quarantine": "p=quarantine (step 2 of 3)",
                "reject": "p=reject (step 3 of 3: the baseline)"}


@dataclass(frozen=True)
class TopSender:
    domain: str
    messages: int
    published_p: str


@dataclass(frozen=True)
class TopSenders:
    """The policy domains that sent the most mail in one reporting period."""

    begin: date
    end: date
    period_note: str  # "yesterday (UTC)" or "the last day with records"
    total: int
    senders: list[TopSender]

    def share(self, messages: int) -> float:
        return 100.0 * messages / self.total if self.total else 0.0

    def share_at(self, policy: str) -> float:
        """Percent of the period's mail from the top senders publishing ``policy``."""
        return self.share(sum(s.messages for s in self.senders if s.published_p == policy))


def top_senders(location: str, limit: int, today: date | None = None) -> TopSenders:
    """Yesterday (UTC), the last complete reporting day; if it has no rows, the last day that
    has (a quiet or new host), so the answer is never empty while the store has data."""
    today = today or datetime.now(UTC).date()
    yesterday = today - timedelta(days=1)
    store = open_store(location)
    try:
        days = [d for d, _, _ in store.days()]
        day, note = yesterday, "yesterday (UTC)"
        if yesterday not in days:
            earlier = [d for d in days if d <= yesterday] or days
            if earlier:
                day, note = earlier[-1], "the last day with records (none yesterday, UTC)"
        total = store.total_messages(day, day)
        ranked = store.top_policy_domains(day, day, limit)
    finally:
        store.close()
    return TopSenders(day, day, note, total,
                      [TopSender(d, n, p or "unknown") for d, n, p in ranked])


def render_text(run: AuditRun, top: TopSenders | None = None) -> str:
    """One screen per domain: the ladder position first, then each finding with its fix."""
    lines: list[str] = []
    if top is not None:
        lines += _top_lines(top)
    for result in run.results:
        lines += _domain_lines(result, run.baseline)
    verdict = {0: f"every domain meets the baseline p={run.baseline}",
               1: f"a domain is below the baseline p={run.baseline}",
               2: "errors: some domains could not be audited"}[run.exit_status]
    lines.append(f"== {len(run.results)} domain(s): {verdict}")
    return "\n".join(lines) + "\n"


def _top_lines(top: TopSenders) -> list[str]:
    lines = [f"== top {len(top.senders)} sender domains on {top.begin.isoformat()} "
             f"({top.period_note}): {top.total} messages"]
    for sender in top.senders:
        lines.append(f"   {sender.domain}: {sender.messages} messages "
                     f"({top.share(sender.messages):.0f} %), published p={sender.published_p}")
    for policy in ("none", "quarantine", "reject"):
        share = top.share_at(policy)
        if share:
            lines.append(f"   {share:.0f} % of your mail comes from domains at p={policy}")
    lines.append("")
    return lines


def _domain_lines(result: DomainAudit, baseline: str) -> list[str]:
    dmarc = result.dmarc
    effective = dmarc.get("effective_policy")
    if result.errors and not dmarc:
        position = "not audited"
    elif effective:
        where = dmarc.get("record_domain")
        position = _LADDER_TEXT.get(effective, effective) + (
            f", from the record at {where}" if where and where != result.domain else "")
    else:
        position = "no DMARC policy (below step 1)"
    mark = "meets" if result.meets_baseline else "BELOW"
    lines = [f"== {result.domain}: {position} — {mark} baseline p={baseline}"]
    for error in result.errors:
        lines.append(f"   ERROR {error}")
    order = {"error": 0, "fail": 1, "warn": 2, "info": 3}
    for finding in sorted(result.findings, key=lambda f: order.get(f.severity, 9)):
        lines.append(f"   {finding.severity.upper():4} {finding.area}: {finding.text}")
        if finding.fix:
            lines.append(f"        fix: {finding.fix}")
    lines.append("")
    return lines


def render_json(run: AuditRun, top: TopSenders | None = None) -> str:
    document: dict[str, Any] = {
        "baseline": run.baseline, "exit_status": run.exit_status,
        "domains": [r.as_json() for r in run.results],
    }
    if top is not None:
        document["top"] = {
            "begin": top.begin.isoformat(), "end": top.end.isoformat(),
            "period": top.period_note, "total_messages": top.total,
            "senders": [{"domain": s.domain, "messages": s.messages,
                         "share_percent": round(top.share(s.messages), 1),
                         "published_p": s.published_p} for s in top.senders],
            "share_percent_by_policy": {p: round(top.share_at(p), 1)
                                        for p in ("none", "quarantine", "reject")},
        }
    return json.dumps(document, indent=2, default=str) + "\n"
