"""The audit command in-process against the loopback test DNS server (ephemeral port through
[dns] nameservers): many domains with progress, --top from a report store, the per-domain time
bound, and the daemon never importing checkdmarc."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from mailsec_milter import audit
from mailsec_milter.audit_report import top_senders
from mailsec_milter.cli import main
from mailsec_milter.reports.record import PublishedPolicy, ReportRecord
from mailsec_milter.reports.store import open_store
from tests.support.dnsserver import DnsTestServer


@pytest.fixture
def dns_server() -> Iterator[DnsTestServer]:
    with DnsTestServer() as server:
        for name, p in (("bigsender.test", "none"), ("mid.test", "reject"),
                        ("small.test", "quarantine")):
            server.add(name, "TXT", "v=spf1 -all")
            server.add(f"_dmarc.{name}", "TXT", f"v=DMARC1; p={p}; rua=mailto:d@{name}")
        yield server


def config(tmp_path: Path, server: DnsTestServer, extra: str = "") -> str:
    path = tmp_path / "c.toml"
    path.write_text(f'[dns]\nnameservers = ["{server.nameserver}"]\ntimeout = "5s"\n'
                    f'[reports]\nstore = "{tmp_path / "reports.sqlite"}"\n{extra}')
    return str(path)


def record(day: date, domain: str, p: str, source: str) -> ReportRecord:
    return ReportRecord(
        day=day, policy_domain=domain, rua=f"mailto:d@{domain}",
        published=PublishedPolicy(domain, "treewalk", p, p, p, "r", "r", "n"),
        source_ip=source, header_from=domain, envelope_from=domain, disposition="none",
        dmarc_dkim="pass", dmarc_spf="pass")


def fill_store(location: str, day: date) -> None:
    store = open_store(location)
    try:
        batch = ([record(day, "bigsender.test", "none", f"192.0.2.{i}") for i in range(38)]
                 + [record(day, "mid.test", "reject", f"192.0.2.{i}") for i in range(50)]
                 + [record(day, "small.test", "quarantine", f"192.0.2.{i}") for i in range(12)]
                 + [record(day - timedelta(days=3), "old.test", "none", "192.0.2.1")] * 500)
        store.write(batch)
    finally:
        store.close()


def test_top_reads_yesterday_and_gives_each_share(tmp_path: Path, dns_server: DnsTestServer,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    fill_store(str(tmp_path / "reports.sqlite"), yesterday)
    status = main(["audit", "--top", "2", "--config", config(tmp_path, dns_server)])
    out = capsys.readouterr().out
    assert f"top 2 sender domains on {yesterday.isoformat()} (yesterday (UTC)): 100" in out
    assert "mid.test: 50 messages (50 %), published p=reject" in out
    assert "bigsender.test: 38 messages (38 %), published p=none" in out
    assert "38 % of your mail comes from domains at p=none" in out
    assert "small.test" not in out  # third: not in the top 2
    assert "old.test" not in out  # an older day
    assert status == 1  # bigsender.test publishes p=none


def test_top_falls_back_to_the_last_day_with_rows(tmp_path: Path) -> None:
    location = str(tmp_path / "reports.sqlite")
    today = date(2026, 12, 8)
    fill_store(location, date(2026, 12, 1))
    top = top_senders(location, 5, today=today)
    assert top.begin == date(2026, 12, 1) and "last day with records" in top.period_note
    assert [s.domain for s in top.senders] == ["mid.test", "bigsender.test", "small.test"]
    assert round(top.share_at("none")) == 38


def test_a_thousand_domains_are_bounded_with_progress(
        tmp_path: Path, dns_server: DnsTestServer,
        capsys: pytest.CaptureFixture[str]) -> None:
    names = [f"d{i}.test" for i in range(1000)]
    status = main(["audit", "--json", "--config", config(tmp_path, dns_server), *names])
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert status == 2 and document["exit_status"] == 2
    assert [d["domain"] for d in document["domains"]] == names
    assert all(d["errors"] == [f"{d['domain']} does not exist (NXDOMAIN)"]
               for d in document["domains"])
    progress = [line for line in captured.err.splitlines() if "domains" in line]
    counts = [int(line.split()[-2].split("/")[0]) for line in progress]
    # one line per 25 domains passed (domains finish several at a time), and the end
    assert [c // 25 for c in counts] == list(range(1, 41))
    assert counts == sorted(counts) and counts[-1] == 1000
    assert "Traceback" not in captured.err


def test_a_domain_over_its_time_is_an_error_and_the_rest_go_on() -> None:
    release = threading.Event()

    def check(domain: str, options: audit.AuditOptions) -> audit.DomainAudit:
        if domain == "stuck.test":
            release.wait(60)
        if domain == "broken.test":
            raise RuntimeError("checkdmarc bug")
        return audit.DomainAudit(domain, meets_baseline=True)

    try:
        run = audit.run_audit(["stuck.test", "ok.test", "broken.test"],
                              audit.AuditOptions(domain_timeout=0.5), check=check)
    finally:
        release.set()
    errors = {r.domain: r.errors for r in run.results}
    assert errors["ok.test"] == []
    assert errors["stuck.test"][0].startswith("audit did not finish within 0.5s")
    assert errors["broken.test"] == ["audit failed: RuntimeError: checkdmarc bug"]
    assert run.exit_status == 2


def test_exit_status_follows_the_baseline() -> None:
    meets = audit.DomainAudit("a.test", meets_baseline=True)
    below = audit.DomainAudit("b.test", meets_baseline=False)
    assert audit.AuditRun([meets], "reject").exit_status == 0
    assert audit.AuditRun([meets, below], "reject").exit_status == 1
    assert audit.AuditRun([replace(meets, errors=["x"]), below], "reject").exit_status == 2


def test_baseline_option_moves_the_bar(tmp_path: Path, dns_server: DnsTestServer,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path, dns_server)
    assert main(["audit", "--config", cfg, "small.test"]) == 1
    assert main(["audit", "--config", cfg, "--baseline", "quarantine", "small.test"]) == 0
    assert "== small.test: p=quarantine" in capsys.readouterr().out


def test_usage_errors_exit_2(tmp_path: Path, dns_server: DnsTestServer,
                             capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path, dns_server)
    assert main(["audit", "--config", cfg]) == 2
    assert main(["audit", "--config", cfg, "--own"]) == 2
    assert main(["audit", "--config", cfg, "--write-metrics", "x", "mid.test"]) == 2
    assert "--own: [audit] domains is empty" in capsys.readouterr().err


def test_a_failed_run_keeps_the_last_success_time(tmp_path: Path) -> None:
    path = str(tmp_path / "audit.json")
    good = audit.AuditRun([audit.DomainAudit("a.test", meets_baseline=True)], "reject")
    audit.write_result_file(path, good, now=1000.0)
    failed = audit.AuditRun([audit.DomainAudit("a.test", errors=["DNS"])], "reject")
    audit.write_result_file(path, failed, now=2000.0)
    document = json.loads(Path(path).read_text())
    assert document["finished"] == 2000.0 and document["last_success"] == 1000.0
    assert document["ok"] is False


def test_the_daemon_never_imports_checkdmarc() -> None:
    code = ("import sys, mailsec_milter.daemon, mailsec_milter.worker, mailsec_milter.milter, "
            "mailsec_milter.posture, mailsec_milter.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'checkdmarc'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"


def test_top_with_a_store_that_cannot_be_opened_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[reports]\nstore = "{tmp_path / "missing" / "reports.sqlite"}"\n')
    assert main(["audit", "--top", "3", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mailsec-milter: --top: ") and len(err.strip().splitlines()) == 1
    assert "missing" in err and "Traceback" not in err


def test_progress_shows_each_passed_step_once() -> None:
    show = audit.stderr_progress(every=10)
    buffer = io.StringIO()
    with contextlib.redirect_stderr(buffer):
        for done in (0, 3, 9, 14, 14, 35, 41, 41):
            show(done, 41)
    lines = buffer.getvalue().splitlines()
    assert lines == [f"mailsec-milter audit: {n}/41 domains" for n in (14, 35, 41)]


def test_dmarc_tags_on_the_ladder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with DnsTestServer() as server:
        server.add("tags.test", "TXT", "v=spf1 -all")
        server.add("_dmarc.tags.test", "TXT",
                   "v=DMARC1; p=reject; sp=none; t=y; pct=50; rf=afrf; ri=3600; "
                   "rua=mailto:d@tags.test")
        server.add("org.test", "TXT", "v=spf1 -all")
        server.add("_dmarc.org.test", "TXT",
                   "v=DMARC1; p=reject; sp=quarantine; rua=mailto:d@org.test")
        server.add("sub.org.test", "TXT", "v=spf1 -all")
        status = main(["audit", "--json", "--config", config(tmp_path, server), "tags.test",
                       "sub.org.test"])
    domains = {d["domain"]: d for d in json.loads(capsys.readouterr().out)["domains"]}
    tags = domains["tags.test"]
    # t=y: receivers apply one step less than p=reject
    assert tags["dmarc"]["policy"] == "reject" and tags["dmarc"]["t"] == "y"
    assert tags["dmarc"]["effective_policy"] == "quarantine"
    assert tags["dmarc"]["removed_tags"] == ["pct", "rf", "ri"]
    texts = [f["text"] for f in tags["findings"]]
    assert any(t.startswith("t=y (testing)") for t in texts)
    assert any(t.startswith("sp=none is weaker than p=reject") for t in texts)
    assert sum("was removed from DMARC (RFC 9989)" in t for t in texts) == 3
    # a subdomain without its own record: the organisational domain's sp= governs it
    sub = domains["sub.org.test"]
    assert sub["dmarc"]["record_domain"] == "org.test"
    assert sub["dmarc"]["effective_policy"] == "quarantine"
    assert sub["meets_baseline"] is False and status == 1
