"""The daily audit's result file as gauges on /metrics (mailsec_milter/posture.py), in the
collector and through the real daemon, labelled only with [audit] domains."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from mailsec_milter import audit
from mailsec_milter.posture import PostureCollector
from tests.support.milterproc import MilterProcess

OWN = ("good.test", "weak.test")


def write_result(path: Path) -> None:
    """What ``audit --own --write-metrics`` writes (audit.write_result_file), plus a sender
    domain that must never become a label."""
    good = audit.DomainAudit("good.test", meets_baseline=True, dane=False,
                             dmarc={"effective_policy": "reject"},
                             mta_sts={"valid": True, "mode": "enforce"},
                             tls_rpt={"present": True})
    weak = audit.DomainAudit("weak.test", meets_baseline=False, dane=True,
                             dmarc={"effective_policy": "none"},
                             mta_sts={"valid": True, "mode": "testing"},
                             tls_rpt={"present": False})
    sender = audit.DomainAudit("sender.test", meets_baseline=True,
                               dmarc={"effective_policy": "reject"})
    audit.write_result_file(str(path), audit.AuditRun([good, weak, sender], "reject"),
                            now=1765000000.0)


def exposition(path: Path, own: tuple[str, ...] = OWN) -> str:
    registry = CollectorRegistry()
    registry.register(PostureCollector(lambda: own, lambda: str(path)))
    return generate_latest(registry).decode()


def test_the_result_file_becomes_bounded_gauges(tmp_path: Path) -> None:
    path = tmp_path / "audit.json"
    write_result(path)
    text = exposition(path)
    assert 'mailsec_posture_dmarc_policy{domain="good.test"} 2.0' in text
    assert 'mailsec_posture_dmarc_policy{domain="weak.test"} 0.0' in text
    assert 'mailsec_posture_mta_sts_mode{domain="good.test"} 2.0' in text
    assert 'mailsec_posture_mta_sts_mode{domain="weak.test"} 1.0' in text
    assert 'mailsec_posture_tls_rpt{domain="weak.test"} 0.0' in text
    assert 'mailsec_posture_dane{domain="weak.test"} 1.0' in text
    assert 'mailsec_posture_baseline_met{domain="weak.test"} 0.0' in text
    assert "mailsec_posture_audit_ok 1.0" in text
    assert "mailsec_posture_last_success_timestamp_seconds 1.765e+09" in text
    assert "mailsec_posture_domains_configured 2.0" in text
    assert "sender.test" not in text  # only [audit] domains are labels


def test_a_missing_or_broken_file_exports_no_stale_values(tmp_path: Path) -> None:
    path = tmp_path / "audit.json"
    text = exposition(path)
    assert "mailsec_posture_domains_configured 2.0" in text
    assert "\nmailsec_posture_last_success_timestamp_seconds " not in text
    assert "mailsec_posture_dmarc_policy{" not in text
    for garbage in ("not json", "[1, 2]", '{"domains": {"good.test": "x"}}'):
        path.write_text(garbage)
        assert "mailsec_posture_dmarc_policy{" not in exposition(path)


def test_the_daemon_serves_the_posture_gauges() -> None:
    process = MilterProcess()
    path = process.workdir / "audit.json"  # readable by the daemon's user
    write_result(path)
    path.chmod(0o644)
    process.config["audit"] = {"domains": list(OWN), "result_file": str(path)}
    process.write_config(process.config)
    with process:  # starts it
        assert process.metrics_url is not None
        with urllib.request.urlopen(process.metrics_url, timeout=10) as reply:
            text = reply.read().decode()
        assert 'mailsec_posture_baseline_met{domain="good.test"} 1.0' in text
        assert 'mailsec_posture_dmarc_policy{domain="weak.test"} 0.0' in text
        assert "sender.test" not in text
        # the next scrape reads the file again: a new audit shows without a reload
        document = json.loads(path.read_text())
        document["domains"]["weak.test"]["dmarc_policy"] = 2
        path.write_text(json.dumps(document))
        with urllib.request.urlopen(process.metrics_url, timeout=10) as reply:
            assert 'mailsec_posture_dmarc_policy{domain="weak.test"} 2.0' in reply.read().decode()
