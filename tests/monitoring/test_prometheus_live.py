"""Every PromQL expression of the dashboard and the rules, evaluated by a real Prometheus.

A real Prometheus (Debian's binary) on 127.0.0.1 scrapes two real daemons every second as job
"mailsec-milter" — one enforcing, one in dry-run mode — with the rules file loaded, while test
mail flows through both (accept, reject, quarantine, tempfail by SERVFAIL and by timeout, DKIM
signatures, TLS versions and plaintext, a forged Authentication-Results header). Once it has
scraped the final counts twice, each dashboard query (``$__rate_interval`` = 1m, ``$__range`` =
10m: longer than this Prometheus has existed, so a range stat covers all the test mail) and each
rule expression is sent to /api/v1/query and must come back with data and the labels it promises.
Alerts that this traffic must not raise are checked for a valid, empty answer, and the
expressions they are built from for data.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.monitoring import tools, traffic
from tests.support.dnsserver import DnsTestServer
from tests.support.milterproc import MilterProcess, free_tcp_port

RATE_INTERVAL = "1m"
VARIABLES = {"$__rate_interval": RATE_INTERVAL, "$__range": "10m", "$job": tools.JOB,
             "$instance": ".*"}
# What the traffic of both rounds decides, job-wide (the dry-run daemon's mail counts as accept):
# enforcing 8 accept, 4 reject, 2 quarantine, 5 tempfail; dry run 18 accept.
JOB_MESSAGES = 37
JOB_REJECTED = 4
DEADLINE = 30.0  # seconds for any one wait


def wait_until(what: str, predicate: Callable[[], bool], timeout: float = DEADLINE) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def get(self, path: str, **params: str | list[str]) -> dict[str, Any]:
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
                return dict(json.load(response))
        except urllib.error.HTTPError as exc:  # 400/422: a bad query, with an error message
            return dict(json.load(exc))

    def query(self, expr: str) -> dict[str, Any]:
        return self.get("/api/v1/query", query=expr)

    def vector(self, expr: str) -> list[dict[str, Any]]:
        answer = self.query(expr)
        assert answer["status"] == "success", (expr, answer)
        assert answer["data"]["resultType"] == "vector", (expr, answer)
        return list(answer["data"]["result"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def start_prometheus(targets: list[str], workdir: Path) -> Prometheus:
    binary = tools.tool("prometheus")
    port = free_tcp_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                   "evaluation_interval": "1s"},
        "rule_files": [str(tools.RULES)],
        "scrape_configs": [{"job_name": tools.JOB,
                            "static_configs": [{"targets": targets}]}],
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={config_path}",
             f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}",
             "--web.enable-lifecycle"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    server = Prometheus(f"http://127.0.0.1:{port}", process, log_path)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"prometheus exited early:\n{server.log()}")
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    try:
        wait_until("prometheus to be ready", ready)
    except BaseException:
        stop_prometheus(server)
        raise
    return server


def stop_prometheus(server: Prometheus) -> None:
    if server.process.poll() is None:
        server.process.terminate()  # SIGTERM to our own child's PID
        try:
            server.process.wait(10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(5)


def scrape_total(metrics_url: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("mailsec_messages_total{"))


def settled_total(metrics_url: str) -> float:
    """The daemon's message count once its workers have pushed their latest numbers (they
    push about once a second while numbers change): two equal reads 1.5 s apart."""
    previous = scrape_total(metrics_url)
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        time.sleep(1.5)
        current = scrape_total(metrics_url)
        if current == previous:
            return current
        previous = current
    raise AssertionError(f"{metrics_url}: the message count did not settle")


@dataclass
class Scene:
    prometheus: Prometheus
    enforcing: MilterProcess
    dry_run: MilterProcess
    sent: dict[str, Counter[str]]


@pytest.fixture(scope="module")
def scene() -> Iterator[Scene]:
    tools.tool("prometheus")  # skip (or fail in CI) before starting anything
    workdir = Path(tempfile.mkdtemp(prefix="mailsec-prometheus-"))
    try:
        yield from _scene(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _scene(workdir: Path) -> Iterator[Scene]:
    with DnsTestServer() as dns:
        traffic.populate(dns)
        config: dict[str, dict[str, Any]] = {
            "milter": {"message_deadline": "5s"},
            "dns": {"nameservers": [dns.nameserver], "timeout": "1s"},
        }
        dry_config = {**config, "policy": {"dry_run": True}}
        # The enforcing daemon has an own domain audited today, at the baseline: the posture
        # panels have data and the posture alerts stay quiet (docs/AUDIT.md).
        workdir.chmod(0o755)  # the daemons' user reads the result file
        result_file = workdir / "audit.json"
        result_file.write_text(json.dumps({
            "format": 1, "finished": time.time(), "last_success": time.time(), "ok": True,
            "baseline": "reject", "domains": {"own.test": {
                "dmarc_policy": 2, "mta_sts_mode": "enforce", "tls_rpt": True, "dane": False,
                "meets_baseline": True, "errors": 0}}}))
        result_file.chmod(0o644)
        config = {**config, "audit": {"domains": ["own.test"], "result_file": str(result_file)}}
        with MilterProcess(config) as enforcing, MilterProcess(dry_config) as dry_run:
            targets = [str(m.config["metrics"]["listen"]) for m in (enforcing, dry_run)]
            server = start_prometheus(targets, workdir)
            try:
                # Two scrapes of every target before any mail, so rate() has a "before".
                wait_until("two scrapes of both milters", lambda: len(server.vector(
                    f'count_over_time(up{{job="{tools.JOB}"}}[1m]) >= 2')) == 2)
                # Round one, scraped, then round two: a series born with the first message
                # (DKIM signatures by algorithm and key size are not created at start-up) needs
                # a second value to have a rate.
                sent = {"enforcing": traffic.send_round(enforcing.socket_spec),
                        "dry_run": traffic.send_round(dry_run.socket_spec)}
                _wait_for_counts(server, (enforcing, dry_run))
                sent["enforcing"] += traffic.send_round(enforcing.socket_spec, slow=True)
                sent["dry_run"] += traffic.send_round(dry_run.socket_spec)
                _wait_for_counts(server, (enforcing, dry_run))
                _wait_for_rules(server)
                yield Scene(server, enforcing, dry_run, sent)
            finally:
                stop_prometheus(server)


def _wait_for_counts(server: Prometheus, milters: tuple[MilterProcess, ...]) -> None:
    """Until Prometheus holds every daemon's current message count, and then for two more
    scrapes (scrape_interval is 1s)."""
    expected = {str(m.config["metrics"]["listen"]): settled_total(str(m.metrics_url))
                for m in milters}

    def scraped() -> bool:
        result = server.vector(f'sum by (instance) (mailsec_messages_total{{job="{tools.JOB}"}})')
        return {r["metric"]["instance"]: float(r["value"][1]) for r in result} == expected

    wait_until(f"prometheus to scrape the counts {expected}", scraped)
    time.sleep(2.2)


def _wait_for_rules(server: Prometheus) -> None:
    """Until every rule group has been evaluated after the last scrape."""
    since = time.time()

    def evaluated() -> bool:
        groups = server.get("/api/v1/rules")["data"]["groups"]
        return all(_epoch(g["lastEvaluation"]) > since for g in groups)

    wait_until("a rule evaluation after the last scrape", evaluated)


def _epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d*", r"\1",
                                         rfc3339.replace("Z", "+00:00"))).timestamp()


def substitute(expr: str) -> str:
    for name, value in sorted(VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def finite(result: list[dict[str, Any]]) -> list[float]:
    return [v for v in (float(r["value"][1]) for r in result) if not math.isnan(v)]


def by_labels(result: list[dict[str, Any]], *names: str) -> dict[tuple[str, ...], float]:
    return {tuple(r["metric"].get(n, "") for n in names): float(r["value"][1]) for r in result}


# -- the traffic itself ------------------------------------------------------------------------

def test_the_milters_decided_as_the_traffic_intended(scene: Scene) -> None:
    assert scene.sent["enforcing"] == {"accept->accept": 8, "reject->reject": 4,
                                       "quarantine->quarantine": 2, "tempfail->tempfail": 5}
    assert scene.sent["dry_run"] == {"accept->accept": 8, "reject->accept": 4,
                                     "quarantine->accept": 2, "tempfail->accept": 4}


# -- the dashboard -----------------------------------------------------------------------------

def _dashboard() -> dict[str, Any]:
    return dict(json.loads(tools.DASHBOARD_JSON.read_text()))


# Beyond "data with the promised labels": what this traffic must show on particular panels.
# panel title -> (refId, check of the result)
PanelCheck = Callable[[list[dict[str, Any]]], None]


def _positive(result: list[dict[str, Any]]) -> None:
    assert any(v > 0 for v in finite(result)), result


def _has(labels: tuple[str, ...], *wanted: tuple[str, ...]) -> PanelCheck:
    def check(result: list[dict[str, Any]]) -> None:
        got = by_labels(result, *labels)
        for key in wanted:
            assert got.get(key, 0) > 0, f"{dict(zip(labels, key, strict=True))} missing: {got}"

    return check


def _each_instance(value: float | None) -> PanelCheck:
    def check(result: list[dict[str, Any]]) -> None:
        assert len(result) == 2, result
        if value is not None:
            assert all(float(r["value"][1]) == value for r in result), result

    return check


def _single(value: float) -> PanelCheck:
    def check(result: list[dict[str, Any]]) -> None:
        assert [float(r["value"][1]) for r in result] == [value], result

    return check


def _at_least(value: float) -> PanelCheck:
    """A count over the range: increase() can only extrapolate upwards from counters that
    started at 0 inside the range, so never fewer than the messages sent."""
    def check(result: list[dict[str, Any]]) -> None:
        (got,) = finite(result)
        assert got >= value, result

    return check


def _near(value: float, tolerance: float) -> PanelCheck:
    def check(result: list[dict[str, Any]]) -> None:
        (got,) = finite(result)
        assert abs(got - value) <= tolerance, (value, result)

    return check


def _top_reasons(result: list[dict[str, Any]]) -> None:
    """At most ten series (one instant query), largest first: 5 tempfails, 4 rejects,
    2 quarantines; every other (pre-initialised) pair at 0."""
    assert len(result) <= 10, result
    pairs = [(r["metric"]["verdict"], r["metric"]["reason"]) for r in result]
    assert pairs[:3] == [("tempfail", "dns_temperror"), ("reject", "dmarc_policy"),
                         ("quarantine", "dmarc_policy")], pairs
    values = [float(r["value"][1]) for r in result]
    assert values == sorted(values, reverse=True), values
    assert values[2] > 0 and all(v == 0 for v in values[3:]), values


PANEL_CHECKS: dict[tuple[str, str], PanelCheck] = {
    ("Mail", "A"): _at_least(JOB_MESSAGES),
    ("Rejected", "A"): _near(JOB_REJECTED / JOB_MESSAGES, 0.015),
    ("Quarantined", "A"): _positive,
    ("Tempfailed", "A"): _positive,
    ("Dry run: would have rejected", "A"): _at_least(4),
    ("Messages by verdict", "A"): _has(("verdict",), ("accept",), ("reject",), ("quarantine",),
                                       ("tempfail",)),
    ("Reject, quarantine and tempfail ratio", "A"): _has(("verdict",), ("reject",),
                                                         ("quarantine",), ("tempfail",)),
    ("Top reasons (reject, quarantine, tempfail)", "A"): _top_reasons,
    ("Dry run: would-be verdicts", "A"): _has(
        ("verdict", "reason"), ("reject", "dmarc_policy"), ("quarantine", "dmarc_policy"),
        ("tempfail", "dns_temperror")),
    ("SPF / DKIM / DMARC pass ratio", "A"): _has(("method",), ("spf",), ("dkim",), ("dmarc",)),
    ("DMARC outcomes by published policy", "A"): _has(
        ("published", "applied"), ("reject", "reject"), ("quarantine", "quarantine"),
        ("none", "none"), ("reject", "not_applied"), ("absent", "not_applied")),
    ("TLS share of inbound messages", "A"): _has(("version",), ("plaintext",), ("TLSv1.2",),
                                                 ("TLSv1.3",)),
    ("DKIM signatures by algorithm and key size", "A"): _has(
        ("algorithm", "key_bits", "result"), ("ed25519-sha256", "256", "pass"),
        ("rsa-sha256", "2048", "pass")),
    ("Authentication results by method", "A"): _has(
        ("method", "result"), ("dmarc", "fail"), ("dmarc", "temperror"), ("tls", "none")),
    ("Forged Authentication-Results removed", "A"): _positive,
    ("DNS latency", "C"): _positive,
    ("DNS queries by outcome", "A"): _has(("outcome",), ("answer",), ("nxdomain",),
                                          ("servfail",), ("timeout",)),
    ("DNS timeouts and SERVFAIL", "A"): _has(("type", "outcome"), ("TXT", "servfail"),
                                             ("TXT", "timeout")),
    ("DNS timeouts and SERVFAIL", "B"): _positive,
    ("End-of-message processing time", "C"): _positive,
    ("Time per check (p99)", "A"): _has(("check",), ("spf",), ("dkim",), ("dmarc",)),
    ("Connections open by instance", "A"): _each_instance(0.0),
    ("New connections", "A"): _each_instance(None),
    ("Scrape targets up", "A"): _each_instance(1.0),
    ("Running versions", "A"): _single(2.0),  # both daemons run the same version
}


def _dashboard_cases() -> list[Any]:
    return [pytest.param(panel["title"], target["refId"], target["expr"],
                         id=f"{panel['title']}/{target['refId']}")
            for panel, target in tools.dashboard_targets(_dashboard())]


def test_panel_checks_name_real_panels() -> None:
    real = {(panel["title"], target["refId"])
            for panel, target in tools.dashboard_targets(_dashboard())}
    assert set(PANEL_CHECKS) <= real, set(PANEL_CHECKS) - real


@pytest.mark.parametrize(("title", "ref", "expr"), _dashboard_cases())
def test_dashboard_query_returns_data(scene: Scene, title: str, ref: str, expr: str) -> None:
    result = scene.prometheus.vector(substitute(expr))
    assert result, f"{title}/{ref}: no data for {substitute(expr)}"
    wanted = tools.result_labels(expr)
    for series in result:
        assert set(series["metric"]) == wanted, (title, series["metric"], wanted)
    assert finite(result), f"{title}/{ref}: only NaN: {result}"
    check = PANEL_CHECKS.get((title, ref))
    if check is not None:
        check(result)


def test_dashboard_variables_resolve(scene: Scene) -> None:
    """The job and instance variables' label_values() queries, through the label API."""
    found = {}
    for variable in _dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variable["query"])
        assert match, variable["query"]
        selector, label = substitute(match.group(1)), match.group(2)
        answer = scene.prometheus.get(f"/api/v1/label/{label}/values", **{"match[]": selector})
        assert answer["status"] == "success", answer
        found[variable["name"]] = set(answer["data"])
    listens = {str(m.config["metrics"]["listen"]) for m in (scene.enforcing, scene.dry_run)}
    assert found == {"job": {tools.JOB}, "instance": listens}


# -- the rules ---------------------------------------------------------------------------------

RECORDING = [rule for rule in tools.load_rules() if "record" in rule]
ALERTS = [rule for rule in tools.load_rules() if "alert" in rule]

# Alerts this traffic raises (their expression returns data; with `for:` they are pending),
# and the label values of the alerts: 37 messages in the job, 5 of them tempfailed (14% > 5%,
# >= 20 messages); on each daemon SERVFAIL for two names and, on the enforcing one, a timeout
# for a third, of 20-odd queries (18-20% > 10%, >= 20 queries).
FIRING = {"MailsecTempfailRatioHigh": ("job", "verdict"),
          "MailsecDnsFailuresHigh": ("job", "instance"),
          # the enforcing daemon quarantined (p=quarantine); the dry-run one only would have
          "MailsecMessagesQuarantined": ("instance",)}
# For the alerts it must not raise: the expressions they compare, which must have data.
INNER: dict[str, list[str]] = {
    "MailsecRejectRatioJump": ['job_verdict:mailsec_messages:ratio_rate30m{verdict="reject"}',
                               "job:mailsec_messages:rate30m"],
    "MailsecRejectRatioHigh": ['job_verdict:mailsec_messages:ratio_rate30m{verdict="reject"}',
                               "job:mailsec_messages:rate30m"],
    "MailsecTempfailRatioHigh": ['job_verdict:mailsec_messages:ratio_rate10m{verdict="tempfail"}',
                                 "job:mailsec_messages:rate10m"],
    "MailsecDnsFailuresHigh": ["instance:mailsec_dns_failures:ratio_rate10m",
                               "instance:mailsec_dns_queries:rate10m"],
    "MailsecMilterDown": [f'up{{job="{tools.JOB}"}}'],
    "MailsecMilterNotScraped": [f'up{{job="{tools.JOB}"}}'],
    "MailsecProcessingSlow": ["instance:mailsec_message_duration_seconds:p99_rate10m",
                              "instance:mailsec_message_duration_seconds_count:rate10m"],
    "MailsecCheckErrors": ["sum by (job, instance, check) "
                           "(increase(mailsec_check_errors_total[10m]))"],
    "MailsecNoWorker": ["mailsec_workers"],
    # Its baselines (offset 30m, 1d) have no data in a Prometheus minutes old.
    "MailsecNoTraffic": ["sum by (job, instance) (increase(mailsec_connections_total[30m]))"],
    "MailsecMessagesQuarantined": ['sum by (job, instance) '
                                   '(increase(mailsec_messages_total{verdict="quarantine"}[1h]))'],
    # The enforcing daemon's own domain was audited today and meets the baseline: quiet
    # (promtool's tests in tests.yml make them fire).
    "MailsecOwnDomainBelowBaseline": ["mailsec_posture_baseline_met"],
    "MailsecPostureAuditFailing": ["mailsec_posture_audit_ok"],
    "MailsecPostureAuditStale": ["mailsec_posture_last_success_timestamp_seconds",
                                 "mailsec_posture_domains_configured"],
    # Records are written (the store is in the test daemons' state directory): quiet.
    "MailsecReportRecordsDropped": ["sum by (job, instance, reason) "
                                    "(increase(mailsec_report_records_dropped_total[1h]))"],
    # No reports send has run in this scene: the counters exist (at 0) and stay quiet.
    "MailsecReportsFailing": ["mailsec_reports_failed_total"],
    "MailsecReportsNotRunning": ["mailsec_reports_last_success_timestamp_seconds"],
}


def test_every_alert_has_an_expectation() -> None:
    assert set(INNER) == {rule["alert"] for rule in ALERTS}
    assert set(FIRING) <= set(INNER)


def test_every_rule_is_loaded_and_healthy(scene: Scene) -> None:
    groups = scene.prometheus.get("/api/v1/rules")["data"]["groups"]
    loaded = {r.get("name"): r for g in groups for r in g["rules"]}
    names = {rule.get("record") or rule["alert"] for rule in tools.load_rules()}
    assert set(loaded) == names
    for name, rule in loaded.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))


def _without_offset(expr: str) -> str:
    return re.sub(r"\s+offset\s+\d+[smhdwy]", "", expr)


@pytest.mark.parametrize("rule", RECORDING, ids=lambda r: r["record"])
def test_recording_rule_returns_data(scene: Scene, rule: dict[str, Any]) -> None:
    expr = rule["expr"]
    wanted = tools.result_labels(expr)
    if "offset" in expr:
        # The day-ago baseline has no data in a Prometheus a minute old: the query must be
        # valid (and empty), and the same expression without the offset must have data.
        assert scene.prometheus.vector(expr) == []
        expr = _without_offset(expr)
    else:
        recorded = scene.prometheus.vector(rule["record"])
        assert recorded, f"{rule['record']} was not recorded"
        assert all(set(s["metric"]) - {"__name__"} == wanted for s in recorded), recorded
    result = scene.prometheus.vector(expr)
    assert result, f"no data for {expr}"
    assert all(set(s["metric"]) == wanted for s in result), result
    assert finite(result), result


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: r["alert"])
def test_alert_expression(scene: Scene, rule: dict[str, Any]) -> None:
    name = rule["alert"]
    result = scene.prometheus.vector(rule["expr"])  # a valid query (status success)
    if name in FIRING:
        assert result, f"{name} should fire under this traffic"
        alerts = scene.prometheus.get("/api/v1/alerts")["data"]["alerts"]
        states = {a["labels"]["alertname"]: a["state"] for a in alerts}
        assert states.get(name) in ("pending", "firing"), states
        listens = sorted(str(m.config["metrics"]["listen"]) for m in (scene.enforcing,
                                                                       scene.dry_run))
        expected = {("job", "verdict"): [(tools.JOB, "tempfail")],
                    ("job", "instance"): [(tools.JOB, listen) for listen in listens],
                    ("instance",): [(str(scene.enforcing.config["metrics"]["listen"]),)]}
        assert sorted(by_labels(result, *FIRING[name])) == expected[FIRING[name]], result
    else:
        assert result == [], f"{name} fired under normal test traffic: {result}"
    for inner in INNER[name]:
        data = scene.prometheus.vector(inner)
        assert data and finite(data), f"{name}: no data for {inner}"


def test_the_daemons_are_scraped_as_one_job(scene: Scene) -> None:
    result = scene.prometheus.vector(f'up{{job="{tools.JOB}"}}')
    listens = {str(m.config["metrics"]["listen"]) for m in (scene.enforcing, scene.dry_run)}
    assert by_labels(result, "instance") == {(listen,): 1.0 for listen in listens}
