"""Configuration: TOML in, typed frozen settings out, from one table of keys.

Owns: the list of every key with its type, default, unit and meaning (``KEYS``); validation with
errors that name the key; ``print-defaults`` and the generated docs/CONFIGURATION.md.
Must not: open sockets, resolve names, or read anything but the file it is given.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
import string
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .addresses import normalise_domain
from .dns import parse_nameserver


class ConfigError(ValueError):
    """A configuration problem; the message names the key and what is wrong."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]?)\s*$", re.I)
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_duration(value: Any) -> float:
    """``"5s"``, ``"250ms"``, ``"2m"``, ``"1h"`` → seconds. Bare numbers are refused."""
    if not isinstance(value, str):
        raise ValueError(f"expected a duration string with a unit such as \"5s\", got {value!r}")
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(f"bad duration {value!r}: use a number and a unit (ms, s, m, h, d), "
                         "e.g. \"5s\"")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"expected a size such as \"32M\", got {value!r}")
    match = _SIZE.match(str(value))
    if match is None:
        raise ValueError(f"bad size {value!r}: use a number and an optional unit K, M or G")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]


def parse_socket_spec(value: str) -> str:
    """Validate libmilter socket syntax: ``inet:PORT@HOST``, ``inet6:PORT@HOST``, ``unix:/path``."""
    if value.startswith(("unix:", "local:")):
        path = value.split(":", 1)[1]
        if not path.startswith("/"):
            raise ValueError(f"unix socket path must be absolute in {value!r}")
        return value
    if value.startswith(("inet:", "inet6:")):
        rest = value.split(":", 1)[1]
        port_text, _, host = rest.partition("@")
        # isascii(): str.isdigit() also accepts "²" (int() refuses it) and "٣" (int() reads 3)
        if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
            raise ValueError(f"bad port in {value!r}")
        if not host:
            raise ValueError(f"missing host in {value!r}: write inet:PORT@HOST")
        return value
    raise ValueError(f"bad socket {value!r}: use inet:PORT@HOST, inet6:PORT@HOST or unix:/path")


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value!r}")
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range {low}..{high}")
        return value

    return check


def _duration_range(low: float, high: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        seconds = parse_duration(value)
        if not low <= seconds <= high:
            raise ValueError(f"{value} is out of range {low:g}s..{high:g}s")
        return seconds

    return check


def _nameservers(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings like [\"127.0.0.1\", \"192.0.2.53:5353\"]")
    for item in value:
        parse_nameserver(item)
    return tuple(value)


def _choice(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return check


def _socket(value: Any) -> str:
    return parse_socket_spec(_str(value))


def _octal_mode(value: Any) -> int:
    text = _str(value)
    if not re.fullmatch(r"0?[0-7]{3}", text):
        raise ValueError(f"{text!r}: expected an octal mode such as \"0660\"")
    return int(text, 8)


def _listen(value: Any) -> str:
    text = _str(value).strip()
    if not text:
        return ""
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: expected IP:PORT, e.g. \"127.0.0.1:9894\"") from None
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: bad port")
    return text


_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")


def _report_address(value: Any) -> str:
    text = _str(value).strip()
    if not text:
        return ""
    local, at, domain = text.rpartition("@")
    if not at or not _LOCAL_PART.match(local):
        raise ValueError(f"{text!r} is not an address like dmarc-reports@example.com")
    return f"{local}@{_domain(domain)}"


def _suppressions(value: Any) -> frozenset[str]:
    out = set()
    for item in _string_list(value):
        out.add(_report_address(item) if "@" in item else _domain(item.strip()))
    return frozenset(out)


def _host_port(value: Any) -> str:
    text = _str(value).strip()
    host, colon, port = text.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not (port.isascii() and port.isdigit()) \
            or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: expected HOST:PORT, e.g. \"127.0.0.1:25\"")
    return text


def _string_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings")
    return value


def _networks(value: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    out = []
    for item in _string_list(value):
        try:
            out.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not a network (use CIDR, e.g. 192.0.2.0/24)") from None
    return tuple(out)


_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*"
                     r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


def _domain(text: str) -> str:
    """The same A-label form the checks compare with (IDNA2008, addresses.normalise_domain)."""
    name = normalise_domain(text) if isinstance(text, str) else None
    if name is None or not _DOMAIN.match(name):
        raise ValueError(f"{text!r} is not a domain name")
    return name


def _domains(value: Any) -> frozenset[str]:
    return frozenset(_domain(v) for v in _string_list(value))


def _domain_tuple(value: Any) -> tuple[str, ...]:
    """Domains in the operator's order, duplicates dropped (the audit reports in this order)."""
    return tuple(dict.fromkeys(_domain(v) for v in _string_list(value)))


DOMAIN_ACTIONS = ("reject", "quarantine", "never_reject", "accept")


def _domain_overrides(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise ValueError('expected a table like { "example.com" = "reject" }')
    out = []
    for domain, action in value.items():
        if action not in DOMAIN_ACTIONS:
            raise ValueError(f"{domain}: expected one of {', '.join(DOMAIN_ACTIONS)}, "
                             f"got {action!r}")
        out.append((_domain(domain), action))
    return tuple(sorted(out))


def _absolute_path(value: Any) -> str:
    text = _str(value)
    if not text.startswith("/"):
        raise ValueError(f"{text!r}: expected an absolute path")
    return text


# The facilities logsetup.FACILITIES maps (kept here too: config imports no logging code).
FACILITY_NAMES = ("mail", "daemon", "user", *(f"local{n}" for n in range(8)))


def _header_name(value: Any) -> str:
    name = _str(value)
    if not re.fullmatch(r"[!-9;-~]+", name):  # fullmatch: "$" would let a final "\n" in
        raise ValueError(f"{name!r} is not a header field name")
    return name


@dataclass(frozen=True)
class Key:
    """One configuration key: where it lives, its TOML default, how to read it, what it means."""

    section: str
    name: str
    default: Any
    parse: Callable[[Any], Any]
    doc: str
    type_name: str

    @property
    def dotted(self) -> str:
        return f"[{self.section}] {self.name}"


DEFAULT_SOCKET = "inet:8894@127.0.0.1"

KEYS: tuple[Key, ...] = (
    Key("milter", "socket", DEFAULT_SOCKET, _socket,
        "Where the MTA connects, in libmilter syntax: inet:PORT@HOST, inet6:PORT@HOST or "
        "unix:/path.",
        "socket"),
    Key("milter", "user", "", _str,
        "Started as root, switch to this unprivileged user once the socket is open (the "
        "daemon refuses to keep running as root).", "user name"),
    Key("milter", "socket_mode", "0660", _octal_mode,
        "Permissions of a unix: socket the daemon creates (octal); not used for a socket "
        "systemd passes.", "octal mode"),
    Key("milter", "socket_group", "", _str,
        "Group of a unix: socket the daemon creates, e.g. \"postfix\" (needs a start as "
        "root; the shipped unit cannot change groups: use the socket unit's SocketGroup=); "
        "empty keeps the default.", "group name"),
    Key("milter", "workers", 0, _int_range(0, 256),
        "Worker processes sharing the socket (Python runs one core per process); 0 means one "
        "per CPU core.", "integer"),
    Key("milter", "authserv_id", "", _str,
        "The authserv-id in our Authentication-Results header; empty means this host's FQDN.",
        "string"),
    Key("milter", "remove_subdomain_authserv_ids", False, _bool,
        "Also remove incoming A-R headers whose authserv-id is a subdomain of ours.", "bool"),
    Key("milter", "message_deadline", "20s", _duration_range(0.1, 600),
        "Longest end-of-message wait for outstanding DNS work; keep it well below Postfix's "
        "milter_content_timeout (300s).", "duration"),
    Key("milter", "max_header_bytes", "1M", parse_size,
        "Header bytes kept per message; beyond this the message is tempfailed, not truncated.",
        "size"),
    Key("milter", "max_body_bytes", "64M", parse_size,
        "Body bytes kept per message for DKIM; a longer body is never truncated silently: its "
        "signatures are reported as dkim=permerror (body too large). Keep it above Postfix's "
        "message_size_limit.", "size"),
    Key("dns", "nameservers", [], _nameservers,
        "Resolvers to ask, as \"IP\" or \"IP:PORT\"; empty means the system resolvers "
        "(/etc/resolv.conf).", "list of strings"),
    Key("dns", "timeout", "5s", _duration_range(0.01, 60),
        "Per-query timeout, across retries.", "duration"),
    Key("dns", "cache_entries", 10000, _int_range(0, 10_000_000),
        "Answers kept in the cache (0 turns the cache off).", "integer"),
    Key("dns", "max_ttl", "1h", _duration_range(0, 86400 * 7),
        "Upper bound on how long an answer is cached.", "duration"),
    Key("dns", "negative_ttl", "5m", _duration_range(0, 86400),
        "Upper bound on how long NXDOMAIN/NODATA is cached.", "duration"),
    Key("spf", "check_helo", True, _bool,
        "Also evaluate SPF for the HELO identity (RFC 7208 §2.3).", "bool"),
    Key("dkim", "max_signatures", 10, _int_range(1, 1000),
        "DKIM signatures verified per message; later ones are reported as skipped.", "integer"),
    Key("dkim", "allow_partial_body", False, _bool,
        "Accept signatures whose l= leaves part of the body unsigned (RFC 6376 §8.2 risk).",
        "bool"),
    Key("dmarc", "enabled", True, _bool,
        "Evaluate DMARC for every author domain of the From header(s).", "bool"),
    Key("dmarc", "mode", "rfc9989", _choice("rfc9989", "rfc7489"),
        "rfc9989: policy discovery by the DNS tree walk; rfc7489: the public suffix list finds "
        "the organizational domain and pct= is honoured.", "choice"),
    Key("dmarc", "public_suffix_list", "", _str,
        "rfc7489 mode: path of a public_suffix_list.dat; empty means the copy shipped with the "
        "publicsuffixlist package.", "path"),
    Key("arc", "enabled", True, _bool,
        "Validate ARC chains (RFC 8617) and report arc= in the header; needed for "
        "trusted_arc_sealers.", "bool"),
    Key("policy", "dry_run", False, _bool,
        "Decide, log and count, but always accept (the header records the would-be verdict).",
        "bool"),
    Key("policy", "trusted_networks", ["127.0.0.0/8", "::1/128"], _networks,
        "Client networks (CIDR) whose mail is checked and stamped but never enforced. The "
        "default, loopback, is how Postfix presents locally submitted mail (sendmail(1), "
        "pickup) and local apps; set [] when a content filter re-injects outside mail through "
        "loopback into an smtpd that runs this milter.",
        "list of CIDRs"),
    Key("policy", "trusted_arc_sealers", [], _domains,
        "ARC sealers (d= of the newest ARC-Seal) trusted to vouch for forwarded mail: when "
        "DMARC fails here, the chain passes and that sealer recorded dmarc=pass for the same "
        "From domain, the DMARC policy is not applied (override trusted_forwarder).",
        "list of domains"),
    Key("policy", "skip_authenticated", True, _bool,
        "Never enforce on SASL-authenticated clients ({auth_authen}): a domain's own users "
        "must not be rejected by their own p=reject.", "bool"),
    Key("policy", "domain_overrides", {}, _domain_overrides,
        "Per author domain: \"reject\" or \"quarantine\" (act on a DMARC fail even under "
        "p=none), \"never_reject\" (at most quarantine), \"accept\" (never act).",
        "table of domain = action"),
    Key("policy", "downgrade_reject", False, _bool,
        "Quarantine where the sender's policy says reject (the same as dmarc_reject = "
        "\"never\"; kept for existing configurations).", "bool"),
    Key("policy", "dmarc_reject", "evidence", _choice("evidence", "always", "never"),
        "What a DMARC fail under p=reject becomes. evidence: reject only when the local "
        "analysis finds no sign of a mailing list, an ARC forwarder, a signature broken in "
        "transit or a known sender, else quarantine (RFC 9989 §8); always: reject on the "
        "policy alone (RFC 7489 behaviour, not conforming to RFC 9989 §8); never: quarantine "
        "at most.", "choice"),
    Key("policy", "history_days", 30, _int_range(0, 366),
        "dmarc_reject = evidence: a client network that delivered DMARC-passing mail for the "
        "author domain within this many days (read from the [reports] store) is a known "
        "sender; 0 turns this sign off.", "days"),
    Key("policy", "history_ipv4_prefix", 24, _int_range(8, 32),
        "Prefix length that makes an IPv4 client address a sending network for "
        "history_days.", "integer"),
    Key("policy", "history_ipv6_prefix", 56, _int_range(16, 128),
        "Prefix length that makes an IPv6 client address a sending network for "
        "history_days.", "integer"),
    Key("policy", "history_refresh", "10m", _duration_range(1, 86400),
        "How often each worker re-reads the sending history from the store, in the "
        "background (never per message).", "duration"),
    Key("policy", "history_max_entries", 200000, _int_range(0, 10_000_000),
        "Most (author domain, network) pairs a worker keeps in memory; beyond this the "
        "rest are left out (logged).", "integer"),
    Key("policy", "reject_on_spf_fail", False, _bool,
        "Reject SPF fail (MAIL FROM) when DMARC did not pass (RFC 7208 §8.4; off by default).",
        "bool"),
    Key("policy", "tls_required_domains", [], _domains,
        "Author domains whose mail must arrive over TLS; plaintext is rejected.",
        "list of domains"),
    Key("policy", "quarantine_method", "hold", _choice("hold", "tag", "both"),
        "hold: the milter quarantine action (Postfix hold queue); tag: add quarantine_header "
        "for downstream filtering; both.", "choice"),
    Key("policy", "quarantine_header", "X-Mailsec-Quarantine", _header_name,
        "Header added by quarantine_method tag (incoming copies are removed).", "header name"),
    Key("policy", "on_internal_error", "tempfail", _choice("tempfail", "accept"),
        "Verdict when a check crashed: tempfail (the sender retries) or accept.", "choice"),
    Key("policy", "on_dns_temperror", "tempfail", _choice("tempfail", "accept"),
        "Verdict when a DNS temperror could change the verdict (e.g. the DMARC record of the "
        "author domain could not be fetched).", "choice"),
    Key("policy", "unusable_from", "quarantine", _choice("quarantine", "reject", "accept"),
        "Verdict when not one author domain can be read from the message (no From header, "
        "or a From no reader could take an address from; RFC 5322 §3.6 requires one). A From "
        "with more than 10 author domains is always rejected (RFC 9989 §11.5).", "choice"),
    Key("policy", "reject_reply",
        "550 5.7.1 Rejected by the DMARC policy of {domain}: {failed}", _str,
        "SMTP reply for a DMARC reject (5xx with 5.x.x); {domain} and {failed} are filled in.",
        "reply"),
    Key("policy", "spf_reject_reply",
        "550 5.7.23 SPF check failed for {domain}: {failed}", _str,
        "SMTP reply for reject_on_spf_fail (RFC 7372 5.7.23).", "reply"),
    Key("policy", "tls_reject_reply",
        "550 5.7.10 Mail from {domain} must arrive over TLS", _str,
        "SMTP reply for tls_required_domains (RFC 5248 5.7.10).", "reply"),
    Key("policy", "tempfail_reply", "451 4.7.0 Temporary authentication failure, try again later",
        _str, "SMTP reply for a tempfail verdict (a 4xx code with a 4.x.x status).", "reply"),
    Key("policy", "unusable_from_reply",
        "550 5.7.1 Rejected: unusable From header field: {failed}", _str,
        "SMTP reply when unusable_from rejects, or the From names too many domains; "
        "{failed} says which.", "reply"),
    Key("reports", "record", True, _bool,
        "Record what DMARC aggregate reports need (RFC 9990) for every message whose DMARC "
        "policy record was found, off the reply path (docs/REPORTS.md).", "bool"),
    Key("reports", "store", "", _str,
        "Where records go: a file path (SQLite) or a postgresql:// URL shared by several MX "
        "hosts; \"\" means reports.sqlite in the state directory ($STATE_DIRECTORY, else "
        "/var/lib/mailsec-milter).", "path or URL"),
    Key("reports", "queue_size", 10000, _int_range(10, 1_000_000),
        "Records waiting for the store at most; when full (or the store is down) records are "
        "dropped and counted, mail is never delayed.", "records"),
    Key("reports", "keep", "14d", _duration_range(86400, 366 * 86400),
        "How long recorded days stay in the store.", "duration"),
    Key("reports", "org_name", "", _str,
        "Our name in the reports we send (RFC 9990 report_metadata org_name); sending is off "
        "until it and [reports] from are set.", "string"),
    Key("reports", "from", "", _report_address,
        "The address reports are sent from and replies go to (report_metadata email); its "
        "domain is the Submitter and the file name's receiver. Reports are never sent to it "
        "or its domain, and rows about mail from its domain are left out (no loops).",
        "address"),
    Key("reports", "contact_info", "", _str,
        "Optional extra_contact_info in the reports (a URL or phone number).", "string"),
    Key("reports", "submit", "127.0.0.1:25", _host_port,
        "HOST:PORT of the MTA that takes our report mail by SMTP (the local one, so the "
        "operator's own DKIM signing applies).", "host:port"),
    Key("reports", "max_destinations", 5, _int_range(1, 20),
        "At most this many mailto: destinations of one rua list get a report (RFC 9990 §3.5 "
        "\"up to the Receiver's limits\").", "destinations"),
    Key("reports", "max_per_destination", 1000, _int_range(1, 1_000_000),
        "Reports one destination address receives per UTC day at most (from every host of "
        "the store); the rest are skipped and counted.", "reports"),
    Key("reports", "suppress", [], _suppressions,
        "Destinations never sent to: addresses (\"dmarc@example.com\") or domains "
        "(\"example.com\", also its subdomains).", "list"),
    Key("reports", "only_aligned_pass_domains", False, _bool,
        "Send a domain's report only if it had at least one DMARC-aligned pass in the period "
        "(a domain that only ever failed is likely forged; its rua may be a victim's).",
        "bool"),
    Key("reports", "max_attempts", 3, _int_range(1, 20),
        "Runs that try a report whose destination could not be checked or reached (DNS "
        "trouble, MTA down) before it is dropped and counted as failed.", "runs"),
    Key("audit", "domains", [], _domain_tuple,
        "Your own domains: what `mailsec-milter audit --own` checks (docs/AUDIT.md) and the only "
        "domains the posture gauges on /metrics are labelled with.", "list of domains"),
    Key("audit", "baseline", "reject", _choice("none", "quarantine", "reject"),
        "The DMARC policy every audited domain must reach (audit's exit status 1 and the "
        "baseline-met gauge otherwise); --baseline overrides it.", "choice"),
    Key("audit", "result_file", "", _str,
        "Where `audit --own --write-metrics` writes its result and /metrics reads it; \"\" means "
        "audit.json in the state directory ($STATE_DIRECTORY, else /var/lib/mailsec-milter).",
        "path"),
    Key("audit", "domain_timeout", "30s", _duration_range(1, 600),
        "Time one domain's audit may take at most (DNS, the MTA-STS policy over HTTPS, and "
        "with --check-mx-tls the STARTTLS probes); a domain over it is reported as an error.",
        "duration"),
    Key("metrics", "listen", "127.0.0.1:9894", _listen,
        "HOST:PORT for the Prometheus /metrics endpoint (loopback by default); \"\" turns it "
        "off.", "address"),
    Key("log", "level", "info", _choice("debug", "info", "warning", "error"),
        "Lowest level logged.", "choice"),
    Key("log", "target", "stderr", _choice("stderr", "syslog"),
        "stderr (journald under systemd, which forwards to syslog with the unit's "
        "SyslogFacility=mail) or syslog: RFC 3164 datagrams to syslog_socket, so the lines "
        "land in mail.log beside Postfix's. Changes on restart.", "choice"),
    Key("log", "facility", "mail", _choice(*FACILITY_NAMES),
        "Syslog facility for target syslog: mail, daemon, user or local0..local7.", "choice"),
    Key("log", "syslog_socket", "/dev/log", _absolute_path,
        "The local syslog socket (unix datagram) for target syslog.", "path"),
)


@dataclass(frozen=True)
class Reply:
    code: str
    status: str
    text: str


def parse_reply(value: Any, expect_class: str) -> Reply:
    text = _str(value).strip()
    match = re.fullmatch(r"([245][0-9][0-9])[ \t]+([245]\.[0-9]{1,3}\.[0-9]{1,3})[ \t]+(.+)", text)
    if match is None:
        raise ValueError(f"expected \"CODE X.Y.Z text\", e.g. \"451 4.7.0 try later\", "
                         f"got {text!r}")
    code, status, message = match.groups()
    if not re.fullmatch(r"[\x20-\x7e\t]+", message):
        # libmilter refuses CR/LF in a reply (the reply then fails at the end of a message)
        # and SMTP reply text is printable US-ASCII (RFC 5321 4.2)
        raise ValueError(f"reply text must be printable ASCII on one line, got {message!r}")
    if code[0] != status[0]:
        raise ValueError(f"reply code {code} and status {status} disagree (a {code[0]}xx reply "
                         f"needs a {code[0]}.x.x status)")
    if code[0] != expect_class:
        raise ValueError(f"this reply must be a {expect_class}xx code, got {code}")
    return Reply(code, status, message)


REPLY_KEYS = {"reject_reply": "5", "spf_reject_reply": "5", "tls_reject_reply": "5",
              "tempfail_reply": "4", "unusable_from_reply": "5"}
TEMPLATE_FIELDS = frozenset({"domain", "failed"})


def _check_template(text: str) -> None:
    """Only plain ``{domain}`` / ``{failed}`` placeholders: a conversion (``{domain!x}``) or a
    format spec (``{domain:d}``, ``{domain:>999999999}``) would raise or allocate without
    bound when the reply is filled in at the end of a message."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"bad template: {exc}") from None
    fields = {name for _, name, _, _ in parsed if name is not None}
    unknown = fields - TEMPLATE_FIELDS
    if unknown:
        raise ValueError(f"unknown placeholder {{{sorted(unknown)[0]}}}; "
                         f"use {{domain}} or {{failed}}")
    for _, name, spec, conversion in parsed:
        if name is not None and (spec or conversion):
            raise ValueError(f"placeholder {{{name}}} takes no conversion or format spec")
    try:
        text.format(domain="example.com", failed="spf=fail")
    except (ValueError, KeyError, IndexError) as exc:
        raise ValueError(f"bad template: {exc}") from None


@dataclass(frozen=True)
class Settings:
    """Typed, frozen settings; build with ``load_settings`` or ``Settings.defaults()``."""

    socket: str
    user: str
    socket_mode: int
    socket_group: str
    workers: int
    authserv_id: str
    remove_subdomain_authserv_ids: bool
    message_deadline: float
    max_header_bytes: int
    max_body_bytes: int
    nameservers: tuple[str, ...]
    dns_timeout: float
    dns_cache_entries: int
    dns_max_ttl: float
    dns_negative_ttl: float
    spf_check_helo: bool
    dkim_max_signatures: int
    dkim_allow_partial_body: bool
    dmarc_enabled: bool
    dmarc_mode: str
    dmarc_public_suffix_list: str
    arc_enabled: bool
    dry_run: bool
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    trusted_arc_sealers: frozenset[str]
    skip_authenticated: bool
    domain_overrides: tuple[tuple[str, str], ...]
    downgrade_reject: bool
    dmarc_reject: str
    history_days: int
    history_ipv4_prefix: int
    history_ipv6_prefix: int
    history_refresh: float
    history_max_entries: int
    reject_on_spf_fail: bool
    tls_required_domains: frozenset[str]
    quarantine_method: str
    quarantine_header: str
    on_internal_error: str
    on_dns_temperror: str
    unusable_from: str
    reject_reply: Reply
    spf_reject_reply: Reply
    tls_reject_reply: Reply
    tempfail_reply: Reply
    unusable_from_reply: Reply
    reports_record: bool
    reports_store: str
    reports_queue_size: int
    reports_keep: float
    reports_org_name: str
    reports_from: str
    reports_contact_info: str
    reports_submit: str
    reports_max_destinations: int
    reports_max_per_destination: int
    reports_suppress: frozenset[str]
    reports_only_aligned_pass_domains: bool
    reports_max_attempts: int
    audit_domains: tuple[str, ...]
    audit_baseline: str
    audit_result_file: str
    audit_domain_timeout: float
    metrics_listen: str
    log_level: str
    log_target: str
    log_facility: str
    log_syslog_socket: str

    def domain_override(self, domain: str) -> str | None:
        """The operator's override for an author domain, if any (exact domain match)."""
        return dict(self.domain_overrides).get(normalise_domain(domain) or domain.lower())

    @classmethod
    def defaults(cls) -> Settings:
        return settings_from_mapping({})


def _field_name(key: Key) -> str:
    prefix = {"dns": "dns_", "spf": "spf_", "dkim": "dkim_", "dmarc": "dmarc_",
              "arc": "arc_", "metrics": "metrics_", "log": "log_",
              "reports": "reports_", "audit": "audit_"}.get(key.section, "")
    if key.section == "dns" and key.name == "nameservers":
        return "nameservers"
    return prefix + key.name


def dotted_name(field_name: str) -> str:
    """A Settings field as the user writes it in the file (``metrics_listen`` →
    ``[metrics] listen``), for messages."""
    for key in KEYS:
        if _field_name(key) == field_name:
            return key.dotted
    return field_name


def settings_from_mapping(data: dict[str, Any], hostname: Callable[[], str] = socket.getfqdn
                          ) -> Settings:
    """Validate a parsed TOML document against KEYS; every error names its key."""
    if not isinstance(data, dict):
        raise ConfigError("the configuration must be a TOML table")
    sections = {k.section for k in KEYS}
    for section, table in data.items():
        if section not in sections:
            hint = _hint(section, sections)
            raise ConfigError(f"unknown section [{section}]{hint}")
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table, got {type(table).__name__}")
        names = {k.name for k in KEYS if k.section == section}
        for name in table:
            if name not in names:
                raise ConfigError(f"unknown key [{section}] {name}{_hint(name, names)}")
    values: dict[str, Any] = {}
    for key in KEYS:
        raw = data.get(key.section, {}).get(key.name, key.default)
        try:
            values[_field_name(key)] = key.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{key.dotted}: {exc}") from None
    for name, expect in REPLY_KEYS.items():
        try:
            values[name] = parse_reply(values[name], expect)
            _check_template(values[name].text)
        except ValueError as exc:
            raise ConfigError(f"[policy] {name}: {exc}") from None
    if not values["authserv_id"]:
        values["authserv_id"] = hostname() or "localhost"
    elif not re.fullmatch(r"[A-Za-z0-9.\-_]+", values["authserv_id"]):
        raise ConfigError("[milter] authserv_id: must be a host name (letters, digits, . - _)")
    return Settings(**values)


def _hint(name: str, options: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(options), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def read_config_file(path: str | Path) -> str:
    """The file's text, or a ConfigError that says what to do: a file only root can read
    cannot be re-read on SIGHUP by the daemon, which runs as ``[milter] user`` by then."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except PermissionError:
        raise ConfigError(
            f"cannot read {path}: permission denied for {_effective_user()}; the "
            "configuration file must be readable by the [milter] user, as which the daemon "
            "re-reads it on reload (e.g. owner root, group that user's group, mode 0640)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None


def _effective_user() -> str:
    import pwd  # POSIX only, like the daemon; the name is for the message alone

    uid = os.geteuid()
    try:
        return f"user {pwd.getpwuid(uid).pw_name!r}"
    except KeyError:
        return f"uid {uid}"


def load_settings(path: str | Path | None) -> Settings:
    """Read a TOML file (or the embedded defaults when ``path`` is None)."""
    if path is None:
        return Settings.defaults()
    return settings_from_toml(read_config_file(path), str(path))


# Postfix's default milter_content_timeout: a longer end-of-message wait makes Postfix give up
# on the milter first (and apply milter_default_action) instead of our own deadline deciding.
POSTFIX_MILTER_CONTENT_TIMEOUT = 300.0


def config_warnings(settings: Settings) -> list[str]:
    """Settings that are valid but probably a mistake; logged at start and printed by
    ``check-config``, never refused (the operator may know better)."""
    warnings: list[str] = []
    authserv_id = settings.authserv_id.strip().rstrip(".")
    if authserv_id.lower() == "localhost" or "." not in authserv_id:
        warnings.append(
            f"[milter] authserv_id is {settings.authserv_id!r}, not a fully-qualified host "
            "name (an empty authserv_id takes this host's name): set it to this MX's name, "
            "e.g. \"mx.example.org\"; downstream filters trust our header by that id, and any "
            "incoming header that claims it is removed")
    if settings.message_deadline >= POSTFIX_MILTER_CONTENT_TIMEOUT:
        warnings.append(
            f"[milter] message_deadline = {settings.message_deadline:g}s is at or above "
            f"Postfix's default milter_content_timeout ({POSTFIX_MILTER_CONTENT_TIMEOUT:g}s): "
            "Postfix would give up on the milter first and apply milter_default_action; keep "
            "it well below (the default is 20s)")
    return warnings


def settings_from_toml(text: str, origin: str = "<config>",
                       hostname: Callable[[], str] = socket.getfqdn) -> Settings:
    """Parse TOML text and validate it; every problem is a ConfigError naming ``origin``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: TOML syntax error: {exc}") from None
    except RecursionError:  # tomllib recurses per nesting level: "a = [[[[...]]]]"
        raise ConfigError(f"{origin}: TOML syntax error: nested too deeply") from None
    return settings_from_mapping(data, hostname)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"  # not "{  }": an empty inline table is written as TOML's own examples do
        return "{ " + ", ".join(f"{_toml_value(k)} = {_toml_value(v)}"
                                for k, v in value.items()) + " }"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_defaults_toml() -> str:
    """The whole default configuration, commented, as ``print-defaults`` shows it."""
    lines = ["# mailsec-milter configuration: every key with its default.",
             "# Durations take a unit (ms, s, m, h); sizes take K, M or G.", ""]
    section = ""
    for key in KEYS:
        if key.section != section:
            if section:
                lines.append("")
            section = key.section
            lines.append(f"[{section}]")
        lines.append(f"# {key.doc} ({key.type_name})")
        lines.append(f"{key.name} = {_toml_value(key.default)}")
    return "\n".join(lines) + "\n"


def render_defaults_markdown() -> str:
    """The table in docs/CONFIGURATION.md; a test keeps the file equal to this output."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key in KEYS:
        lines.append(f"| `{key.dotted}` | {key.type_name} | `{_toml_value(key.default)}` | "
                     f"{key.doc} |")
    return "\n".join(lines) + "\n"
