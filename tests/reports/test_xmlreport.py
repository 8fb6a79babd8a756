"""RFC 9990 XML: valid against the Appendix A schema for generated stores (checked by lxml,
which gates sending, AND by xmlschema, an independent validator), the report id / subject /
file name of §3.5, and the XSD shipped as package data."""

from __future__ import annotations

import gzip
import re
import tempfile
import tomllib
from dataclasses import replace
from datetime import date, timedelta
from importlib import resources
from pathlib import Path

import pytest
import xmlschema
from hypothesis import given, settings
from hypothesis import strategies as st

from mailsec_milter.reports.record import PublishedPolicy
from mailsec_milter.reports.store import open_store
from mailsec_milter.reports.xmlreport import (
    NAMESPACE,
    InvalidReportError,
    Period,
    Reporter,
    build_report,
    subject,
    validate,
)
from tests.reports.test_store import DAY, POLICY, record

REPORTER = Reporter("Example Receiver", "dmarc-reports@receiver.example", "receiver.example")
XSD = resources.files("mailsec_milter.reports").joinpath("rfc9990.xsd")
INDEPENDENT = xmlschema.XMLSchema(XSD.read_text())

_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
_DOMAIN = st.sampled_from(["victim.example", "mail.victim.example", "xn--bcher-kva.example"])
_DKIM = st.tuples(st.sampled_from(["victim.example", "esp.example", "list.example"]),
                  st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True),
                  st.sampled_from(["pass", "fail", "neutral", "temperror", "permerror",
                                   "policy", "none"]))
_SPF = st.none() | st.tuples(st.sampled_from(["victim.example", "bounce.example"]),
                             st.just("mfrom"),
                             st.sampled_from(["pass", "fail", "softfail", "neutral", "none",
                                              "temperror", "permerror"]))
_REASON = st.tuples(st.sampled_from(["local_policy", "mailing_list", "trusted_forwarder",
                                     "policy_test_mode"]), _TEXT)
_RECORD = st.fixed_dictionaries({
    "source_ip": st.ip_addresses().map(str),
    "header_from": _DOMAIN,
    "envelope_from": st.sampled_from(["", "victim.example", "bounce.example"]),
    "disposition": st.sampled_from(["none", "pass", "quarantine", "reject"]),
    "dmarc_dkim": st.sampled_from(["pass", "fail"]),
    "dmarc_spf": st.sampled_from(["pass", "fail"]),
    "reasons": st.lists(_REASON, max_size=2).map(tuple),
    "dkim": st.lists(_DKIM, max_size=3).map(tuple),
    "spf": _SPF,
    "day": st.integers(0, 2).map(lambda k: DAY + timedelta(days=k)),
    "published": st.builds(PublishedPolicy, st.just("victim.example"),
                           st.sampled_from(["treewalk", "psl"]),
                           *[st.sampled_from(["none", "quarantine", "reject"])] * 3,
                           *[st.sampled_from(["r", "s"])] * 2, st.sampled_from(["y", "n"])),
})


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(_RECORD, st.integers(1, 3)), min_size=1, max_size=25))
def test_generated_stores_give_reports_valid_against_the_rfc_schema(
        generated: list[tuple[dict[str, object], int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(str(Path(tmp) / "r.sqlite"))
        try:
            for fields, times in generated:
                store.write([record(**fields)] * times)
            period = Period(DAY, DAY + timedelta(days=2))
            rows = store.rows("victim.example", period.first, period.last)
            report = build_report(REPORTER, "victim.example", period, rows)
        finally:
            store.close()
    INDEPENDENT.validate(report.xml)  # raises on any schema error
    assert report.messages == sum(times for _fields, times in generated)
    parsed = INDEPENDENT.to_dict(report.xml)
    records = parsed["record"]
    assert sum(int(r["row"]["count"]) for r in records) == report.messages
    assert len(records) == report.records
    assert gzip.decompress(report.gzipped()) == report.xml


def test_a_comment_with_characters_xml_cannot_hold_still_validates() -> None:
    rows = _rows([record(reasons=(("local_policy", "bad\x00\x1b\ufffe char"),))])
    report = build_report(REPORTER, "victim.example", Period.day(DAY), rows)
    assert b"bad\xef\xbf\xbd" in report.xml  # replaced by U+FFFD, not dropped silently


def test_an_invalid_document_is_refused_before_it_could_leave() -> None:
    bad = (f'<feedback xmlns="{NAMESPACE}"><report_metadata><org_name>x</org_name>'
           "</report_metadata></feedback>").encode()
    with pytest.raises(InvalidReportError):
        validate(bad)
    with pytest.raises(InvalidReportError, match="well-formed"):
        validate(b"<feedback")


def test_the_dkim_results_keep_the_stored_priority_order_and_at_most_100() -> None:
    dkim = tuple((f"d{i}.example", "s", "pass" if i < 3 else "fail") for i in range(120))
    rows = _rows([record(dkim=dkim)])
    report = build_report(REPORTER, "victim.example", Period.day(DAY), rows)
    found = re.findall(rb"<domain>(d\d+)\.example</domain>", report.xml)
    assert found == [f"d{i}".encode() for i in range(100)]


def test_the_policy_seen_last_in_the_period_is_published() -> None:
    """§3.3: one policy_published; the later day's (p=reject) wins over the earlier p=none."""
    older = replace(POLICY, p="none")
    rows = _rows([record(published=older)] * 5
                 + [record(published=POLICY, day=DAY + timedelta(days=1))])
    report = build_report(REPORTER, "victim.example", Period(DAY, DAY + timedelta(days=1)),
                          rows)
    assert report.published == POLICY and b"<p>reject</p>" in report.xml
    assert report.messages == 6


def test_report_id_subject_and_file_name_follow_section_3_5() -> None:
    rows = _rows([record()])
    period = Period.day(date(2026, 12, 7))
    report = build_report(REPORTER, "victim.example", period, rows)
    again = build_report(REPORTER, "victim.example", period, rows)
    other = build_report(REPORTER, "victim.example", Period.day(date(2026, 12, 8)), rows)
    assert re.fullmatch(r"[A-Za-z0-9]+", report.report_id)
    assert report.report_id == again.report_id != other.report_id  # a re-send: same id
    match = re.fullmatch(r"([^!]+)!([^!]+)!(\d+)!(\d+)!([A-Za-z0-9]+)\.xml\.gz",
                         report.filename)
    assert match is not None
    assert match.groups() == ("receiver.example", "victim.example", "1796601600",
                              "1796687999", report.report_id)
    text = subject("victim.example", "receiver.example", report.report_id)
    assert re.fullmatch(r"Report +Domain: +victim\.example +Submitter: +receiver\.example"
                        r" +Report-ID: +([A-Za-z0-9]+)", text)
    assert text.endswith(report.report_id)
    assert f"<report_id>{report.report_id}</report_id>".encode() in report.xml


def test_the_xsd_is_the_rfc_appendix_and_is_package_data() -> None:
    text = XSD.read_text()
    assert 'targetNamespace="urn:ietf:params:xml:ns:dmarc-2.0"' in text
    assert "Brotman" not in text and "Internet-Draft" not in text  # page furniture removed
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert "rfc9990.xsd" in project["tool"]["setuptools"]["package-data"][
        "mailsec_milter.reports"]


def _rows(records: list[object]) -> list[object]:
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(str(Path(tmp) / "r.sqlite"))
        store.write(records)  # type: ignore[arg-type]
        rows = store.rows("victim.example", DAY - timedelta(days=1), DAY + timedelta(days=3))
        store.close()
    return rows  # type: ignore[return-value]
