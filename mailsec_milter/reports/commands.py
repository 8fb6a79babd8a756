"""``mailsec-milter reports send|list|show|top``: the report commands' printing and exit codes.

Owns: turning the command-line arguments into calls of sending.py and the store, what is
printed, the status file update of each ``send`` run, and exit codes (0 done, 1 the store or
the MTA could not be used, 2 configuration).
Must not: decide where a report goes (sending.py) or build XML (xmlreport.py).
"""

from __future__ import annotations

import argparse
import sys
import time
import xml.dom.minidom
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TextIO

from ..config import Settings
from ..dns import Resolver
from .sending import (
    SendingOffError,
    SmtpSubmitter,
    Submitter,
    build_all,
    missing_for_sending,
    reporter_for,
    send_period,
    write_out,
    yesterday,
)
from .status import RunOutcome, add_run, status_path
from .store import ReportStore, StoreError, open_store
from .xmlreport import InvalidReportError, Period


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reports = sub.add_parser("reports", help="DMARC aggregate reports (RFC 9990)",
                             description="Send and inspect DMARC aggregate reports from the "
                             "report store (docs/REPORTS.md).")
    commands = reports.add_subparsers(dest="reports_command", required=True)
    send = commands.add_parser("send", help="send the reports of a period (default: yesterday)",
                               description="Send one report per policy domain with records in "
                               "the period to its authorised rua mailto: destinations.")
    send.add_argument("--config")
    send.add_argument("--period", type=_day, help="the UTC day YYYY-MM-DD (default yesterday; "
                      "today is accepted for previews)")
    send.add_argument("--domain", help="only this policy domain")
    send.add_argument("--dry-run", action="store_true",
                      help="print what would go where (and why not), send nothing")
    send.add_argument("--out", metavar="DIR", help="write the .xml.gz files here instead of "
                      "mailing them (nothing is claimed)")
    send.add_argument("--zone", help="answer DNS from this zone file (previews and tests)")
    listing = commands.add_parser("list", help="periods and domains with records, and what "
                                  "was sent")
    listing.add_argument("--config")
    listing.add_argument("--period", type=_day, help="list this day's domains one by one")
    show = commands.add_parser("show", help="print the XML report of one domain")
    show.add_argument("--config")
    show.add_argument("--period", type=_day)
    show.add_argument("domain")
    top = commands.add_parser("top", help="top author domains or source IPs by messages")
    top.add_argument("--config")
    top.add_argument("--period", type=_day)
    top.add_argument("--by", choices=("domain", "source"), default="domain")
    top.add_argument("--limit", type=int, default=20)


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD") from None


def run(args: argparse.Namespace, settings: Settings,
        network_resolver: Callable[[Settings], Resolver],
        zone_resolver: Callable[[str], Resolver], out: TextIO | None = None,
        submitter: Submitter | None = None) -> int:
    """Dispatch one ``reports`` command; returns the exit code."""
    out = out or sys.stdout
    period = Period.day(args.period or yesterday())
    try:
        store = open_store(settings.reports_store)
    except StoreError as exc:
        print(f"mailsec-milter: report store: {exc}", file=sys.stderr)
        return 1
    resolver: Resolver | None = None
    try:
        if args.reports_command == "send":
            resolver = (zone_resolver(args.zone) if getattr(args, "zone", None)
                        else network_resolver(settings))
            return _send(args, settings, store, resolver, period, out, submitter)
        if args.reports_command == "list":
            return _list(store, args.period, out)
        if args.reports_command == "show":
            return _show(store, settings, period, args.domain, out)
        return _top(store, period, args.by, args.limit, out)
    except StoreError as exc:
        print(f"mailsec-milter: report store: {exc}", file=sys.stderr)
        return 1
    except InvalidReportError as exc:  # a bug: say so loudly, send nothing
        print(f"mailsec-milter: a report did not validate against RFC 9990: {exc}",
              file=sys.stderr)
        return 1
    finally:
        store.close()
        if resolver is not None:
            resolver.close()


def _send(args: argparse.Namespace, settings: Settings, store: ReportStore, resolver: Resolver,
          period: Period, out: TextIO, submitter: Submitter | None) -> int:
    if args.out:
        written = write_out(store, settings, period, Path(args.out), args.domain)
        for path in written:
            print(path, file=out)
        print(f"{len(written)} reports for {period.first} written to {args.out}", file=out)
        return 0
    try:
        reporter_for(settings)
    except SendingOffError as exc:
        print(f"mailsec-milter: {exc}", file=sys.stderr)
        return 2
    if period.last >= datetime.now(UTC).date() and not args.dry_run:
        print(f"mailsec-milter: warning: {period.first} is not over; the report covers what "
              "is recorded so far and is claimed: later records of that day are not sent",
              file=sys.stderr)
    own = submitter is None and not args.dry_run
    if own:
        submitter = SmtpSubmitter(settings.reports_submit)
    try:
        outcome, lines = send_period(store, settings, resolver, period, submitter,
                                     only_domain=args.domain, dry_run=args.dry_run)
    except StoreError:
        if not args.dry_run:
            _record(settings, RunOutcome(), succeeded=False)
        raise
    finally:
        if own and submitter is not None:
            submitter.close()
    for line in lines:
        print(f"{line.policy_domain}: {line.state} report {line.report_id or '-'} "
              f"({line.messages} messages){' - ' + line.note if line.note else ''}", file=out)
        for target in line.targets:
            why = ": ".join(w for w in (target.reason, target.detail) if w)
            print(f"  {target.action} {target.address}" + (f" ({why})" if why else ""),
                  file=out)
    if args.dry_run:
        print(f"dry run: {len(lines)} reports for {period.first}, nothing sent", file=out)
        return 0
    _record(settings, outcome, succeeded=True)
    skipped = sum(outcome.skipped.values())
    print(f"{period.first}: {outcome.sent} sent, {outcome.deferred} deferred, "
          f"{outcome.failed} failed, {skipped} skipped destinations/reports", file=out)
    return 0


def _record(settings: Settings, outcome: RunOutcome, succeeded: bool) -> None:
    path = status_path(settings.reports_store)
    try:
        add_run(path, outcome, time.time(), succeeded)
    except OSError as exc:
        print(f"mailsec-milter: cannot write the status file {path}: {exc}", file=sys.stderr)


def _list(store: ReportStore, period: date | None, out: TextIO) -> int:
    if period is None:
        for day, domains, messages in store.days():
            states: dict[str, int] = {}
            for claim in store.claims(day):
                if claim.period_begin == day:
                    states[claim.state] = states.get(claim.state, 0) + 1
            pending = domains - sum(states.values()) + states.get("deferred", 0)
            done = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
            print(f"{day}  {domains} domains  {messages} messages  {pending} pending"
                  + (f"  ({done})" if done else ""), file=out)
        return 0
    claims = {c.policy_domain: c for c in store.claims(period) if c.period_begin == period}
    for domain, messages in store.policy_domains(period, period):
        found = claims.get(domain)
        state = f"{found.state} by {found.claimed_by}" if found else "pending"
        print(f"{domain}  {messages} messages  {state}", file=out)
    return 0


def _show(store: ReportStore, settings: Settings, period: Period, domain: str, out: TextIO) -> int:
    reporter = reporter_for(settings, preview=True)
    for built in build_all(store, reporter, period, domain):
        if built.report is not None:
            pretty = xml.dom.minidom.parseString(built.report.xml).toprettyxml(indent="  ")
            out.write(pretty)
            return 0
    print(f"mailsec-milter: no records of {domain} on {period.first}", file=sys.stderr)
    return 1


def _top(store: ReportStore, period: Period, by: str, limit: int, out: TextIO) -> int:
    rows = store.top(period.first, period.last, by, max(1, limit))
    title = "author domain" if by == "domain" else "source IP"
    kinds = ("pass", "none", "quarantine", "reject")
    print(f"{title:<40} {'messages':>9} " + " ".join(f"{k:>10}" for k in kinds), file=out)
    for key, messages, split in rows:
        print(f"{key:<40} {messages:>9} " + " ".join(f"{split.get(k, 0):>10}" for k in kinds),
              file=out)
    return 0


def sending_status(settings: Settings) -> tuple[str, bool] | None:
    """``check-config``'s word on sending: (text, is_warning), or None when nothing needs
    saying (neither key set: sending off, as by default). Half-configured sending is a
    warning naming what is missing; configured sending says where reports go."""
    missing = missing_for_sending(settings)
    if len(missing) == 2:
        return None
    if missing:
        return ("DMARC report sending stays off until this is set too: " + "; ".join(missing),
                True)
    return (f"reports: sending DMARC reports as {settings.reports_from} via SMTP "
            f"{settings.reports_submit}", False)
