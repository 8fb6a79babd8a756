"""Every Prometheus metric, declared once, on an injected registry; recorded from results.

Owns: metric names, types, closed label sets (never a domain, address, IP or queue id) and the
mapping from an Analysis + Verdict to observations. docs/METRICS.md is generated from
``describe()`` and a test keeps the two equal.
Must not: decide anything or be read by the checks (they stay pure; the adapter and the
resolver report here).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from . import __version__
from .dns import DnsOutcome
from .engine import Analysis
from .model import AuthResult
from .policy import Action, Reason, Verdict, possible_dry_run_verdicts, possible_verdicts

# Sub-millisecond resolution at the bottom (a cached check takes ~0.1 ms), DNS timeouts at the top.
SECONDS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

METHODS = ("spf", "spf_helo", "dkim", "dmarc", "arc", "tls")
RESULTS = tuple(r.value for r in AuthResult)
POLICIES = ("none", "quarantine", "reject", "absent")
DISPOSITIONS = ("none", "quarantine", "reject", "not_applied")
DKIM_ALGORITHMS = ("rsa-sha256", "ed25519-sha256", "rsa-sha1", "other")
KEY_SIZES = ("256", "512", "768", "1024", "2048", "3072", "4096", "other", "unknown")
TLS_VERSIONS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3", "other", "plaintext")
DNS_TYPES = ("A", "AAAA", "MX", "PTR", "TXT", "CNAME", "other")
DNS_OUTCOMES = tuple(o.value for o in DnsOutcome)
CHECKS = ("spf", "spf_helo", "dkim", "dmarc", "arc", "tls")
REPORT_DROP_REASONS = ("queue_full", "store_down", "store_error", "shutdown")


@dataclass(frozen=True)
class MetricDoc:
    name: str
    kind: str
    labels: tuple[str, ...]
    help: str


def _closed(value: str, allowed: Iterable[str], fallback: str = "other") -> str:
    return value if value in allowed else fallback


class Metrics:
    """The daemon's metrics. Tests pass their own registry; the daemon passes the default one."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "mailsec_messages", "Messages by verdict and the reason that decided it.",
            ["verdict", "reason"], registry=r)
        self.dry_run = Counter(
            "mailsec_dry_run_verdicts", "Dry run: verdicts that would have been applied.",
            ["verdict", "reason"], registry=r)
        self.results = Counter(
            "mailsec_auth_results", "Authentication results per method (one per DKIM signature).",
            ["method", "result"], registry=r)
        self.dmarc_policy = Counter(
            "mailsec_dmarc_policy",
            "DMARC-evaluated messages by the published policy and the applied disposition.",
            ["published", "applied"], registry=r)
        self.dkim_signatures = Counter(
            "mailsec_dkim_signatures", "DKIM signatures by algorithm, key size and result.",
            ["algorithm", "key_bits", "result"], registry=r)
        self.tls = Counter(
            "mailsec_tls_messages", "Messages by the TLS version of the session they came over.",
            ["version"], registry=r)
        self.forged = Counter(
            "mailsec_forged_authres_removed",
            "Incoming Authentication-Results headers removed because they claimed our id.",
            registry=r)
        self.dns_queries = Counter(
            "mailsec_dns_queries", "DNS queries sent, by record type and outcome.",
            ["type", "outcome"], registry=r)
        self.dns_seconds = Histogram(
            "mailsec_dns_query_duration_seconds", "DNS query latency (network queries only).",
            ["type"], buckets=SECONDS_BUCKETS, registry=r)
        self.check_seconds = Histogram(
            "mailsec_check_duration_seconds", "Time spent in each check.",
            ["check"], buckets=SECONDS_BUCKETS, registry=r)
        self.message_seconds = Histogram(
            "mailsec_message_duration_seconds",
            "End-of-message processing time: from the end of DATA to our reply.",
            buckets=SECONDS_BUCKETS, registry=r)
        self.connections_open = Gauge(
            "mailsec_connections_open", "MTA connections open now.", registry=r)
        self.connections = Counter(
            "mailsec_connections", "MTA connections accepted.", registry=r)
        self.check_errors = Counter(
            "mailsec_check_errors", "Checks that crashed (their result became temperror).",
            ["check"], registry=r)
        self.report_records = Counter(
            "mailsec_report_records",
            "Aggregate-report records written to the report store.", registry=r)
        self.report_dropped = Counter(
            "mailsec_report_records_dropped",
            "Aggregate-report records dropped (mail was not affected), by reason.",
            ["reason"], registry=r)
        self.report_queue = Gauge(
            "mailsec_report_queue_depth",
            "Aggregate-report records waiting for the store.", registry=r)
        self.report_write_seconds = Histogram(
            "mailsec_report_store_write_seconds",
            "Time to write one batch of records to the report store.",
            buckets=SECONDS_BUCKETS, registry=r)
        self.build_info = Gauge(
            "mailsec_build_info", "Always 1; the labels say what is running.",
            ["version", "python"], registry=r)
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._initialise_label_sets()

    def _initialise_label_sets(self) -> None:
        """Create every closed label combination at 0, so rates exist before the first event."""
        for action, reason in possible_verdicts():
            self.messages.labels(action.value, reason.value)
        for action, reason in possible_dry_run_verdicts():
            self.dry_run.labels(action.value, reason.value)
        for method in METHODS:
            for result in RESULTS:
                self.results.labels(method, result)
        for published in POLICIES:
            for applied in DISPOSITIONS:
                self.dmarc_policy.labels(published, applied)
        for version in TLS_VERSIONS:
            self.tls.labels(version)
        for rdtype in DNS_TYPES:
            self.dns_seconds.labels(rdtype)
            for outcome in DNS_OUTCOMES:
                self.dns_queries.labels(rdtype, outcome)
        for check in CHECKS:
            self.check_seconds.labels(check)
            self.check_errors.labels(check)
        for drop_reason in REPORT_DROP_REASONS:
            self.report_dropped.labels(drop_reason)

    # --- observations --------------------------------------------------------------------------
    def _child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, remembered: labels() validates and locks on every call
        (a tenth of the per-message metrics cost). The label sets are closed, so this stays
        small."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = metric.labels(*values)
            self._children[key] = child
        return child

    def observe_dns(self, rdtype: str, outcome: DnsOutcome, seconds: float) -> None:
        """The resolver's observer: one call per query that went to the network."""
        kind = _closed(rdtype.upper(), DNS_TYPES)
        self.dns_queries.labels(kind, outcome.value).inc()
        self.dns_seconds.labels(kind).observe(seconds)

    def connection_opened(self) -> None:
        self.connections.inc()
        self.connections_open.inc()

    def connection_closed(self) -> None:
        self.connections_open.dec()

    def observe_message(self, analysis: Analysis, verdict: Verdict, forged_removed: int,
                        seconds: float) -> None:
        self._child(self.messages, verdict.action.value, verdict.reason.value).inc()
        if verdict.dry_run_action is not None:
            self._child(self.dry_run, verdict.dry_run_action.value, verdict.reason.value).inc()
        self._child(self.results, "spf", analysis.spf_mailfrom.result.value).inc()
        if analysis.spf_helo is not None:
            self._child(self.results, "spf_helo", analysis.spf_helo.result.value).inc()
        if not analysis.dkim.signatures:
            self._child(self.results, "dkim", AuthResult.NONE.value).inc()
        for sig in analysis.dkim.signatures:
            self._child(self.results, "dkim", sig.result.value).inc()
            self._child(
                self.dkim_signatures,
                _closed(sig.algorithm, DKIM_ALGORITHMS),
                _closed(str(sig.key_bits), KEY_SIZES) if sig.key_bits else "unknown",
                sig.result.value).inc()
        dmarc = analysis.dmarc
        if dmarc is not None:
            self._child(self.results, "dmarc", dmarc.result.value).inc()
            published = dmarc.policy.value if dmarc.policy is not None else "absent"
            applied = verdict.applied_disposition or "not_applied"
            self._child(self.dmarc_policy, published, _closed(applied, DISPOSITIONS)).inc()
        self._child(self.results, "arc", analysis.arc.result.value).inc()
        self._child(self.results, "tls", analysis.tls.result.value).inc()
        version = analysis.tls.version if analysis.tls.encrypted else "plaintext"
        self._child(self.tls, _closed(version, TLS_VERSIONS)).inc()
        if forged_removed:
            self.forged.inc(forged_removed)
        for check, check_seconds in analysis.check_seconds:
            self._child(self.check_seconds, _closed(check, CHECKS)).observe(check_seconds)
        for error in analysis.errors:
            self._child(self.check_errors, _closed(error.check, CHECKS)).inc()
        self.message_seconds.observe(seconds)

    # the report recorder's observer (reports/recorder.py) -------------------------------------

    def report_records_written(self, count: int, seconds: float) -> None:
        self.report_records.inc(count)
        self.report_write_seconds.observe(seconds)

    def report_records_dropped(self, reason: str, count: int) -> None:
        self._child(self.report_dropped, _closed(reason, REPORT_DROP_REASONS, "store_error")
                    ).inc(count)

    def watch_report_queue(self, depth: Callable[[], int]) -> None:
        """Read the recorder's queue depth at every scrape."""
        self.report_queue.set_function(lambda: float(depth()))


class SupervisorMetrics:
    """The supervisor's own metrics (the workers' are summed beside them on /metrics)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.workers = Gauge(
            "mailsec_workers",
            "Worker processes serving now (0: nothing answers the MTA; see MailsecNoWorker).",
            registry=self.registry)
        self.worker_restarts = Counter(
            "mailsec_worker_restarts", "Workers replaced after they died.",
            registry=self.registry)


# The domain posture gauges (mailsec_milter/posture.py fills them from the daily audit's result
# file at each scrape). The only label is a domain of [audit] domains: bounded by the config.
POSTURE_FAMILIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("mailsec_posture_dmarc_policy",
     "Own domain's effective DMARC policy at the last audit: 0 none, 1 quarantine, 2 reject, "
     "-1 no policy.", ("domain",)),
    ("mailsec_posture_mta_sts_mode",
     "Own domain's MTA-STS mode: 0 none, 1 testing, 2 enforce, -1 no valid policy.",
     ("domain",)),
    ("mailsec_posture_tls_rpt", "1 if the own domain publishes a valid TLS-RPT record.",
     ("domain",)),
    ("mailsec_posture_dane",
     "1 if every MX host of the own domain has DNSSEC-validated TLSA records.", ("domain",)),
    ("mailsec_posture_baseline_met",
     "1 if the own domain meets [audit] baseline (see MailsecOwnDomainBelowBaseline).",
     ("domain",)),
    ("mailsec_posture_audit_ok",
     "1 if the last audit of [audit] domains ran without errors.", ()),
    ("mailsec_posture_last_success_timestamp_seconds",
     "When the last audit without errors finished (see MailsecPostureAuditStale).", ()),
    ("mailsec_posture_domains_configured", "How many domains [audit] domains names.", ()),
)


def describe(metrics: Metrics | None = None) -> list[MetricDoc]:
    """Every metric family /metrics serves (the workers' and the supervisor's) with its type,
    labels and help, for docs/METRICS.md."""
    metrics = metrics or Metrics()
    supervisor = SupervisorMetrics()
    docs: list[MetricDoc] = []
    for collector in (metrics.messages, metrics.dry_run, metrics.results, metrics.dmarc_policy,
                      metrics.dkim_signatures, metrics.tls, metrics.forged, metrics.dns_queries,
                      metrics.dns_seconds, metrics.check_seconds, metrics.message_seconds,
                      metrics.connections_open, metrics.connections, metrics.check_errors,
                      metrics.report_records, metrics.report_dropped, metrics.report_queue,
                      metrics.report_write_seconds,
                      metrics.build_info, supervisor.workers, supervisor.worker_restarts):
        for family in collector.describe():
            kind = family.type
            name = family.name + ("_total" if kind == "counter" else "")
            labels = tuple(getattr(collector, "_labelnames", ()))
            docs.append(MetricDoc(name, kind, labels, family.documentation))
    # The report sender's counters (a separate process; the supervisor reads its status file)
    from .reports.status import Status, metric_families
    for family in metric_families(Status(skipped={"example": 0})):
        labels = tuple(sorted({k for sample in family.samples for k in sample.labels}))
        name = family.name + ("_total" if family.type == "counter" else "")
        docs.append(MetricDoc(name, family.type, labels, family.documentation))
    docs += [MetricDoc(name, "gauge", labels, help_text)
             for name, help_text, labels in POSTURE_FAMILIES]
    return docs


# Every label's values, in the order the docs list them (the closed sets above), with a note.
LABEL_VALUES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("verdict", tuple(a.value for a in Action), ""),
    ("reason", tuple(r.value for r in Reason),
     "of `mailsec_messages_total` and `mailsec_dry_run_verdicts_total`: what decided the "
     "verdict (docs/POLICY.md)"),
    ("method", METHODS, ""),
    ("result", RESULTS, ""),
    ("published", POLICIES, "absent: no DMARC policy found"),
    ("applied", DISPOSITIONS, "not_applied: no DMARC disposition (pass, none, temperror)"),
    ("algorithm", DKIM_ALGORITHMS, ""),
    ("key_bits", KEY_SIZES, ""),
    ("version", TLS_VERSIONS, "of `mailsec_tls_messages_total`"),
    ("type", DNS_TYPES, "DNS record type"),
    ("outcome", DNS_OUTCOMES, "DNS"),
    ("check", CHECKS, ""),
    ("reason", REPORT_DROP_REASONS, "of `mailsec_report_records_dropped_total`"),
)


def render_markdown() -> str:
    """The generated part of docs/METRICS.md: metrics, label values, (verdict, reason) pairs."""
    lines = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for doc in describe():
        labels = ", ".join(f"`{label}`" for label in doc.labels) or "—"
        lines.append(f"| `{doc.name}` | {doc.kind} | {labels} | {doc.help} |")
    lines += ["", "Label values:", "", "| label | values | note |", "|---|---|---|"]
    for label, values, note in LABEL_VALUES:
        lines.append(f"| `{label}` | {', '.join(values)} | {note} |")
    lines += ["", "The (`verdict`, `reason`) pairs that exist; every other pair cannot happen and "
              "is not exported (`accept` under a refusing reason is dry run):", "",
              "| `reason` | `verdict` in `mailsec_messages_total` "
              "| `verdict` in `mailsec_dry_run_verdicts_total` |", "|---|---|---|"]
    pairs = possible_verdicts()
    dry = possible_dry_run_verdicts()
    for reason in Reason:
        verdicts = ", ".join(a.value for a, r in pairs if r is reason)
        would = ", ".join(a.value for a, r in dry if r is reason) or "—"
        lines.append(f"| {reason.value} | {verdicts} | {would} |")
    return "\n".join(lines) + "\n"


# The value of a sample of one family: (sample name, sorted labels).
SampleKey = tuple[str, tuple[tuple[str, str], ...]]
MONOTONIC = ("counter", "histogram")


def _families(text: str) -> dict[str, tuple[str, str, dict[SampleKey, float]]]:
    """A worker's exposition text as {family: (type, help, {sample: value})}."""
    parsed: dict[str, tuple[str, str, dict[SampleKey, float]]] = {}
    for family in text_string_to_metric_families(text):
        samples: dict[SampleKey, float] = {}
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        parsed[family.name] = (family.type, family.documentation, samples)
    return parsed


class WorkerTotals:
    """The supervisor's sum of its workers' metrics, monotonic across worker deaths.

    Each worker pushes its whole exposition (status pipe, about once a second, and a final one
    when it ends cleanly); the supervisor keeps the last one per worker. A worker that ends —
    cleanly, killed or crashed — has its last counters and histograms folded into retained
    totals, so the sum never loses them; its gauges (connections open) are gone with it. A
    worker that is slow or stopped counts with the last numbers it pushed. As a last guard, a
    counter is never served lower than it was served before (float sums of histogram ``_sum``
    can differ in the last bit when the order of addition changes).
    """

    def __init__(self) -> None:
        self.kinds: dict[str, tuple[str, str]] = {}  # family -> (type, help), first-seen order
        self.retained: dict[str, dict[SampleKey, float]] = {}
        self.served: dict[tuple[str, SampleKey], float] = {}

    def _learn(self, name: str, kind: str, doc: str) -> dict[SampleKey, float]:
        self.kinds.setdefault(name, (kind, doc))
        return self.retained.setdefault(name, {})

    def retire(self, text: str) -> None:
        """Fold an ended worker's last numbers into the totals."""
        for name, (kind, doc, samples) in _families(text).items():
            kept = self._learn(name, kind, doc)
            for key, value in samples.items():
                if kind in MONOTONIC:
                    kept[key] = kept.get(key, 0.0) + value
                elif name == "mailsec_build_info":
                    kept[key] = max(kept.get(key, 0.0), value)
                else:
                    kept.setdefault(key, 0.0)  # the series stays, at 0 when no worker runs

    def render(self, live: Iterable[str]) -> str:
        """Retained totals plus the last numbers of every live worker, as exposition text."""
        values = {name: dict(samples) for name, samples in self.retained.items()}
        for text in live:
            for name, (kind, doc, samples) in _families(text).items():
                self._learn(name, kind, doc)
                bucket = values.setdefault(name, {})
                for key, value in samples.items():
                    if name == "mailsec_build_info":
                        bucket[key] = max(bucket.get(key, 0.0), value)
                    else:
                        bucket[key] = bucket.get(key, 0.0) + value
        lines: list[str] = []
        for name, (kind, doc) in self.kinds.items():
            shown = f"{name}_total" if kind == "counter" else name
            lines.append(f"# HELP {shown} {doc}")
            lines.append(f"# TYPE {shown} {kind}")
            for key, value in values.get(name, {}).items():
                if kind in MONOTONIC:
                    value = max(value, self.served.get((name, key), 0.0))
                    self.served[(name, key)] = value
                sample_name, labels = key
                rendered = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
                lines.append(f"{sample_name}{{{rendered}}} {value!r}" if rendered
                             else f"{sample_name} {value!r}")
        return "\n".join(lines) + ("\n" if lines else "")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
