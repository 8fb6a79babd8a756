"""The Prometheus rules: promtool accepts them, their unit tests pass, and every alert is
documented, labelled, tested both ways and built on metrics the daemon really exports."""

from __future__ import annotations

import subprocess
from typing import Any

import yaml

from tests.monitoring import tools

SEVERITIES = {"warning", "critical"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tools.tool("promtool"), *args], capture_output=True, text=True,
                          timeout=120, check=False, cwd=tools.RULES.parent)


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(tools.RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(tools.load_rules())} rules found" in result.stdout


def test_promtool_unit_tests() -> None:
    result = promtool("test", "rules", str(tools.RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_example_prometheus_config() -> None:
    result = promtool("check", "config", str(tools.RULES.parent / "prometheus.example.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((tools.RULES.parent / "prometheus.example.yml").read_text())
    assert [job["job_name"] for job in config["scrape_configs"]] == [tools.JOB]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in tools.load_rules() if "alert" in rule]


def test_every_alert_waits_is_labelled_and_explained() -> None:
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names))
    for rule in alerts():
        assert rule.get("for"), rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert len(rule["annotations"]["description"]) > 80, rule["alert"]


def test_the_issue_alerts_are_there() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in alerts()}
    records = {rule["record"]: rule["expr"] for rule in tools.load_rules() if "record" in rule}
    assert "[1d] offset 30m" in records["job:mailsec_reject_ratio:rate1d_offset30m"]
    assert "job:mailsec_reject_ratio:rate1d_offset30m" in exprs["MailsecRejectRatioJump"]
    assert 'verdict="tempfail"' in exprs["MailsecTempfailRatioHigh"]
    assert "dns_failures" in exprs["MailsecDnsFailuresHigh"]
    assert exprs["MailsecMilterDown"].strip() == f'up{{job="{tools.JOB}"}} == 0'
    assert exprs["MailsecMilterNotScraped"].strip() == f'absent(up{{job="{tools.JOB}"}})'
    assert "p99" in exprs["MailsecProcessingSlow"]
    assert exprs["MailsecNoWorker"].strip() == "mailsec_workers == 0"
    # Silence now, against traffic before it and against the same time a day earlier.
    no_traffic = exprs["MailsecNoTraffic"]
    assert "increase(mailsec_connections_total[30m])) == 0" in no_traffic
    assert "[30m] offset 30m" in no_traffic and "[30m] offset 1d" in no_traffic
    # Held messages: our quarantine verdicts (Postfix's hold queue is out of our sight).
    assert 'mailsec_messages_total{verdict="quarantine"}' in exprs["MailsecMessagesQuarantined"]


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    data = yaml.safe_load(tools.RULE_TESTS.read_text())
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in data["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - fires == set(), "alerts without a firing test"
    assert names - quiet == set(), "alerts without a quiet test"


def test_rules_name_real_metrics_labels_and_values() -> None:
    problems = {rule.get("record") or rule["alert"]: tools.check_promql_names(rule["expr"])
                for rule in tools.load_rules()}
    assert {k: v for k, v in problems.items() if v} == {}


def test_the_quarantine_review_is_documented_where_the_admin_reads() -> None:
    """quarantine_method "hold" is silent: README and MILTER_README say who reviews the hold
    queue and with which commands, name the alert, and recommend starting in dry run."""
    repo = tools.RULES.parents[2]
    assert "MailsecMessagesQuarantined" in {rule["alert"] for rule in alerts()}
    for name in ("README.md", "docs/MILTER_README.md"):
        text = (repo / name).read_text()
        for needle in ("postqueue -p", "postcat -q", "postsuper -H", "postsuper -r",
                       "postsuper -d", "MailsecMessagesQuarantined", "dry_run = true",
                       "cannot see"):
            assert needle in text, (name, needle)
