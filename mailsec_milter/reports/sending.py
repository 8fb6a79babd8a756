"""Sending DMARC aggregate reports: plan each report's destinations, then deliver them once.

Owns: the sending configuration (off until ``[reports] org_name`` and ``from`` are set), one
report per policy domain and period from the store (rows about our own report mail left out),
the safety rules for every destination (mailto only, RFC 9990 §4 authorisation, suppression,
no loops to our own address, a per-destination daily cap, only domains with an aligned pass if
asked), the §3.5.2 mail (subject, text part, gzip attachment), SMTP submission to the local MTA,
and the claim protocol that makes exactly one host of a fleet send each report, never twice:
``claim`` (first run) or ``reclaim`` (a deferred report, bounded by ``max_attempts``), one row
per destination in ``report_deliveries``, the final state on the claim.
Must not: run inside the daemon (it is the ``reports send`` process), send anything that did
not validate against the RFC's schema, or treat DNS trouble as a refusal (it defers).
"""

from __future__ import annotations

import contextlib
import hashlib
import smtplib
import socket
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, formataddr
from pathlib import Path
from typing import Protocol

from publicsuffixlist import PublicSuffixList

from ..addresses import normalise_domain
from ..checks.dmarc import load_psl
from ..config import Settings
from ..dns import Resolver
from .destinations import Authorisation, Destination, Skip, check_destination, parse_rua
from .status import RunOutcome
from .store import ReportStore, StoredRow
from .xmlreport import InvalidReportError, Period, Report, Reporter, build_report, subject


class SendingOffError(Exception):
    """Sending is not configured; the message says which keys are missing."""


def missing_for_sending(settings: Settings) -> list[str]:
    """The keys that must be set before reports are sent (recording needs none of them)."""
    missing = []
    if not settings.reports_org_name.strip():
        missing.append("[reports] org_name (our name in the reports)")
    if not settings.reports_from:
        missing.append("[reports] from (the address reports come from)")
    return missing


def reporter_for(settings: Settings, preview: bool = False) -> Reporter:
    """Who we are in the reports. ``preview`` (``show``, ``--out``) fills unset keys with
    placeholders; sending refuses to start without them (SendingOffError)."""
    missing = missing_for_sending(settings)
    if missing and not preview:
        raise SendingOffError("sending DMARC reports is off until these are set: "
                         + "; ".join(missing) + " (recording goes on regardless)")
    address = settings.reports_from or f"unset@{settings.authserv_id}"
    return Reporter(org_name=settings.reports_org_name.strip() or "(unset [reports] org_name)",
                    email=address, receiver=address.rpartition("@")[2],
                    extra_contact_info=settings.reports_contact_info)


def yesterday(now: datetime | None = None) -> date:
    return date.fromordinal((now or datetime.now(UTC)).astimezone(UTC).date().toordinal() - 1)


# --- building the reports of a period -----------------------------------------------------

@dataclass(frozen=True)
class Built:
    """The report of one policy domain (None when there is nothing to report) and its rows."""

    policy_domain: str
    report: Report | None
    rows: tuple[StoredRow, ...]
    skip: Skip | None = None
    detail: str = ""


def build_all(store: ReportStore, reporter: Reporter, period: Period,
              only_domain: str | None = None) -> Iterator[Built]:
    """One report per policy domain with rows in the period, most messages first. Rows whose
    author domain is our own report domain are report mail (ours, come back): left out."""
    domains = [d for d, _n in store.policy_domains(period.first, period.last)]
    if only_domain is not None:
        wanted = normalise_domain(only_domain.rstrip(".")) or only_domain.lower()  # U- or A-label
        domains = [d for d in domains if d == wanted]
    for domain in domains:
        rows = [r for r in store.rows(domain, period.first, period.last)
                if r.header_from != reporter.receiver]
        if not rows:
            yield Built(domain, None, (), Skip.ONLY_REPORT_MAIL,
                        "only rows about our own report mail")
            continue
        try:
            yield Built(domain, build_report(reporter, domain, period, rows), tuple(rows))
        except InvalidReportError as exc:  # a bug; the other domains' reports still go
            yield Built(domain, None, tuple(rows), Skip.INVALID_REPORT,
                        f"does not validate against RFC 9990 Appendix A: {exc}")


def latest_rua(rows: Sequence[StoredRow]) -> str:
    """The rua published last in the period (the one of most messages on the last day), as
    xmlreport.latest_policy picks the policy (§3.3)."""
    last_day = max(r.day for r in rows)
    seen: Counter[str] = Counter()
    for row in rows:
        if row.day == last_day:
            seen[row.rua] += row.messages
    return seen.most_common(1)[0][0]


# --- where each report may go ------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """One destination of one report: ``send``, ``skip`` (with a reason) or ``defer``."""

    address: str
    action: str
    reason: str = ""
    detail: str = ""


@dataclass(frozen=True)
class SafetyRules:
    own_address: str
    own_domain: str
    suppress: frozenset[str]
    max_destinations: int
    max_per_destination: int
    only_aligned_pass: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> SafetyRules:
        own = settings.reports_from
        return cls(own, own.rpartition("@")[2], settings.reports_suppress,
                   settings.reports_max_destinations, settings.reports_max_per_destination,
                   settings.reports_only_aligned_pass_domains)

    def suppressed(self, destination: Destination) -> bool:
        if destination.address in self.suppress:
            return True
        labels = destination.domain.split(".")
        return any(".".join(labels[i:]) in self.suppress for i in range(len(labels)))

    def own(self, destination: Destination) -> bool:
        return bool(self.own_domain) and (destination.address == self.own_address
                                          or destination.domain == self.own_domain)


@dataclass
class Planner:
    """Decides the targets of each report; counts this run's planned sends for the cap."""

    rules: SafetyRules
    resolver: Resolver
    psl: PublicSuffixList
    sent_on: Callable[[str], int]  # reports already sent to an address today (every host)
    dry_run: bool = False  # then nothing is recorded: count the planned sends here instead
    planned: Counter[str] = field(default_factory=Counter)

    def whole_report_skip(self, built: Built) -> tuple[Skip, str] | None:
        if built.skip is not None:
            return built.skip, built.detail
        if not latest_rua(built.rows):
            return Skip.NO_RUA, "the policy record has no rua"
        if self.rules.only_aligned_pass and not any(
                r.dmarc_dkim == "pass" or r.dmarc_spf == "pass" for r in built.rows):
            return Skip.NO_ALIGNED_PASS, "no DMARC-aligned pass in the period"
        return None

    def targets(self, built: Built) -> list[Target]:
        destinations, refused = parse_rua(latest_rua(built.rows), self.rules.max_destinations)
        out = [Target(r.uri, "skip", r.reason.value, r.detail) for r in refused]
        for destination in destinations:
            if self.rules.own(destination):
                out.append(Target(destination.address, "skip", Skip.OWN_ADDRESS.value,
                                  "our own report address or domain"))
                continue
            if self.rules.suppressed(destination):
                out.append(Target(destination.address, "skip", Skip.SUPPRESSED.value,
                                  "[reports] suppress"))
                continue
            verdict = check_destination(built.policy_domain, destination, self.resolver,
                                        self.psl, self.rules.max_destinations)
            if verdict.outcome is Authorisation.DNS_TROUBLE:
                out.append(Target(destination.address, "defer", "dns_trouble", verdict.detail))
                continue
            if verdict.outcome is Authorisation.REFUSED:
                out.append(Target(destination.address, "skip", Skip.NOT_AUTHORISED.value,
                                  verdict.detail))
                continue
            for final in verdict.destinations:  # an authorised override may replace it
                out.append(self._capped(final, verdict.detail))
        return out

    def _capped(self, destination: Destination, why: str) -> Target:
        if self.rules.own(destination) or self.rules.suppressed(destination):
            return Target(destination.address, "skip", Skip.SUPPRESSED.value,
                          "override to a suppressed or own address")
        already = self.sent_on(destination.address) + self.planned[destination.address]
        if already >= self.rules.max_per_destination:
            return Target(destination.address, "skip", Skip.DAILY_CAP.value,
                          f"{already} reports today ([reports] max_per_destination)")
        if self.dry_run:
            self.planned[destination.address] += 1
        return Target(destination.address, "send", "", why)


# --- the mail ------------------------------------------------------------------------------

def compose(report: Report, reporter: Reporter, to: str, now: datetime) -> bytes:
    """§3.5.2: the subject and file name carry the same report id; a text part for people.
    Built with the compat32 MIME classes: the modern header registry cost ~2 ms a message."""
    message = MIMEMultipart("mixed")
    message["From"] = formataddr((reporter.org_name, reporter.email), charset="utf-8")
    message["To"] = to
    message["Subject"] = subject(report.policy_domain, reporter.receiver, report.report_id)
    message["Date"] = format_datetime(now.astimezone(UTC))
    per_destination = hashlib.sha256(to.encode()).hexdigest()[:8]  # §3.5.2: ridtxt in it
    message["Message-ID"] = f"<{report.report_id}.{per_destination}@{reporter.receiver}>"
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to this
    begin = datetime.fromtimestamp(report.period.begin, UTC)
    end = datetime.fromtimestamp(report.period.end, UTC)
    message.attach(MIMEText(
        f"This is a DMARC aggregate report (RFC 9990) from {reporter.org_name} "
        f"({reporter.receiver}) for the domain {report.policy_domain}.\n\n"
        f"Report-ID: {report.report_id}\n"
        f"Period:    {begin:%Y-%m-%d %H:%M:%S} to {end:%Y-%m-%d %H:%M:%S} UTC\n"
        f"Messages:  {report.messages} in {report.records} records\n\n"
        f"The report is attached as {report.filename}.\n"
        f"Questions: {reporter.email}\n", "plain", "utf-8"))
    attachment = MIMEApplication(report.gzipped(), "gzip")
    attachment.add_header("Content-Disposition", "attachment", filename=report.filename)
    message.attach(attachment)
    return message.as_bytes()


class Submitter(Protocol):
    def submit(self, message: bytes, sender: str, recipient: str) -> tuple[str, str]:
        """("sent" | "failed" | "defer", detail)."""
        ...

    def close(self) -> None: ...


class SmtpSubmitter:
    """SMTP to the local MTA, one connection for the run. A connection failure defers every
    later message of the run instead of waiting for a dead MTA thousands of times."""

    def __init__(self, host_port: str, timeout: float = 30.0) -> None:
        host, _, port = host_port.rpartition(":")
        self.host, self.port, self.timeout = host.strip("[]"), int(port), timeout
        self._smtp: smtplib.SMTP | None = None
        self._down = ""

    def _connection(self) -> smtplib.SMTP:
        if self._smtp is None:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout,
                                local_hostname=socket.getfqdn())
            smtp.ehlo_or_helo_if_needed()
            self._smtp = smtp
        return self._smtp

    def submit(self, message: bytes, sender: str, recipient: str) -> tuple[str, str]:
        if self._down:
            return "defer", self._down
        try:
            smtp = self._connection()
            smtp.sendmail(sender, [recipient], message)  # line ends become CRLF on the wire
            return "sent", f"accepted by {self.host}:{self.port}"
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            return self._reply(code, text)
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
            return self._reply(exc.smtp_code, exc.smtp_error)
        except (OSError, smtplib.SMTPException) as exc:
            self._down = f"{self.host}:{self.port}: {exc or type(exc).__name__}"
            self.close()
            return "defer", self._down

    def _reply(self, code: int, text: bytes | str) -> tuple[str, str]:
        words = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        with contextlib.suppress(smtplib.SMTPException, OSError):
            if self._smtp is not None:
                self._smtp.rset()
        return ("failed" if 500 <= code < 600 else "defer"), f"{code} {words}"[:300]

    def close(self) -> None:
        if self._smtp is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                self._smtp.quit()
            self._smtp = None


# --- one run -------------------------------------------------------------------------------

@dataclass
class RunLine:
    """What happened to one report (printed by the CLI)."""

    policy_domain: str
    report_id: str
    messages: int
    state: str  # sent / skipped / deferred / failed / claimed-elsewhere / would-send
    targets: list[Target]
    note: str = ""


def send_period(store: ReportStore, settings: Settings, resolver: Resolver, period: Period,
                submitter: Submitter | None, *, only_domain: str | None = None,
                dry_run: bool = False, host: str | None = None, now: datetime | None = None,
                psl: PublicSuffixList | None = None) -> tuple[RunOutcome, list[RunLine]]:
    """Send (or with ``dry_run`` only plan) every report of the period; returns the outcome
    for the status file and one line per report."""
    reporter = reporter_for(settings)
    now = now or datetime.now(UTC)
    today = now.astimezone(UTC).date()
    host = host or socket.gethostname()  # who claimed it, for people (no DNS on the way)
    planner = Planner(SafetyRules.from_settings(settings), resolver,
                      psl or load_psl(settings.dmarc_public_suffix_list or None),
                      lambda address: store.sent_on(address, today), dry_run)
    outcome = RunOutcome()
    lines: list[RunLine] = []
    for built in build_all(store, reporter, period, only_domain):
        lines.append(_one(store, settings, reporter, planner, built, period, submitter,
                          dry_run, host, now, today, outcome))
    return outcome, lines


def _one(store: ReportStore, settings: Settings, reporter: Reporter, planner: Planner,
         built: Built, period: Period, submitter: Submitter | None, dry_run: bool, host: str,
         now: datetime, today: date, outcome: RunOutcome) -> RunLine:
    report = built.report
    rid = report.report_id if report else ""
    messages = report.messages if report else 0
    whole = planner.whole_report_skip(built)
    if whole is not None:
        note = f"{whole[0].value}: {whole[1]}"
        if not dry_run:
            # claimed as "skipped", so every later run (and host) knows it is done
            if not store.claim(built.policy_domain, period.first, period.last, rid, host):
                return RunLine(built.policy_domain, rid, messages, "claimed-elsewhere", [],
                               "done before")
            store.set_claim_state(built.policy_domain, period.first, "skipped", note)
            outcome.skip(whole[0].value)
            if whole[0] is Skip.INVALID_REPORT:
                outcome.failed += 1
        return RunLine(built.policy_domain, rid, messages, "skipped", [], note)
    assert report is not None
    if dry_run:
        claim = store.claim_of(built.policy_domain, period.first)
        targets = planner.targets(built)
        note = f"already {claim.state} by {claim.claimed_by}" if claim else ""
        return RunLine(built.policy_domain, rid, messages, "would-send", targets, note)
    if not store.claim(built.policy_domain, period.first, period.last, rid, host) \
            and not store.reclaim(built.policy_domain, period.first, host,
                                  settings.reports_max_attempts):
        claim = store.claim_of(built.policy_domain, period.first)
        note = f"{claim.state} by {claim.claimed_by}" if claim else "claimed elsewhere"
        return RunLine(built.policy_domain, rid, messages, "claimed-elsewhere", [], note)
    done = store.deliveries(built.policy_domain, period.first)
    # a destination that got it (or refused it for good) on an earlier run is not tried again
    targets = [t for t in planner.targets(built) if done.get(t.address) not in ("sent", "failed")]
    states: Counter[str] = Counter(s for s in done.values() if s in ("sent", "failed"))
    for target in targets:
        if target.action == "skip":
            if done.get(target.address) == "skipped":
                continue  # counted on the run that first skipped it
            outcome.skip(target.reason)
            store.record_delivery(built.policy_domain, period.first, target.address,
                                  "skipped", today, f"{target.reason}: {target.detail}")
            continue
        if target.action == "defer":
            states["defer"] += 1
            store.record_delivery(built.policy_domain, period.first, target.address,
                                  "deferred", today, target.detail)
            continue
        assert submitter is not None
        message = compose(report, reporter, target.address, now)
        result, detail = submitter.submit(message, reporter.email, target.address)
        states[result] += 1
        store.record_delivery(built.policy_domain, period.first, target.address,
                              {"sent": "sent", "failed": "failed"}.get(result, "deferred"),
                              today, detail)
        if result == "sent":
            outcome.destinations_sent += 1
    return RunLine(built.policy_domain, rid, messages,
                   _finish(store, settings, built, period, states, outcome), targets)


def _finish(store: ReportStore, settings: Settings, built: Built, period: Period,
            states: Counter[str], outcome: RunOutcome) -> str:
    """The claim's final state for this run (``states``: this run's and earlier results)."""
    claim = store.claim_of(built.policy_domain, period.first)
    attempts = (claim.attempts if claim else 0) + 1
    if states["defer"]:
        if attempts >= settings.reports_max_attempts:
            store.set_claim_state(built.policy_domain, period.first, "failed",
                                  f"dropped after {attempts} attempts", attempted=True)
            outcome.failed += 1
            return "failed"
        store.set_claim_state(built.policy_domain, period.first, "deferred",
                              f"attempt {attempts}: will be tried again", attempted=True)
        outcome.deferred += 1
        return "deferred"
    if states["sent"]:
        store.set_claim_state(built.policy_domain, period.first, "sent",
                              f"{states['sent']} destinations", attempted=True)
        outcome.sent += 1
        return "sent"
    if states["failed"]:
        store.set_claim_state(built.policy_domain, period.first, "failed",
                              "refused by the MTA", attempted=True)
        outcome.failed += 1
        return "failed"
    store.set_claim_state(built.policy_domain, period.first, "skipped",
                          "no destination may receive it", attempted=True)
    return "skipped"


def write_out(store: ReportStore, settings: Settings, period: Period, out_dir: Path,
              only_domain: str | None = None) -> list[Path]:
    """``--out``: every report of the period as its .xml.gz file (validated), nothing mailed,
    nothing claimed."""
    reporter = reporter_for(settings, preview=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for built in build_all(store, reporter, period, only_domain):
        if built.report is None:
            if built.skip is Skip.INVALID_REPORT:
                print(f"mailsec-milter: {built.policy_domain}: {built.detail}", file=sys.stderr)
            continue
        path = out_dir / built.report.filename
        path.write_bytes(built.report.gzipped())
        written.append(path)
    return written
