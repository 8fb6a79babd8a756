"""The one place a verdict is decided: accept, quarantine, reject or tempfail, and why.

Owns: the decision table from an Analysis and the settings to a Verdict with a closed reason.
Must not: do I/O, render headers, or call the MTA.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .config import Reply, Settings
from .engine import Analysis


class Action(StrEnum):
    ACCEPT = "accept"
    QUARANTINE = "quarantine"
    REJECT = "reject"
    TEMPFAIL = "tempfail"


class Reason(StrEnum):
    """Why the verdict is what it is; a closed set, used as a metric label."""

    PASSED = "passed"
    NO_POLICY = "no_policy"
    INTERNAL_ERROR = "internal_error"
    DNS_TEMPERROR = "dns_temperror"


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: Reason
    reply: Reply | None = None
    detail: str = ""


def decide(analysis: Analysis, settings: Settings) -> Verdict:
    """Decide the verdict for one analysed message.

    A crashed check could have hidden a failing result, so by default it tempfails the message
    (the sender retries) rather than accepting with a result we made up. DNS temperrors alone do
    not change the verdict until a policy (DMARC) depends on them.
    """
    if analysis.errors and settings.on_internal_error == "tempfail":
        failed = ", ".join(sorted({e.check for e in analysis.errors}))
        return Verdict(Action.TEMPFAIL, Reason.INTERNAL_ERROR, settings.tempfail_reply,
                       f"internal error in {failed}")
    return Verdict(Action.ACCEPT, Reason.NO_POLICY)
