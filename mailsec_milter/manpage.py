"""The mailsec-milter(8) manual page, built from the same sources as the program.

Owns: rendering roff from the CLI's argument parser and the configuration KEYS table, so the
manual cannot drift from the code (docs/mailsec-milter.8 is this output; a test compares).
Must not: hold any fact that the parser or KEYS already hold.
"""

from __future__ import annotations

import argparse

from . import __version__
from .cli import CHECK_EXIT_HELP
from .config import KEYS, _toml_value


def _esc(text: str) -> str:
    """Escape text for roff: backslashes, and a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def _macro_arg(text: str) -> str:
    """Text for a macro line such as ``.B``: there a ``"`` groups arguments and vanishes, so an
    empty default ``""`` would print nothing and ``.TP`` would pull the description up beside
    the bare ``=`` as if it were the value; ``\\(dq`` prints the quote itself."""
    return _esc(text).replace('"', "\\(dq")


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices.items())
    return []


def render(parser: argparse.ArgumentParser) -> str:
    lines = [
        f'.TH MAILSEC\\-MILTER 8 "" "mailsec-milter {__version__}" "System Manager\'s Manual"',
        ".SH NAME",
        "mailsec\\-milter \\- inbound mail authentication milter (SPF, DKIM, DMARC, ARC, TLS)",
        ".SH SYNOPSIS",
    ]
    commands = _subcommands(parser)
    for _name, sub in commands:
        usage = sub.format_usage().replace("usage: ", "").strip()
        lines += [".B", _esc(" ".join(usage.split()))] if usage else []
        lines.append(".br")
    lines += [
        ".SH DESCRIPTION",
        _esc("mailsec-milter is a milter for Postfix (smtpd_milters) and Sendmail "
             "(INPUT_MAIL_FILTER). For every message it checks SPF (MAIL FROM and HELO), "
             "every DKIM signature, DMARC for every author domain, the ARC chain and the TLS "
             "status of the "
             "SMTP session, removes Authentication-Results headers that forge its authserv-id, "
             "inserts one Authentication-Results header of its own, and accepts, quarantines, "
             "rejects or tempfails the message according to the sender's policy and the "
             "local one."),
        ".SH COMMANDS",
    ]
    for name, sub in commands:
        lines += [".TP", f".B {_esc(name)}", _esc(sub.description or sub.format_usage())]
        for action in sub._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            flags = ", ".join(action.option_strings)
            metavar = "" if action.nargs == 0 else f" {action.metavar or action.dest.upper()}"
            lines += [".RS", ".TP", f".B {_esc(flags + metavar)}", _esc(action.help or ""),
                      ".RE"]
    lines += [".SH EXIT STATUS",
              _esc("0 on success; 2 for a usage error, an invalid configuration (check-config "
                   "names the key) or an input that cannot be read; run: 1 when the daemon "
                   "cannot start. check exits with its verdict: " + CHECK_EXIT_HELP + ".")]
    lines += [".SH CONFIGURATION",
              _esc("A TOML file; every key, its default and meaning. Durations take a unit "
                   "(ms, s, m, h), sizes K, M or G.")]
    section = ""
    for key in KEYS:
        if key.section != section:
            section = key.section
            lines += [".SS", _esc(f"[{section}]")]
        lines += [".TP", f".B {_esc(key.name)} = {_macro_arg(_toml_value(key.default))}",
                  _esc(f"{key.doc} ({key.type_name})")]
    lines += [
        ".SH SIGNALS",
        ".TP", ".B SIGHUP",
        _esc("Re-read the configuration file; on error keep the running one and log why."),
        ".TP", ".B SIGTERM, SIGINT",
        _esc("Stop accepting connections, let messages in flight finish, exit."),
        ".SH FILES",
        ".TP", ".I /etc/mailsec-milter/mailsec-milter.toml",
        _esc("The configuration file used by the systemd unit and the container."),
        ".SH SEE ALSO",
        _esc("postconf(5), sendmail(8); docs/MILTER_README.md, docs/CONFIGURATION.md, "
             "docs/POLICY.md, docs/OPERATIONS.md, docs/METRICS.md in the source tree."),
    ]
    return "\n".join(lines) + "\n"
