"""Command line: ``run``, ``check``, ``audit``, ``check-config``, ``print-defaults``,
``version``, ``reports send|list|show|top`` (reports/commands.py).

Owns: argument parsing and printing. Must not: contain logic the daemon does not share — ``check``
runs a message through the very same engine, policy and renderer as the milter.
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import pwd
import stat
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from . import __version__
from .authres import forged_indices, render, results_for
from .config import (
    ConfigError,
    Settings,
    config_warnings,
    load_settings,
    render_defaults_markdown,
    render_defaults_toml,
)
from .dns import CachingResolver, Resolver, ResolverSettings, StaticResolver
from .engine import Engine
from .logsetup import LogSetupError, setup_logging
from .model import Envelope, MessageSnapshot, TlsInfo, normalise_ip, parse_message
from .policy import Action, decide, explain_identities

# ``check``'s exit status, one per verdict; 2 stays argparse's (and our) usage/input error and
# 1 Python's status for a crash, so a script can tell a verdict from a failure to decide.
CHECK_EXIT = {Action.ACCEPT: 0, Action.QUARANTINE: 3, Action.REJECT: 4, Action.TEMPFAIL: 5}
CHECK_EXIT_HELP = ("0 accept, 3 quarantine, 4 reject, 5 tempfail (the verdict after dry_run: "
                   "a dry run accepts); 2 for a usage, configuration or input error")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailsec-milter",
        description="Inbound mail-authentication milter (SPF, DKIM, DMARC, ARC, TLS; one "
                    "Authentication-Results header and a verdict).")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the milter in the foreground",
                         description="Run the milter in the foreground, logging to stderr or "
                         "syslog ([log] target). Without --config it runs on the embedded "
                         "defaults.")
    run.add_argument("--config", help="TOML file; without it the embedded defaults are used")
    run.add_argument("--user", help="started as root, switch to this user ([milter] user)")

    check = sub.add_parser("check", help="run one message offline through the same engine",
                           description="Run one message through the same engine, policy and "
                           "renderer as the daemon and print the Authentication-Results header "
                           "it would add, what each identity gave, how many forged "
                           "Authentication-Results headers it would remove, and the verdict. "
                           "Exit status: " + CHECK_EXIT_HELP + ".")
    check.add_argument("--config")
    check.add_argument("--client-ip", required=True)
    check.add_argument("--helo", required=True)
    check.add_argument("--mail-from", required=True, help="envelope sender; '' for the null sender")
    check.add_argument("--rcpt", action="append", default=[])
    check.add_argument("--tls", metavar="VERSION[:CIPHER[:BITS]]",
                       help="the TLS session the MTA would report, "
                            "e.g. TLSv1.3:TLS_AES_256_GCM_SHA384:256")
    check.add_argument("--sasl-user", help="SASL login the MTA would report ({auth_authen})")
    check.add_argument("--zone", metavar="FILE",
                       help="answer DNS from this zone file instead of the network: an "
                            "ordinary BIND zone file ($ORIGIN, $TTL, relative names, @, "
                            "multi-string TXT), or one record a line with absolute names "
                            "(name [ttl] [IN] type data; the data TIMEOUT, SERVFAIL, REFUSED, "
                            "NXDOMAIN or NODATA makes that lookup end so); names not in the "
                            "file do not exist")
    check.add_argument("--origin", metavar="DOMAIN",
                       help="origin of the --zone file's relative names before any $ORIGIN "
                            "line (as named.conf's zone name gives it)")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.add_argument("message", help="the message file (.eml)")

    audit = sub.add_parser(
        "audit", help="audit domains' DMARC, SPF, MTA-STS, TLS-RPT, DNSSEC and DANE posture",
        description="Audit where domains stand: the DMARC ladder (none, quarantine, reject), "
        "SPF, MX, MTA-STS, TLS-RPT, DNSSEC and DANE, each finding with its fix (checkdmarc; "
        "install mailsec-milter[audit]). DNS goes to [dns] nameservers; the MTA-STS policy "
        "fetch (HTTPS) and --check-mx-tls resolve names through the system resolver. Exit "
        "status: " + AUDIT_EXIT_HELP + ".")
    audit.add_argument("domains", nargs="*", metavar="DOMAIN")
    audit.add_argument("--own", action="store_true", help="also audit [audit] domains")
    audit.add_argument("--top", type=int, metavar="N",
                       help="also audit the N policy domains that sent the most mail in the "
                            "last reporting period (the report store), with their share")
    audit.add_argument("--json", action="store_true", help="machine-readable output")
    audit.add_argument("--baseline", choices=("none", "quarantine", "reject"),
                       help="the DMARC policy each domain must reach (default [audit] "
                            "baseline: reject)")
    audit.add_argument("--check-mx-tls", action="store_true",
                       help="probe STARTTLS on port 25 of every MX host (connects to them)")
    audit.add_argument("--write-metrics", metavar="FILE", nargs="?", const="",
                       help="write the result file /metrics reads (default [audit] "
                            "result_file); with --own only")
    audit.add_argument("--config")

    check_config = sub.add_parser("check-config", help="validate a configuration file",
                                  description="Validate a configuration file; exit 0 if it is "
                                  "valid, 2 with a message naming the key otherwise.")
    check_config.add_argument("path")

    defaults = sub.add_parser("print-defaults", help="print the full default configuration",
                              description="Print the full default configuration as commented "
                              "TOML.")
    defaults.add_argument("--markdown", action="store_true", help="as the docs' table")

    from .reports.commands import add_parser as add_reports_parser

    add_reports_parser(sub)
    sub.add_parser("version", help="print the version")
    sub.add_parser("manpage", help="print the mailsec-milter(8) manual page (roff)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "check":
            return _check(args)
        if args.command == "audit":
            return _audit(args)
        if args.command == "check-config":
            from .reports.commands import sending_status

            settings = load_settings(args.path)
            for warning in config_warnings(settings) + account_warnings(settings, args.path):
                print(f"mailsec-milter: warning: {warning}", file=sys.stderr)
            print(f"{args.path}: OK")
            sending = sending_status(settings)
            if sending is not None:
                text, is_warning = sending
                print(f"mailsec-milter: warning: {text}" if is_warning else text,
                      file=sys.stderr if is_warning else sys.stdout)
            return 0
        if args.command == "reports":
            from .reports.commands import run as run_reports

            return run_reports(args, load_settings(args.config), _network_resolver,
                               _zone_resolver)
        if args.command == "print-defaults":
            sys.stdout.write(render_defaults_markdown() if args.markdown
                             else render_defaults_toml())
            return 0
        if args.command == "manpage":
            from .manpage import render as render_manpage

            sys.stdout.write(render_manpage(_parser()))
            return 0
        print(__version__)
        return 0
    except ConfigError as exc:
        print(f"mailsec-milter: configuration error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from .daemon import run  # imports libmilter; keep other commands free of it

    settings = load_settings(args.config)
    if args.user:
        settings = replace(settings, user=args.user)
    try:
        setup_logging(settings.log_level, settings.log_target, settings.log_facility,
                      settings.log_syslog_socket)
    except LogSetupError as exc:
        print(f"mailsec-milter: {exc}", file=sys.stderr)
        return 1
    return run(settings, args.config, args.user)


def account_warnings(settings: Settings, path: str) -> list[str]:
    """What ``check-config`` can tell about ``[milter] user`` that the file alone cannot: the
    account exists, and it can read this file (the daemon re-reads it on reload as that user,
    with its primary group only)."""
    if not settings.user:
        return []
    try:
        entry = pwd.getpwnam(settings.user)
    except KeyError:
        return [f"[milter] user {settings.user!r} does not exist: the daemon will refuse to "
                "start as root (create it, e.g. useradd --system --no-create-home "
                f"{settings.user})"]
    mode = os.stat(path)
    if entry.pw_uid == mode.st_uid:
        readable = bool(mode.st_mode & stat.S_IRUSR)
    elif entry.pw_gid == mode.st_gid:
        readable = bool(mode.st_mode & stat.S_IRGRP)
    else:
        readable = bool(mode.st_mode & stat.S_IROTH)
    if entry.pw_uid == 0 or readable:
        return []
    try:
        group = grp.getgrgid(entry.pw_gid).gr_name
    except KeyError:
        group = str(entry.pw_gid)
    return [f"{path} is not readable by [milter] user {settings.user!r}: every reload "
            "(SIGHUP) would fail; make it readable by that user, e.g. chgrp "
            f"{group} {path} && chmod 640 {path}"]


def _tls_from_arg(text: str | None) -> TlsInfo:
    if not text:
        return TlsInfo()
    parts = text.split(":")
    bits = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
    return TlsInfo(version=parts[0], cipher=parts[1] if len(parts) > 1 else None, cipher_bits=bits)


def _check(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    setup_logging("warning")
    try:
        raw = Path(args.message).read_bytes()
    except OSError as exc:
        print(f"mailsec-milter: cannot read {args.message}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        client_ip = normalise_ip(args.client_ip)
    except ValueError:
        print(f"mailsec-milter: --client-ip {args.client_ip!r} is not an IP address",
              file=sys.stderr)
        return 2
    resolver: Resolver
    if args.origin and not args.zone:
        print("mailsec-milter: --origin needs --zone", file=sys.stderr)
        return 2
    if args.zone:
        try:
            resolver = StaticResolver.from_zone_file(Path(args.zone).read_text(),
                                                     args.origin, args.zone)
        except (OSError, ValueError) as exc:
            print(f"mailsec-milter: --zone {args.zone}: {exc}", file=sys.stderr)
            return 2
    else:
        resolver = _network_resolver(settings)
    headers, body = parse_message(raw)
    envelope = Envelope(client_ip=client_ip, helo=args.helo, mail_from=args.mail_from.strip("<>"),
                        rcpt_to=tuple(args.rcpt), sasl_user=args.sasl_user,
                        tls=_tls_from_arg(args.tls))
    with ThreadPoolExecutor(max_workers=4) as pool:
        engine = Engine(settings, resolver, pool)
        analysis = engine.analyse(MessageSnapshot(envelope, headers, body))
    verdict = decide(analysis, envelope, settings)
    header = render(settings.authserv_id, results_for(analysis, verdict))
    forged = len(forged_indices(headers, settings.authserv_id,
                                settings.remove_subdomain_authserv_ids))
    identities = explain_identities(analysis)
    if args.json:
        print(json.dumps({
            "authentication_results": header,
            "identities": identities,
            "forged_ar_removed": forged,
            "exit_status": CHECK_EXIT[verdict.action],
            "verdict": _jsonable(asdict(verdict)),
            "results": _jsonable(asdict(analysis)),
        }, indent=2))
    else:
        print(f"Authentication-Results: {header}")
        print(f"identities: {identities}")
        print(f"forged Authentication-Results removed: {forged}")
        print(f"verdict: {verdict.action.value} (reason: {verdict.reason.value})"
              + (f" {verdict.reply.code} {verdict.reply.status} {verdict.reply.text}"
                 if verdict.reply else "")
              + (f" [dry run: would {verdict.dry_run_action.value}]"
                 if verdict.dry_run_action else ""))
    return CHECK_EXIT[verdict.action]


AUDIT_EXIT_HELP = ("0 every domain meets the baseline, 1 one falls short, 2 an error (a name "
                   "that is not a domain, one that does not exist, DNS failing, a domain "
                   "over [audit] domain_timeout) or a usage error")


def _audit(args: argparse.Namespace) -> int:
    """The ``audit`` command: checkdmarc is imported here only, never by the daemon."""
    settings = load_settings(args.config)
    try:
        from . import audit as posture_audit  # checkdmarc: the [audit] extra
        from .audit_report import render_json, render_text, top_senders
    except ImportError as exc:
        print(f"mailsec-milter: audit needs the audit extra (pip install "
              f"'mailsec-milter[audit]'): {exc}", file=sys.stderr)
        return 2
    setup_logging("error")
    domains = list(args.domains)
    if args.own:
        if not settings.audit_domains:
            print("mailsec-milter: --own: [audit] domains is empty", file=sys.stderr)
            return 2
        domains += settings.audit_domains
    top = None
    if args.top is not None:
        if args.top < 1:
            print("mailsec-milter: --top N needs N >= 1", file=sys.stderr)
            return 2
        try:
            top = top_senders(settings.reports_store, args.top)
        except Exception as exc:  # StoreError, a missing PostgreSQL driver: one line
            print(f"mailsec-milter: --top: {exc}", file=sys.stderr)
            return 2
        domains += [s.domain for s in top.senders]
    if args.write_metrics is not None and not args.own:
        print("mailsec-milter: --write-metrics needs --own (the gauges are labelled with "
              "[audit] domains only)", file=sys.stderr)
        return 2
    if not domains:
        print("mailsec-milter: audit: name a DOMAIN, --own or --top N", file=sys.stderr)
        return 2
    options = posture_audit.AuditOptions(
        nameservers=settings.nameservers, dns_timeout=settings.dns_timeout,
        domain_timeout=settings.audit_domain_timeout,
        baseline=args.baseline or settings.audit_baseline, check_mx_tls=args.check_mx_tls)
    run = posture_audit.run_audit(domains, options, progress=posture_audit.stderr_progress())
    sys.stdout.write(render_json(run, top) if args.json else render_text(run, top))
    if args.write_metrics is not None:
        own = set(settings.audit_domains)
        own_run = posture_audit.AuditRun([r for r in run.results if r.domain in own],
                                         run.baseline)
        path = (args.write_metrics or settings.audit_result_file
                or posture_audit.default_result_path())
        try:
            posture_audit.write_result_file(path, own_run)
        except OSError as exc:
            print(f"mailsec-milter: cannot write {path}: {exc.strerror}", file=sys.stderr)
            return 2
    return run.exit_status


def _network_resolver(settings: Settings) -> CachingResolver:
    return CachingResolver(ResolverSettings(nameservers=settings.nameservers,
                                            timeout=settings.dns_timeout))


def _zone_resolver(path: str) -> StaticResolver:
    try:
        return StaticResolver.from_zone_text(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--zone {path}: {exc}") from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value
