"""Domain posture audit (``mailsec-milter audit``): where a domain stands on the DMARC ladder,
SPF, MTA-STS, TLS-RPT, DNSSEC and DANE, each finding with its fix.

Owns: calling checkdmarc's checks per domain against the configured nameservers, turning their
results into findings and a baseline verdict, the per-domain time bound, and the result file the
daemon's /metrics reads (mailsec_milter/posture.py).
Must not: be imported by the daemon, the workers or the milter adapter (checkdmarc is heavy, keeps
module-global caches and makes HTTPS and SMTP connections); only the ``audit`` command imports it.

checkdmarc's DNS queries go to ``[dns] nameservers`` (we pass ``nameservers=`` as well as
``resolver=``: its DNSSEC and TLSA checks ignore ``resolver=``). Its HTTPS fetch of the MTA-STS
policy and its STARTTLS probes resolve ``mta-sts.<domain>`` and the MX hosts through the system
resolver (requests and smtplib use getaddrinfo).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.nameserver
import dns.resolver
from checkdmarc.dmarc import (  # type: ignore[import-untyped]
    UnverifiedDMARCURIDestination,
    check_dmarc,
    verify_dmarc_report_destination,
)
from checkdmarc.dnssec import check_dnssec  # type: ignore[import-untyped]
from checkdmarc.mta_sts import check_mta_sts, mx_in_mta_sts_patterns  # type: ignore[import-untyped]
from checkdmarc.smtp import check_mx  # type: ignore[import-untyped]
from checkdmarc.smtp_tls_reporting import (  # type: ignore[import-untyped]
    check_smtp_tls_reporting,
)
from checkdmarc.spf import check_spf  # type: ignore[import-untyped]
from checkdmarc.utils import get_base_domain  # type: ignore[import-untyped]

from .addresses import normalise_domain
from .dns import parse_nameserver
from .posture import default_result_path as default_result_path  # --write-metrics' default

LADDER = ("none", "quarantine", "reject")
SPF_LOOKUP_LIMIT = 10  # RFC 7208 §4.6.4
SPF_VOID_LIMIT = 2
REMOVED_DMARC_TAGS = {"pct": "pct (sampling)", "rf": "rf (failure report format)",
                      "ri": "ri (report interval)"}  # RFC 7489 tags RFC 9989 removed
RESULT_FORMAT = 1
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9-]{0,61}[a-z0-9])?\.)+"
                     r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_NXDOMAIN = "The domain does not exist."
_TIMEOUT_WORDS = ("timed out", "timeout", "lifetime", "no nameservers", "servfail",
                  "did not answer", "no answer")


@dataclass(frozen=True)
class Finding:
    """One thing wrong (or worth knowing) about a domain, and what to do about it."""

    area: str  # dmarc / spf / mx / mta_sts / tls_rpt / dnssec / dane / starttls
    severity: str  # "error" (DNS or input), "fail" (below a requirement), "warn", "info"
    text: str
    fix: str = ""


@dataclass
class DomainAudit:
    """Everything the audit found about one domain (the JSON output, per domain)."""

    domain: str
    dmarc: dict[str, Any] = field(default_factory=dict)
    spf: dict[str, Any] = field(default_factory=dict)
    mx: dict[str, Any] = field(default_factory=dict)
    mta_sts: dict[str, Any] = field(default_factory=dict)
    tls_rpt: dict[str, Any] = field(default_factory=dict)
    dnssec: bool | None = None
    dane: bool | None = None
    meets_baseline: bool = False
    findings: list[Finding] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "domain": self.domain, "meets_baseline": self.meets_baseline,
            "dmarc": self.dmarc, "spf": self.spf, "mx": self.mx, "mta_sts": self.mta_sts,
            "tls_rpt": self.tls_rpt, "dnssec": self.dnssec, "dane": self.dane,
            "findings": [vars(f) for f in self.findings], "errors": self.errors,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class AuditOptions:
    nameservers: tuple[str, ...] = ()  # "IP[:PORT]"; () = the system resolver
    dns_timeout: float = 2.0
    domain_timeout: float = 30.0
    baseline: str = "reject"
    check_mx_tls: bool = False


def ladder_rank(policy: str | None) -> int:
    """0 none, 1 quarantine, 2 reject; -1 for no policy at all."""
    return LADDER.index(policy) if policy in LADDER else -1


def check_domain_name(text: str) -> str:
    """The A-label form of ``text``, or ValueError saying why it is not a domain name."""
    name = normalise_domain(text.strip().rstrip("."))
    if name is None or not _DOMAIN.match(name):
        raise ValueError(f"{text!r} is not a domain name")
    if "." not in name:
        raise ValueError(f"{text!r} is not a domain name (no dot: a top-level label alone)")
    return name


class _Checks:
    """The seam around checkdmarc: every call passes our nameservers both ways (its DNSSEC and
    TLSA lookups ignore ``resolver=`` and would ask the system resolver otherwise)."""

    def __init__(self, options: AuditOptions) -> None:
        self.options = options
        self.nameservers: list[Any] | None = None
        self.resolver: dns.resolver.Resolver | None = None
        if options.nameservers:
            self.nameservers = [dns.nameserver.Do53Nameserver(host, port)
                                for host, port in map(parse_nameserver, options.nameservers)]
            self.resolver = dns.resolver.Resolver(configure=False)
            self.resolver.nameservers = self.nameservers
            self.resolver.timeout = min(1.0, options.dns_timeout)
            self.resolver.lifetime = options.dns_timeout

    def kwargs(self) -> dict[str, Any]:
        return {"nameservers": self.nameservers, "resolver": self.resolver,
                "timeout": self.options.dns_timeout}


def _is_dns_failure(message: str) -> bool:
    lowered = message.lower()
    return any(word in lowered for word in _TIMEOUT_WORDS)


def audit_domain(domain: str, options: AuditOptions) -> DomainAudit:
    """Run checkdmarc's checks on one (already validated) domain and derive the findings.

    Its per-record functions, not ``check_domains``: that one also queries SOA, NS and BIMI
    (more DNS, and an HTTPS fetch of the BIMI image), silently drops names without a dot, and
    returns a dict for one domain but a list for several."""
    started = time.monotonic()
    result = DomainAudit(domain)
    checks = _Checks(options)
    kw = checks.kwargs()
    dmarc = check_dmarc(domain, **kw)
    # checkdmarc reports NXDOMAIN only as this text (an error result, not an exception)
    if dmarc.get("error") == _NXDOMAIN:
        result.errors.append(f"{domain} does not exist (NXDOMAIN)")
        result.seconds = time.monotonic() - started
        return result
    _dmarc_findings(result, dmarc, checks)
    if result.errors:  # DNS failing: the other checks would only repeat it
        result.seconds = time.monotonic() - started
        return result
    _spf_findings(result, check_spf(domain, **kw))
    mta_sts = check_mta_sts(domain, **kw)
    mx = check_mx(domain, check_mx_tls=options.check_mx_tls, **kw)
    _mx_findings(result, mx, options.check_mx_tls)
    _mta_sts_findings(result, mta_sts, mx)
    _tls_rpt_findings(result, check_smtp_tls_reporting(domain, **kw))
    result.dnssec = bool(check_dnssec(domain, nameservers=checks.nameservers,
                                      timeout=options.dns_timeout))
    if not result.dnssec:
        result.findings.append(Finding(
            "dnssec", "info", f"{domain} is not DNSSEC-signed (or its signatures do not verify)",
            "sign the zone and publish its DS at the parent; DANE needs it"))
    result.meets_baseline = (not result.errors
                             and ladder_rank(result.dmarc.get("effective_policy"))
                             >= ladder_rank(options.baseline))
    result.seconds = time.monotonic() - started
    return result


def _dmarc_findings(result: DomainAudit, dmarc: dict[str, Any], checks: _Checks) -> None:
    domain = result.domain
    tags: dict[str, Any] = {k: v.get("value") for k, v in (dmarc.get("tags") or {}).items()}
    explicit = {k for k, v in (dmarc.get("tags") or {}).items() if v.get("explicit")}
    location = dmarc.get("location")
    policy = tags.get("p")
    # a record found at the organisational domain governs us through sp=, not p=
    effective = policy if location in (None, domain) else tags.get("sp", policy)
    testing = tags.get("t") == "y"
    if testing and ladder_rank(effective) > 0:
        effective = LADDER[ladder_rank(effective) - 1]  # RFC 9989 §4.7: t=y steps one down
    result.dmarc = {
        "record": dmarc.get("record"), "record_domain": location, "valid": dmarc.get("valid"),
        "policy": policy, "sp": tags.get("sp"), "np": tags.get("np"), "t": tags.get("t"),
        "psd": tags.get("psd"), "effective_policy": effective if dmarc.get("valid") else None,
        "rua": [u.get("address") or u.get("uri") for u in tags.get("rua") or []
                if isinstance(u, dict)],
        # checkdmarc drops removed tags from "tags" (only a warning text says so): read the record
        "removed_tags": sorted(t for t in REMOVED_DMARC_TAGS if t in _record_tags(dmarc)),
        "error": dmarc.get("error"), "warnings": dmarc.get("warnings", []),
    }
    if not dmarc.get("valid"):
        error = str(dmarc.get("error") or "no DMARC record")
        if _is_dns_failure(error):
            result.errors.append(f"DMARC lookup failed: {error}")
            return
        result.findings.append(Finding(
            "dmarc", "fail", f"no usable DMARC record: {error}",
            f'publish _dmarc.{domain} TXT "v=DMARC1; p=none; rua=mailto:dmarc@{domain}", read '
            "the reports, then move up the ladder"))
        return
    if location != domain:
        result.findings.append(Finding(
            "dmarc", "info", f"DMARC record found at {location}, not at _dmarc.{domain}",
            "its sp= (and np=) apply to this domain"))
    if effective == "none":
        result.findings.append(Finding(
            "dmarc", "fail", "DMARC policy p=none: spoofed mail is delivered like yours",
            "publish p=quarantine after the aggregate reports show every legitimate source "
            "passing DMARC (SPF or DKIM aligned), then p=reject"))
    elif effective == "quarantine":
        result.findings.append(Finding(
            "dmarc", "warn", "DMARC policy quarantine: one step below reject (the BOD 18-01 "
            "baseline)", "publish p=reject once the reports show no legitimate mail failing"))
    if testing:
        result.findings.append(Finding(
            "dmarc", "warn", "t=y (testing): receivers apply one step less than p=",
            "remove t=y once the reports look clean"))
    for name, sub in (("sp", tags.get("sp")), ("np", tags.get("np"))):
        if name in explicit and ladder_rank(sub) < ladder_rank(policy):
            result.findings.append(Finding(
                "dmarc", "warn", f"{name}={sub} is weaker than p={policy} for "
                + ("subdomains" if name == "sp" else "non-existent subdomains"),
                f"raise {name}= to {policy} or drop it (it defaults to p=)"))
    if "psd" in explicit:
        result.findings.append(Finding(
            "dmarc", "info", f"psd={tags.get('psd')}: the record declares itself "
            + ("a public suffix domain" if tags.get("psd") == "y" else "about PSD status"),
            "only registries publish psd=y"))
    for tag in result.dmarc["removed_tags"]:
        result.findings.append(Finding(
            "dmarc", "warn", f"{REMOVED_DMARC_TAGS[tag]} was removed from DMARC (RFC 9989)",
            f"drop {tag}= from the record; receivers ignore it"))
    rua = result.dmarc["rua"]
    if not rua:
        result.findings.append(Finding(
            "dmarc", "warn", "no rua=: you receive no aggregate reports",
            f"add rua=mailto:dmarc-reports@{domain} to see who sends as your domain"))
    _rua_authorisation(result, rua, checks)


def _record_tags(dmarc: dict[str, Any]) -> set[str]:
    record = str(dmarc.get("record") or "")
    return {part.partition("=")[0].strip().lower() for part in record.split(";") if "=" in part}


def _rua_authorisation(result: DomainAudit, rua: Sequence[str], checks: _Checks) -> None:
    """External report destinations must publish <domain>._report._dmarc.<destination>."""
    unauthorised = []
    own_base = get_base_domain(result.domain)
    for address in rua:
        destination = str(address).rpartition("@")[2].lower()
        if not destination or get_base_domain(destination) == own_base:
            continue
        try:
            verify_dmarc_report_destination(result.domain, destination, **checks.kwargs())
        except UnverifiedDMARCURIDestination:
            unauthorised.append(destination)
    result.dmarc["rua_unauthorised"] = unauthorised
    for destination in unauthorised:
        result.findings.append(Finding(
            "dmarc", "fail", f"rua destination {destination} has not authorised reports "
            f"about {result.domain}: receivers send it nothing",
            f'ask {destination} to publish {result.domain}._report._dmarc.{destination} TXT '
            '"v=DMARC1" (or point rua= at an address you control)'))


def _spf_findings(result: DomainAudit, spf: dict[str, Any]) -> None:
    parsed = spf.get("parsed") or {}
    error = spf.get("error")
    lookups = spf.get("dns_lookups")
    # checkdmarc gives dns_lookups None when the limit is exceeded; the count is only in the
    # error text ("requires 11/10 maximum DNS lookups"): read it from there
    if lookups is None and error and "lookups" in str(error).lower():
        found = re.search(r"\((\d+)/", str(error)) or re.search(r"(\d+)", str(error))
        lookups = int(found.group(1)) if found else None
    result.spf = {"record": spf.get("record"), "valid": bool(spf.get("valid")),
                  "dns_lookups": lookups, "void_dns_lookups": spf.get("void_dns_lookups"),
                  "all": parsed.get("all"), "error": error}
    if error and _is_dns_failure(str(error)):
        result.errors.append(f"SPF lookup failed: {error}")
        return
    if not spf.get("valid"):
        over = "lookups" in str(error or "").lower()
        result.findings.append(Finding(
            "spf", "fail", f"SPF record not valid: {error}",
            "flatten include:s you do not need (each include, a, mx, ptr, exists and redirect "
            f"costs one of {SPF_LOOKUP_LIMIT} DNS lookups)" if over
            else f'publish {result.domain} TXT "v=spf1 mx -all" (listing your senders)'))
        return
    if parsed.get("all") == "pass":
        result.findings.append(Finding(
            "spf", "fail", "SPF ends in +all: every host on the Internet may send as you",
            "end the record with -all (or ~all while you check the reports)"))
    if isinstance(lookups, int) and lookups >= SPF_LOOKUP_LIMIT - 1:
        result.findings.append(Finding(
            "spf", "warn", f"SPF uses {lookups} of {SPF_LOOKUP_LIMIT} DNS lookups",
            "one more include: makes it a permerror; flatten includes"))
    voids = spf.get("void_dns_lookups")
    if isinstance(voids, int) and voids > 0:
        result.findings.append(Finding(
            "spf", "warn", f"SPF has {voids} void lookup(s) (limit {SPF_VOID_LIMIT})",
            "remove mechanisms naming domains that do not exist"))


def _mx_findings(result: DomainAudit, mx: dict[str, Any], probed: bool) -> None:
    hosts = mx.get("hosts") or []
    names = [str(h.get("hostname", "")) for h in hosts]
    dane = [n for n, h in zip(names, hosts, strict=True) if h.get("tlsa")]
    result.mx = {"hosts": names, "error": mx.get("error"), "warnings": mx.get("warnings", []),
                 "dane_hosts": dane}
    result.dane = bool(hosts) and len(dane) == len(hosts)
    if mx.get("error") and _is_dns_failure(str(mx["error"])):
        result.errors.append(f"MX lookup failed: {mx['error']}")
        return
    if not hosts:
        result.findings.append(Finding("mx", "info", "no MX records: the domain receives no mail",
                                       "publish a null MX (MX 0 .) if it never should"))
        return
    if not result.dane:
        missing = [n for n in names if n not in dane]
        result.findings.append(Finding(
            "dane", "info", f"no DNSSEC-validated TLSA records on {', '.join(missing)}",
            "publish _25._tcp.<mx> TLSA 3 1 1 <key hash> in a signed zone (RFC 7672)"))
    if probed:
        bad = [str(h.get("hostname")) for h in hosts if not h.get("starttls")]
        result.mx["starttls_failed"] = bad
        warnings = [str(w) for w in mx.get("warnings") or []]
        for host in bad:
            why = [w.partition(": ")[2] for w in warnings if w.startswith(f"{host}: ")]
            result.findings.append(Finding(
                "starttls", "fail", f"{host} does not offer working STARTTLS on port 25"
                + (f" ({_short('; '.join(why))})" if why else ""),
                "enable STARTTLS with a certificate for the MX name"))


def _mta_sts_findings(result: DomainAudit, sts: dict[str, Any], mx: dict[str, Any]) -> None:
    policy = sts.get("policy") or {}
    patterns = [str(p) for p in policy.get("mx") or []]
    hosts = [str(h.get("hostname", "")) for h in mx.get("hosts") or []]
    unmatched = [h for h in hosts if patterns and not mx_in_mta_sts_patterns(h, patterns)]
    result.mta_sts = {"valid": bool(sts.get("valid")), "id": sts.get("id"),
                      "mode": policy.get("mode"), "max_age": policy.get("max_age"),
                      "mx": patterns, "mx_not_in_policy": unmatched, "error": sts.get("error")}
    if not sts.get("valid"):
        error = str(sts.get("error") or "")
        if "does not exist" in error or "not found" in error.lower():
            result.findings.append(Finding(
                "mta_sts", "warn", "no MTA-STS: senders cannot refuse a TLS downgrade",
                f'publish _mta-sts.{result.domain} TXT "v=STSv1; id=<date>" and '
                f"https://mta-sts.{result.domain}/.well-known/mta-sts.txt (mode: testing, then "
                "enforce)"))
        else:
            result.findings.append(Finding(
                "mta_sts", "fail", f"MTA-STS is broken: {_short(error)}",
                f"serve https://mta-sts.{result.domain}/.well-known/mta-sts.txt (HTTP 200, "
                "text/plain, a valid certificate) matching the _mta-sts TXT record"))
        return
    for host in unmatched:
        result.findings.append(Finding(
            "mta_sts", "fail", f"MX {host} is not in the MTA-STS policy (mx: "
            f"{', '.join(patterns)}): senders enforcing it refuse to deliver there",
            f"add 'mx: {host}' to the policy and change the id= in the _mta-sts TXT record"))
    if policy.get("mode") == "testing":
        result.findings.append(Finding(
            "mta_sts", "warn", "MTA-STS mode testing: nothing is enforced",
            "switch to mode: enforce once the TLS-RPT reports show no failures"))
    elif policy.get("mode") == "none":
        result.findings.append(Finding("mta_sts", "warn", "MTA-STS mode none (policy withdrawn)",
                                       "publish mode: enforce"))
    max_age = policy.get("max_age")
    if isinstance(max_age, int) and max_age < 86400:
        result.findings.append(Finding(
            "mta_sts", "warn", f"MTA-STS max_age {max_age}s is short",
            "use max_age of at least 604800 (a week; RFC 8461 suggests weeks)"))


def _tls_rpt_findings(result: DomainAudit, rpt: dict[str, Any]) -> None:
    present = bool(rpt.get("valid"))
    result.tls_rpt = {"present": present, "error": rpt.get("error")}
    if not present:
        result.findings.append(Finding(
            "tls_rpt", "warn", f"no valid TLS-RPT record: {_short(str(rpt.get('error')))}",
            f'publish _smtp._tls.{result.domain} TXT "v=TLSRPTv1; '
            f'rua=mailto:tls-reports@{result.domain}"'))


def _short(text: str, limit: int = 160) -> str:
    text = " ".join("".join(c if c.isprintable() else "?" for c in text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- many domains, each bounded in time ------------------------------------------------------

@dataclass
class AuditRun:
    results: list[DomainAudit]
    baseline: str

    @property
    def exit_status(self) -> int:
        """0 every domain meets the baseline, 1 one falls short, 2 an error."""
        if any(r.errors for r in self.results):
            return 2
        return 0 if all(r.meets_baseline for r in self.results) else 1


def run_audit(domains: Iterable[str], options: AuditOptions, workers: int = 8,
              progress: Callable[[int, int], None] | None = None,
              check: Callable[[str, AuditOptions], DomainAudit] = audit_domain) -> AuditRun:
    """Audit every domain, ``workers`` at a time, each within ``options.domain_timeout``; a
    domain that is not a name, fails, or runs over becomes an error line, never an exception.

    A domain over its time is abandoned, not stopped (Python cannot stop a thread): its thread
    is a daemon and the process is short-lived."""
    names = list(dict.fromkeys(domains))
    slots: list[DomainAudit | None] = [None] * len(names)
    pending: dict[int, tuple[str, concurrent.futures.Future[DomainAudit], float]] = {}
    todo = list(enumerate(names))
    done = 0
    lock = threading.Lock()

    def start(index: int, text: str) -> None:
        try:
            name = check_domain_name(text)
        except ValueError as exc:
            slots[index] = DomainAudit(text, errors=[str(exc)])
            return
        future: concurrent.futures.Future[DomainAudit] = concurrent.futures.Future()

        def work() -> None:
            try:
                future.set_result(check(name, options))
            except Exception as exc:  # a checkdmarc bug must not end the whole run
                future.set_exception(exc)

        threading.Thread(target=work, name=f"audit-{name}", daemon=True).start()
        pending[index] = (name, future, time.monotonic() + options.domain_timeout)

    while todo or pending:
        while todo and len(pending) < workers:
            index, text = todo.pop(0)
            start(index, text)
            if slots[index] is not None:
                done += 1
        now = time.monotonic()
        for index, (name, future, deadline) in list(pending.items()):
            if future.done():
                exc = future.exception()
                slots[index] = (future.result() if exc is None else DomainAudit(
                    name, errors=[f"audit failed: {type(exc).__name__}: {_short(str(exc))}"]))
            elif now >= deadline:
                slots[index] = DomainAudit(name, errors=[
                    f"audit did not finish within {options.domain_timeout:g}s "
                    "([audit] domain_timeout): DNS or HTTPS hanging"])
            else:
                continue
            del pending[index]
            done += 1
        if progress is not None:
            with lock:
                progress(done, len(names))
        if pending:
            concurrent.futures.wait([f for _, f, _ in pending.values()], timeout=0.05,
                                    return_when=concurrent.futures.FIRST_COMPLETED)
    return AuditRun([s for s in slots if s is not None], options.baseline)


# --- the result file the daemon's /metrics reads ---------------------------------------------

def write_result_file(path: str, run: AuditRun, now: float | None = None) -> None:
    """Atomically replace ``path`` with the posture summary posture.py turns into gauges. A run
    with errors keeps the previous file's ``last_success`` (the staleness alert reads it)."""
    finished = time.time() if now is None else now
    ok = not any(r.errors for r in run.results)
    last_success: float | None = finished if ok else None
    if not ok:
        try:
            previous = json.loads(Path(path).read_text())
            last_success = previous.get("last_success")
        except (OSError, ValueError, AttributeError):
            last_success = None
    document = {
        "format": RESULT_FORMAT,
        "finished": finished,
        "last_success": last_success,
        "baseline": run.baseline,
        "ok": ok,
        "domains": {r.domain: {
            "dmarc_policy": ladder_rank(r.dmarc.get("effective_policy")),
            "mta_sts_mode": r.mta_sts.get("mode") if r.mta_sts.get("valid") else None,
            "tls_rpt": bool(r.tls_rpt.get("present")),
            "dane": bool(r.dane),
            "meets_baseline": r.meets_baseline,
            "errors": len(r.errors),
        } for r in run.results},
    }
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    os.replace(temporary, target)


def stderr_progress(every: int = 25) -> Callable[[int, int], None]:
    """Progress on stderr for more than one domain: each time the count passes a multiple of
    ``every`` (several domains may finish between two calls), and at the end."""
    last = [0]

    def show(done: int, total: int) -> None:
        if total < 2 or done == last[0] or (done // every == last[0] // every
                                            and done != total):
            return
        last[0] = done
        print(f"mailsec-milter audit: {done}/{total} domains", file=sys.stderr, flush=True)

    return show
