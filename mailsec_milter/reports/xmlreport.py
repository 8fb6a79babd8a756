"""One RFC 9990 aggregate report as XML, validated against the RFC's own schema.

Owns: turning the stored rows of one policy domain and one period into the ``feedback``
document (namespace ``urn:ietf:params:xml:ns:dmarc-2.0``, §3.1.1), the report id and the
attachment file name (§3.5.1, §3.5.2), gzip, and validation against the XSD of Appendix A
(shipped as package data, ``rfc9990.xsd``).
Must not: read the store, resolve names, or send anything (sending.py decides where a report
goes); a report that does not validate never leaves this module as "ready".

Policy changes during the period (§3.3): a report carries one ``policy_published``; we use the
policy seen LAST in the period (the rows of the latest day, the published policy of most
messages among them). Rows under an older policy keep their own evaluated results, so the
report is the "mix of the two policies" §3.3 allows; docs/REPORTS.md says so.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from importlib import resources
from typing import Any

from lxml import etree

from .. import __version__
from .record import PublishedPolicy
from .store import StoredRow

NAMESPACE = "urn:ietf:params:xml:ns:dmarc-2.0"
_Q = "{" + NAMESPACE + "}"
XSD_NAME = "rfc9990.xsd"
GENERATOR = f"mailsec-milter {__version__}"
MAX_DKIM_PER_ROW = 100  # §3.1.3


class InvalidReportError(Exception):
    """A generated report does not validate against the RFC 9990 schema (a bug: never sent)."""


@dataclass(frozen=True)
class Reporter:
    """Who we are in the report: §3.1.1.3 metadata and the §3.5.2 receiver domain."""

    org_name: str
    email: str
    receiver: str  # the Submitter / file name "receiver" domain
    extra_contact_info: str = ""


@dataclass(frozen=True)
class Period:
    """A reporting period of whole UTC days, first..last inclusive."""

    first: date
    last: date

    @classmethod
    def day(cls, day: date) -> Period:
        return cls(day, day)

    @property
    def begin(self) -> int:
        """Seconds since the epoch of the period's first second (00:00:00 UTC)."""
        return int(datetime.combine(self.first, time(), UTC).timestamp())

    @property
    def end(self) -> int:
        """Seconds since the epoch of the period's last second (23:59:59 UTC of the last day)."""
        return int(datetime.combine(self.last + timedelta(days=1), time(), UTC).timestamp()) - 1


@dataclass(frozen=True)
class Report:
    """A built, validated report of one policy domain."""

    policy_domain: str
    period: Period
    report_id: str
    xml: bytes
    records: int
    messages: int
    published: PublishedPolicy
    filename: str  # §3.5.2: receiver!policy-domain!begin!end!unique-id.xml.gz

    def gzipped(self) -> bytes:
        """The attachment: gzip with a fixed mtime, so a re-sent report is the same bytes."""
        return gzip.compress(self.xml, compresslevel=6, mtime=0)


def report_id(receiver: str, policy_domain: str, period: Period) -> str:
    """§3.5.1/§3.5.2: alphanumeric (so it is both a valid ``unique-id`` and a ``ridtxt``),
    unique per policy domain and period, and the same on every re-send and on every host of a
    fleet (derived, not random): the period's first day and a hash of who and what."""
    digest = hashlib.sha256(f"{receiver}\0{policy_domain}\0{period.first}\0{period.last}"
                            .encode()).hexdigest()[:20]
    return f"{period.first:%Y%m%d}{digest}"


def attachment_filename(receiver: str, policy_domain: str, period: Period, rid: str) -> str:
    return f"{receiver}!{policy_domain}!{period.begin}!{period.end}!{rid}.xml.gz"


def subject(policy_domain: str, receiver: str, rid: str) -> str:
    """§3.5.2 dmarc-subject; the Report-ID is the same text as the file name's unique-id."""
    return f"Report Domain: {policy_domain} Submitter: {receiver} Report-ID: {rid}"


def latest_policy(rows: Sequence[StoredRow]) -> PublishedPolicy:
    """§3.3: the policy published last in the period (the one of most messages on the last
    day: within a day the store cannot say which came later)."""
    last_day = max(r.day for r in rows)
    seen: Counter[PublishedPolicy] = Counter()
    for row in rows:
        if row.day == last_day:
            seen[row.published] += row.messages
    return seen.most_common(1)[0][0]


def _merged(rows: Sequence[StoredRow]) -> list[tuple[StoredRow, int]]:
    """Rows of several days with equal tuples are one record with the summed count."""
    merged: dict[tuple[Any, ...], tuple[StoredRow, int]] = {}
    for row in rows:
        key = (row.source_ip, row.header_from, row.envelope_from, row.disposition,
               row.dmarc_dkim, row.dmarc_spf, row.reasons, row.dkim, row.spf)
        known = merged.get(key)
        merged[key] = (row, (known[1] if known else 0) + row.messages)
    return list(merged.values())


_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _sub(parent: Any, tag: str, text: str | None = None) -> Any:
    element = etree.SubElement(parent, _Q + tag)
    if text is not None:  # a comment copied from a header may hold what XML 1.0 cannot
        element.text = _NOT_XML.sub("\ufffd", text)
    return element


def build_xml(reporter: Reporter, policy_domain: str, period: Period, rid: str,
              rows: Sequence[StoredRow], error: str = "") -> tuple[bytes, int, int,
                                                                    PublishedPolicy]:
    """The ``feedback`` document; returns (xml, records, messages, policy published)."""
    if not rows:
        raise ValueError(f"{policy_domain}: no records in the period (§3.1.1.2 needs one)")
    published = latest_policy(rows)
    root = etree.Element(_Q + "feedback", nsmap={None: NAMESPACE})
    _sub(root, "version", "1.0")
    meta = _sub(root, "report_metadata")
    _sub(meta, "org_name", reporter.org_name)
    _sub(meta, "email", reporter.email)
    if reporter.extra_contact_info:
        _sub(meta, "extra_contact_info", reporter.extra_contact_info)
    _sub(meta, "report_id", rid)
    date_range = _sub(meta, "date_range")
    _sub(date_range, "begin", str(period.begin))
    _sub(date_range, "end", str(period.end))
    if error:
        _sub(meta, "error", error)
    _sub(meta, "generator", GENERATOR)
    policy = _sub(root, "policy_published")
    _sub(policy, "domain", published.domain)
    _sub(policy, "discovery_method", published.discovery_method)
    for tag in ("p", "sp", "np", "adkim", "aspf", "testing"):
        _sub(policy, tag, getattr(published, tag))
    messages = 0
    merged = _merged(rows)
    for row, count in merged:
        messages += count
        record = _sub(root, "record")
        row_element = _sub(record, "row")
        _sub(row_element, "source_ip", row.source_ip)
        _sub(row_element, "count", str(count))
        evaluated = _sub(row_element, "policy_evaluated")
        _sub(evaluated, "disposition", row.disposition)
        _sub(evaluated, "dkim", row.dmarc_dkim)
        _sub(evaluated, "spf", row.dmarc_spf)
        for reason_type, comment in row.reasons:
            reason = _sub(evaluated, "reason")
            _sub(reason, "type", reason_type)
            if comment:
                _sub(reason, "comment", comment)
        identifiers = _sub(record, "identifiers")
        _sub(identifiers, "header_from", row.header_from)
        if row.envelope_from:
            _sub(identifiers, "envelope_from", row.envelope_from)
        auth = _sub(record, "auth_results")
        for domain, selector, result in row.dkim[:MAX_DKIM_PER_ROW]:  # stored in §3.1.3 order
            dkim = _sub(auth, "dkim")
            _sub(dkim, "domain", domain)
            _sub(dkim, "selector", selector)
            _sub(dkim, "result", result)
        if row.spf is not None:
            spf = _sub(auth, "spf")
            _sub(spf, "domain", row.spf[0])
            _sub(spf, "scope", row.spf[1])
            _sub(spf, "result", row.spf[2])
    body = etree.tostring(root, encoding="utf-8", xml_declaration=True)
    return body, len(merged), messages, published


def build_report(reporter: Reporter, policy_domain: str, period: Period,
                 rows: Sequence[StoredRow], error: str = "") -> Report:
    """Build and validate one report; InvalidReportError if the schema refuses it."""
    rid = report_id(reporter.receiver, policy_domain, period)
    xml, records, messages, published = build_xml(reporter, policy_domain, period, rid, rows,
                                                  error)
    validate(xml)
    return Report(policy_domain, period, rid, xml, records, messages, published,
                  attachment_filename(reporter.receiver, policy_domain, period, rid))


_SCHEMA_LOCK = threading.Lock()
_SCHEMA: list[Any] = []


def _schema() -> Any:
    """The Appendix A schema, parsed once (libxml2 through lxml: building and validating 5,000
    reports takes seconds, not minutes)."""
    with _SCHEMA_LOCK:
        if not _SCHEMA:
            text = resources.files(__package__).joinpath(XSD_NAME).read_bytes()
            _SCHEMA.append(etree.XMLSchema(etree.fromstring(text)))
        return _SCHEMA[0]


def validate(xml: bytes) -> None:
    """Raise InvalidReportError naming the first schema error (line and message)."""
    schema = _schema()
    try:
        document = etree.fromstring(xml)
    except etree.XMLSyntaxError as exc:
        raise InvalidReportError(f"not well-formed XML: {exc}") from None
    if not schema.validate(document):
        first = schema.error_log[0] if schema.error_log else None
        raise InvalidReportError(f"line {first.line}: {first.message}" if first
                            else "does not validate against RFC 9990 Appendix A")
