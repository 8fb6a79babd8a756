"""Metrics: names, closed label sets, recording from Analysis + Verdict, and the docs table."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from mailsec_milter.checks.dkim import DkimOutcome, DkimSignatureOutcome
from mailsec_milter.checks.dmarc import DmarcOutcome, Policy
from mailsec_milter.checks.spf import SpfIdentity, SpfOutcome
from mailsec_milter.checks.tls import TlsOutcome
from mailsec_milter.dns import DnsOutcome
from mailsec_milter.engine import Analysis, CheckError
from mailsec_milter.metrics import (
    POSTURE_FAMILIES,
    Metrics,
    WorkerTotals,
    describe,
    render_markdown,
)
from mailsec_milter.model import AuthResult
from mailsec_milter.policy import Action, Reason, Verdict

REPO = Path(__file__).resolve().parents[2]


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def analysis() -> Analysis:
    return Analysis(
        spf_mailfrom=SpfOutcome(SpfIdentity.MAILFROM, AuthResult.FAIL, "x@evil.example",
                                "evil.example"),
        spf_helo=SpfOutcome(SpfIdentity.HELO, AuthResult.NONE, "evil.example", "evil.example"),
        dkim=DkimOutcome((
            DkimSignatureOutcome(AuthResult.PASS, domain="bank.example", algorithm="rsa-sha256",
                                 key_bits=2048),
            DkimSignatureOutcome(AuthResult.POLICY, domain="old.example", algorithm="rsa-sha1",
                                 key_bits=1024),
            DkimSignatureOutcome(AuthResult.PASS, domain="x.example",
                                 algorithm="ed25519-sha256", key_bits=256))),
        tls=TlsOutcome(AuthResult.PASS, "TLSv1.3", "TLS_AES_256_GCM_SHA384", 256),
        dmarc=DmarcOutcome(AuthResult.FAIL, header_from="bank.example", policy=Policy.REJECT,
                           disposition=Policy.REJECT),
        errors=(CheckError("dkim", "boom"),),
        check_seconds=(("spf", 0.0004), ("dkim", 0.002)))


def test_a_message_is_recorded_under_closed_labels() -> None:
    metrics = Metrics()
    verdict = Verdict(Action.ACCEPT, Reason.DMARC_POLICY, applied_disposition="none",
                      evaluated_disposition="reject", dry_run_action=Action.REJECT)
    metrics.observe_message(analysis(), verdict, forged_removed=2, seconds=0.003)
    r = metrics.registry
    assert sample(r, "mailsec_messages_total", verdict="accept", reason="dmarc_policy") == 1
    assert sample(r, "mailsec_dry_run_verdicts_total", verdict="reject",
                  reason="dmarc_policy") == 1
    assert sample(r, "mailsec_auth_results_total", method="dkim", result="pass") == 2
    assert sample(r, "mailsec_auth_results_total", method="dkim", result="policy") == 1
    assert sample(r, "mailsec_auth_results_total", method="spf", result="fail") == 1
    assert sample(r, "mailsec_auth_results_total", method="dmarc", result="fail") == 1
    assert sample(r, "mailsec_dmarc_policy_total", published="reject", applied="none") == 1
    assert sample(r, "mailsec_dkim_signatures_total", algorithm="rsa-sha1", key_bits="1024",
                  result="policy") == 1
    assert sample(r, "mailsec_dkim_signatures_total", algorithm="ed25519-sha256",
                  key_bits="256", result="pass") == 1
    assert sample(r, "mailsec_tls_messages_total", version="TLSv1.3") == 1
    assert sample(r, "mailsec_forged_authres_removed_total") == 2
    assert sample(r, "mailsec_check_errors_total", check="dkim") == 1
    assert sample(r, "mailsec_message_duration_seconds_count") == 1
    assert sample(r, "mailsec_message_duration_seconds_bucket", le="0.005") == 1
    assert sample(r, "mailsec_message_duration_seconds_bucket", le="0.001") == 0
    assert sample(r, "mailsec_check_duration_seconds_bucket", check="spf", le="0.0005") == 1


def test_no_label_value_comes_from_the_message() -> None:
    metrics = Metrics()
    verdict = Verdict(Action.REJECT, Reason.DMARC_POLICY, applied_disposition="reject")
    metrics.observe_message(analysis(), verdict, 0, 0.001)
    metrics.observe_dns("TYPE65534", DnsOutcome.TIMEOUT, 1.5)
    text = generate_latest(metrics.registry).decode()
    for leaked in ("bank.example", "evil.example", "x@", "TYPE65534", "TLS_AES"):
        assert leaked not in text
    assert 'mailsec_dns_queries_total{outcome="timeout",type="other"} 1.0' in text


def test_every_combination_exists_before_the_first_message() -> None:
    text = generate_latest(Metrics().registry).decode()
    assert 'mailsec_messages_total{reason="dns_temperror",verdict="tempfail"} 0.0' in text
    assert 'mailsec_dmarc_policy_total{applied="quarantine",published="reject"} 0.0' in text
    assert "mailsec_build_info{" in text


def test_histograms_resolve_sub_millisecond_work() -> None:
    buckets = [float(b) for b in Metrics().message_seconds._upper_bounds]
    assert sum(1 for b in buckets if b < 0.001) >= 3


def test_names_follow_prometheus_conventions() -> None:
    # the posture gauges' domain label takes only [audit] domains (posture.py filters the
    # result file by them): bounded by the configuration, never a sender's domain
    bounded_by_config = {name for name, _, _ in POSTURE_FAMILIES}
    for doc in describe():
        assert doc.name.startswith("mailsec_")
        if doc.kind == "counter":
            assert doc.name.endswith("_total")
        if doc.kind == "histogram":
            assert doc.name.endswith("_seconds")
        allowed = {"domain"} if doc.name in bounded_by_config else set()
        assert not ({"domain", "ip", "address", "queue_id", "client"} - allowed) & set(doc.labels)


def test_metrics_doc_matches_the_code() -> None:
    assert render_markdown() in (REPO / "docs" / "METRICS.md").read_text(), (
        "docs/METRICS.md is stale: run scripts/gen-docs.sh")


def test_impossible_verdict_reason_pairs_are_not_exported() -> None:
    text = generate_latest(Metrics().registry).decode()
    assert 'mailsec_messages_total{reason="spf_fail",verdict="reject"} 0.0' in text
    assert 'mailsec_messages_total{reason="spf_fail",verdict="accept"} 0.0' in text  # dry run
    for impossible in ('reason="dmarc_pass",verdict="reject"',
                       'reason="authenticated",verdict="tempfail"',
                       'reason="spf_fail",verdict="quarantine"'):
        assert f"mailsec_messages_total{{{impossible}}}" not in text
    assert 'mailsec_dry_run_verdicts_total{reason="dmarc_pass"' not in text
    assert 'mailsec_dry_run_verdicts_total{reason="dmarc_policy",verdict="reject"}' in text


def test_the_docs_list_every_reason_and_the_supervisors_metrics() -> None:
    table = render_markdown()
    for reason in Reason:
        assert f"| {reason.value} |" in table
    reason_row = next(line for line in table.splitlines() if line.startswith("| `reason` |"))
    assert all(reason.value in reason_row for reason in Reason)
    assert "`mailsec_workers`" in table and "`mailsec_worker_restarts_total`" in table


def exposition(messages: float, open_now: float, seconds_sum: float = 0.5) -> str:
    """A worker's push: one counter, one gauge, one histogram and the build info."""
    return (
        "# HELP mailsec_messages_total Messages.\n# TYPE mailsec_messages_total counter\n"
        f'mailsec_messages_total{{reason="dmarc_pass",verdict="accept"}} {messages}\n'
        "# HELP mailsec_connections_open Open.\n# TYPE mailsec_connections_open gauge\n"
        f"mailsec_connections_open {open_now}\n"
        "# HELP mailsec_message_duration_seconds T.\n"
        "# TYPE mailsec_message_duration_seconds histogram\n"
        f'mailsec_message_duration_seconds_bucket{{le="+Inf"}} {messages}\n'
        f"mailsec_message_duration_seconds_count {messages}\n"
        f"mailsec_message_duration_seconds_sum {seconds_sum}\n"
        "# HELP mailsec_build_info B.\n# TYPE mailsec_build_info gauge\n"
        'mailsec_build_info{python="3.11",version="1"} 1.0\n')


def values(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if not line.startswith("#")}


def test_an_ended_workers_counters_stay_and_its_gauges_go() -> None:
    totals = WorkerTotals()
    both = values(totals.render([exposition(5, 2), exposition(3, 1)]))
    assert both['mailsec_messages_total{reason="dmarc_pass",verdict="accept"}'] == 8
    assert both["mailsec_connections_open"] == 3
    assert both["mailsec_build_info{python=\"3.11\",version=\"1\"}"] == 1
    totals.retire(exposition(5, 2))  # the first worker died; this was its last push
    after = values(totals.render([exposition(3, 1)]))
    assert after['mailsec_messages_total{reason="dmarc_pass",verdict="accept"}'] == 8
    assert after['mailsec_message_duration_seconds_bucket{le="+Inf"}'] == 8
    assert after["mailsec_message_duration_seconds_count"] == 8
    assert after["mailsec_connections_open"] == 1  # its open connections are gone with it
    assert after["mailsec_build_info{python=\"3.11\",version=\"1\"}"] == 1
    totals.retire(exposition(3, 1))  # no worker left: counters stay, the gauge reads 0
    none = values(totals.render([]))
    assert none['mailsec_messages_total{reason="dmarc_pass",verdict="accept"}'] == 8
    assert none["mailsec_connections_open"] == 0


def test_a_served_counter_is_never_served_lower() -> None:
    """Float sums depend on the order of addition: (0.1 + 0.2) + 0.6 is 0.9, but once the
    third worker ended its share is added first, (0.6 + 0.1) + 0.2 is 0.8999999999999999."""
    totals = WorkerTotals()
    name = "mailsec_message_duration_seconds_sum"
    first = values(totals.render([exposition(1, 0, 0.1), exposition(1, 0, 0.2),
                                  exposition(1, 0, 0.6)]))
    assert first[name] == 0.9
    totals.retire(exposition(1, 0, 0.6))
    second = values(totals.render([exposition(1, 0, 0.1), exposition(1, 0, 0.2)]))
    assert second[name] == 0.9
    third = values(totals.render([exposition(2, 0, 0.15), exposition(1, 0, 0.2)]))
    assert third[name] > 0.9
