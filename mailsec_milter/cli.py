"""Command line: ``run``, ``check``, ``check-config``, ``print-defaults``, ``version``,
``reports send|list|show|top`` (reports/commands.py).

Owns: argument parsing and printing. Must not: contain logic the daemon does not share — ``check``
runs a message through the very same engine, policy and renderer as the milter.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from . import __version__
from .authres import render, results_for
from .config import (
    ConfigError,
    Settings,
    load_settings,
    render_defaults_markdown,
    render_defaults_toml,
)
from .dns import CachingResolver, Resolver, ResolverSettings, StaticResolver
from .engine import Engine
from .model import Envelope, MessageSnapshot, TlsInfo, normalise_ip, parse_message
from .policy import decide


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailsec-milter",
        description="Inbound mail-authentication milter (SPF, DKIM, TLS; one A-R header).")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the milter in the foreground, logging to stderr",
                         description="Run the milter in the foreground, logging to stderr. "
                         "Without --config it runs on the embedded defaults.")
    run.add_argument("--config", help="TOML file; without it the embedded defaults are used")
    run.add_argument("--user", help="started as root, switch to this user ([milter] user)")

    check = sub.add_parser("check", help="run one message offline through the same engine",
                           description="Run one message through the same engine, policy and "
                           "renderer as the daemon and print the Authentication-Results header "
                           "it would add and the verdict.")
    check.add_argument("--config")
    check.add_argument("--client-ip", required=True)
    check.add_argument("--helo", required=True)
    check.add_argument("--mail-from", required=True, help="envelope sender; '' for the null sender")
    check.add_argument("--rcpt", action="append", default=[])
    check.add_argument("--tls", metavar="VERSION[:CIPHER[:BITS]]",
                       help="the TLS session the MTA would report, "
                            "e.g. TLSv1.3:TLS_AES_256_GCM_SHA384:256")
    check.add_argument("--sasl-user", help="SASL login the MTA would report ({auth_authen})")
    check.add_argument("--zone", help="answer DNS from this zone file instead of the network")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.add_argument("message", help="the message file (.eml)")

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
        if args.command == "check-config":
            from .reports.commands import sending_status

            settings = load_settings(args.path)
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


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class SecondCachedFormatter(logging.Formatter):
    """The standard format, with the date text made once per second instead of per record
    (``time.strftime`` showed up in the per-message profile)."""

    _cached: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord,  # noqa: N802 (overrides logging)
                   datefmt: str | None = None) -> str:
        second = int(record.created)
        if self._cached[0] != second:
            self._cached = (second, time.strftime("%Y-%m-%d %H:%M:%S",
                                                  self.converter(record.created)))
        return f"{self._cached[1]},{int(record.msecs):03d}"


def _setup_logging(level: str) -> None:
    """Logging to stderr, inherited by the forked workers. Every message logs one line, so
    that path is kept short with the switches Python's logging docs give ("Optimization"):
    our format reads no caller file/line and no thread or process names."""
    logging._srcfile = None  # no stack walk per record to find the caller
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SecondCachedFormatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def _run(args: argparse.Namespace) -> int:
    from .daemon import run  # imports libmilter; keep other commands free of it

    settings = load_settings(args.config)
    if args.user:
        settings = replace(settings, user=args.user)
    _setup_logging(settings.log_level)
    return run(settings, args.config, args.user)


def _tls_from_arg(text: str | None) -> TlsInfo:
    if not text:
        return TlsInfo()
    parts = text.split(":")
    bits = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
    return TlsInfo(version=parts[0], cipher=parts[1] if len(parts) > 1 else None, cipher_bits=bits)


def _check(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    _setup_logging("warning")
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
    if args.zone:
        try:
            resolver = StaticResolver.from_zone_text(Path(args.zone).read_text())
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
    if args.json:
        print(json.dumps({
            "authentication_results": header,
            "verdict": _jsonable(asdict(verdict)),
            "results": _jsonable(asdict(analysis)),
        }, indent=2))
    else:
        print(f"Authentication-Results: {header}")
        print(f"verdict: {verdict.action.value} (reason: {verdict.reason.value})"
              + (f" {verdict.reply.code} {verdict.reply.status} {verdict.reply.text}"
                 if verdict.reply else "")
              + (f" [dry run: would {verdict.dry_run_action.value}]"
                 if verdict.dry_run_action else ""))
    return 0


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
