"""The mailsec-milter Grafana dashboard, as code (Grafana's grafana-foundation-sdk builders).

    .venv/bin/python monitoring/dashboard.py           # writes grafana/mailsec-milter.json
    .venv/bin/python monitoring/dashboard.py --check   # exit 1 if the committed JSON is stale
    .venv/bin/python monitoring/dashboard.py --stdout  # print it

Every query goes through the ``datasource`` variable (type datasource, Prometheus plugin) and is
scoped by the ``job`` and ``instance`` variables. Graphs are range queries over
``$__rate_interval``; stats and the top-N list are instant queries over ``$__range`` (the whole
selected time range: a ``rate`` over a minute in a stat would show the last minute only, and a
``topk`` in a range query picks its N per step, so the graph shows more than N series). Event
rates are per minute, counts whole messages, ratios percent: a small site's 0.01 msg/s is
unreadable. Metric and label names are the ones in docs/METRICS.md; tests/monitoring evaluates
every expression here against a real Prometheus scraping the real daemon.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, prometheus, stat, timeseries
from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard as dashboard_builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

OUTPUT = Path(__file__).resolve().parent / "grafana" / "mailsec-milter.json"
UID = "mailsec-milter"
TITLE = "mailsec-milter: mail authentication"
DEFAULT_JOB = "mailsec-milter"

DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
SELECTOR = 'job=~"$job", instance=~"$instance"'
RATE_INTERVAL = "$__rate_interval"
RANGE = "$__range"  # the dashboard's selected time range, for instant queries
MSG_RATE = "suffix: msg/min"
MESSAGES = "short"  # a count of messages, shown without decimals
QUERY_RATE = "suffix: queries/min"
NOT_ACCEPT = 'verdict!="accept"'
REJECT = 'verdict="reject"'
PASS = ', result="pass"'


def series(metric: str, matchers: str = "") -> str:
    """``metric{job=~"$job", instance=~"$instance"[, matchers]}``."""
    extra = f", {matchers}" if matchers else ""
    return f"{metric}{{{SELECTOR}{extra}}}"


def rate(metric: str, matchers: str = "") -> str:
    return f"rate({series(metric, matchers)}[{RATE_INTERVAL}])"


def per_minute(expr: str) -> str:
    """A per-second rate as events per minute (small sites see 0.3/min, not 0.005/s)."""
    return f"60 * {expr}"


def increase(metric: str, matchers: str = "") -> str:
    """Growth of a counter over the whole selected time range (for instant queries)."""
    return f"increase({series(metric, matchers)}[{RANGE}])"


def quantile(q: float, bucket_metric: str, by: str = "") -> str:
    labels = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) ({rate(bucket_metric)}))"


def share_of(metric: str, label: str, matchers: str = "") -> str:
    """Each ``label`` value's share of the metric's total rate (0..1)."""
    return (f"sum by ({label}) ({rate(metric, matchers)})\n"
            f"  / ignoring ({label}) group_left\n"
            f"sum ({rate(metric)})")


def verdict_ratio(verdict: str) -> str:
    """The verdict's share of all mail over the selected time range."""
    matcher = f"verdict={json.dumps(verdict)}"
    return (f"sum ({increase('mailsec_messages_total', matcher)})\n"
            f"  / sum ({increase('mailsec_messages_total')})")


def query(expr: str, legend: str = "__auto", ref: str = "A", *,
          instant: bool = False) -> prometheus.Dataquery:
    built = (prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref)
             .datasource(DATASOURCE))
    return built.instant() if instant else built.range()


def queries(*pairs: tuple[str, str]) -> list[prometheus.Dataquery]:
    """Range queries (graphs)."""
    return [query(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(pairs)]


def instant_queries(*pairs: tuple[str, str]) -> list[prometheus.Dataquery]:
    """Instant queries at the end of the range (stats, top-N lists)."""
    return [query(expr, legend, chr(ord("A") + i), instant=True)
            for i, (expr, legend) in enumerate(pairs)]


class Layout:
    """Hands out panel ids: unique, stable, in reading order."""

    def __init__(self) -> None:
        self.next_id = 1

    def take(self) -> int:
        value = self.next_id
        self.next_id += 1
        return value


def ts(layout: Layout, title: str, description: str, targets: Iterable[prometheus.Dataquery],
       *, unit: str = MSG_RATE, width: int = 12, height: int = 8, stacked: bool = False,
       max_value: float | None = None) -> timeseries.Panel:
    panel = (timeseries.Panel().id(layout.take()).title(title).description(description)
             .datasource(DATASOURCE).targets(list(targets)).unit(unit).min(0)
             .span(width).height(height).line_width(1).fill_opacity(10)
             .show_points(common.VisibilityMode.NEVER)
             .legend(common_builder.VizLegendOptions()
                     .display_mode(common.LegendDisplayMode.TABLE)
                     .placement(common.LegendPlacement.BOTTOM).show_legend(True)
                     .calcs(["mean", "max", "lastNotNull"]))
             .tooltip(common_builder.VizTooltipOptions()
                      .mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)))
    if stacked:
        panel = panel.stacking(common_builder.StackingConfig().mode(common.StackingMode.NORMAL))
    if max_value is not None:
        panel = panel.max(max_value)
    return panel


def big(layout: Layout, title: str, description: str, targets: Iterable[prometheus.Dataquery],
        *, unit: str, thresholds: list[tuple[float | None, str]] | None = None,
        width: int = 4, height: int = 4) -> stat.Panel:
    """A stat over the selected time range: one number from an instant query (no sparkline)."""
    steps = [model.Threshold(value=v, color=c)
             for v, c in (thresholds or [(None, "green")])]
    panel = (stat.Panel().id(layout.take()).title(title).description(description)
             .datasource(DATASOURCE).targets(list(targets)).unit(unit)
             .span(width).height(height)
             .graph_mode(common.BigValueGraphMode.NONE)
             .color_mode(common.BigValueColorMode.VALUE)
             .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]))
             .thresholds(dashboard_builder.ThresholdsConfig()
                         .mode(model.ThresholdsMode.ABSOLUTE).steps(steps)))
    if unit == MESSAGES:
        panel = panel.decimals(0)  # increase() extrapolates: 41.7 messages reads as 42
    return panel


def top(layout: Layout, title: str, description: str, targets: Iterable[prometheus.Dataquery],
        *, width: int = 12, height: int = 8) -> bargauge.Panel:
    """A top-N list as horizontal bars: one instant query, so N bars, most first."""
    return (bargauge.Panel().id(layout.take()).title(title).description(description)
            .datasource(DATASOURCE).targets(list(targets)).unit(MESSAGES).decimals(0).min(0)
            .span(width).height(height)
            .orientation(common.VizOrientation.HORIZONTAL)
            .display_mode(common.BarGaugeDisplayMode.BASIC)
            .value_mode(common.BarGaugeValueMode.COLOR)
            .show_unfilled(True)
            .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]))
            .thresholds(dashboard_builder.ThresholdsConfig()
                        .mode(model.ThresholdsMode.ABSOLUTE)
                        .steps([model.Threshold(value=None, color="orange")])))


def row(layout: Layout, title: str) -> dashboard_builder.Row:
    return dashboard_builder.Row(title).id(layout.take())


def build() -> model.Dashboard:
    L = Layout()  # noqa: N806 (short on purpose: it is on every line)
    ratio_thresholds: list[tuple[float | None, str]] = [(None, "green"), (0.1, "orange"),
                                                        (0.3, "red")]
    tempfail_thresholds: list[tuple[float | None, str]] = [(None, "green"), (0.02, "orange"),
                                                           (0.05, "red")]
    b = (
        dashboard_builder.Dashboard(TITLE)
        .uid(UID)
        .description("Verdicts, reasons, SPF/DKIM/DMARC results, TLS, DNS and processing time "
                     "of mailsec-milter. Generated by monitoring/dashboard.py: edit that, not "
                     "this JSON.")
        .tags(["mailsec-milter", "mail", "dmarc"])
        .editable()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .refresh("1m")
        .time("now-6h", "now")
        .timezone("browser")
        .timepicker(dashboard_builder.TimePicker().refresh_intervals(
            ["30s", "1m", "5m", "15m", "30m", "1h"]))
        .with_variable(
            dashboard_builder.DatasourceVariable("datasource")
            .label("Data source")
            .type("prometheus"))
        .with_variable(
            dashboard_builder.QueryVariable("job")
            .label("Job")
            .query("label_values(mailsec_build_info, job)")
            .datasource(DATASOURCE)
            .current(model.VariableOption(selected=True, text=DEFAULT_JOB, value=DEFAULT_JOB))
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_ASC))
        .with_variable(
            dashboard_builder.QueryVariable("instance")
            .label("Instance")
            .query('label_values(mailsec_build_info{job=~"$job"}, instance)')
            .datasource(DATASOURCE)
            .current(model.VariableOption(selected=True, text="All", value="$__all"))
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*"))
    )

    # -- overview --------------------------------------------------------------------------
    b = (
        b.with_row(row(L, "Overview"))
        .with_panel(big(L, "Mail", "Messages decided in the selected time range (every "
                        "verdict).",
                        instant_queries((f'sum ({increase("mailsec_messages_total")})',
                                         "messages")),
                        unit=MESSAGES))
        .with_panel(big(L, "Rejected", "Share of the messages of the selected time range that "
                        "were rejected (5xx).",
                        instant_queries((verdict_ratio("reject"), "reject")),
                        unit="percentunit", thresholds=ratio_thresholds))
        .with_panel(big(L, "Quarantined", "Share of the messages of the selected time range "
                        "that were quarantined (hold or tag).",
                        instant_queries((verdict_ratio("quarantine"), "quarantine")),
                        unit="percentunit", thresholds=ratio_thresholds))
        .with_panel(big(L, "Tempfailed", "Share of the messages of the selected time range "
                        "deferred with 4xx: mostly DNS trouble (reason dns_temperror) or crashed "
                        "checks (internal_error).",
                        instant_queries((verdict_ratio("tempfail"), "tempfail")),
                        unit="percentunit", thresholds=tempfail_thresholds))
        .with_panel(big(L, "Dry run: would have rejected",
                        "Messages a dry-run instance accepted but would have rejected, in the "
                        "selected time range.",
                        instant_queries(
                            (f"sum ({increase('mailsec_dry_run_verdicts_total', REJECT)})",
                             "would reject")),
                        unit=MESSAGES))
        .with_panel(big(L, "Connections open (peak)", "Most MTA connections open at once in "
                        "the selected time range, as scraped (each instance's peak, summed).",
                        instant_queries((f"sum (max_over_time("
                                         f"{series('mailsec_connections_open')}[{RANGE}]))",
                                         "open")),
                        unit="short"))
    )

    # -- verdicts --------------------------------------------------------------------------
    b = (
        b.with_row(row(L, "Verdicts"))
        .with_panel(ts(L, "Messages by verdict", "Messages per minute: accept, quarantine, "
                       "reject and tempfail verdicts.",
                       queries((per_minute(f"sum by (verdict) "
                                           f'({rate("mailsec_messages_total")})'),
                                "{{verdict}}")), stacked=True))
        .with_panel(ts(L, "Reject, quarantine and tempfail ratio",
                       "Each non-accept verdict as a share of all mail.",
                       queries((share_of("mailsec_messages_total", "verdict",
                                         'verdict!="accept"'), "{{verdict}}")),
                       unit="percentunit"))
        .with_panel(top(L, "Top reasons (reject, quarantine, tempfail)",
                        "The ten verdict and reason pairs that refused, held or deferred the "
                        "most messages in the selected time range, most first.",
                        instant_queries((f"sort_desc(topk(10, sum by (verdict, reason) "
                                         f"({increase('mailsec_messages_total', NOT_ACCEPT)})))",
                                         "{{verdict}}: {{reason}}"))))
        .with_panel(ts(L, "Dry run: would-be verdicts",
                       "Verdicts a dry-run instance would have applied (it accepted the mail).",
                       queries((per_minute(
                           f"sum by (verdict, reason) "
                           f"({rate('mailsec_dry_run_verdicts_total', NOT_ACCEPT)})"),
                                "would {{verdict}}: {{reason}}"))))
    )

    # -- authentication --------------------------------------------------------------------
    methods = 'method=~"spf|dkim|dmarc"'
    b = (
        b.with_row(row(L, "Authentication"))
        .with_panel(ts(L, "SPF / DKIM / DMARC pass ratio",
                       "Share of results that are pass, per method (DKIM: per signature, "
                       "unsigned messages count as dkim=none).",
                       queries((f"sum by (method) "
                                f"({rate('mailsec_auth_results_total', methods + PASS)})\n"
                                f"  / sum by (method) "
                                f'({rate("mailsec_auth_results_total", methods)})',
                                "{{method}}")),
                       unit="percentunit", max_value=1))
        .with_panel(ts(L, "DMARC outcomes by published policy",
                       "DMARC-evaluated messages by the sender's published policy and the "
                       "disposition applied (not_applied: pass, p=none or temperror).",
                       queries((per_minute(f"sum by (published, applied) "
                                           f'({rate("mailsec_dmarc_policy_total")})'),
                                "p={{published}} → {{applied}}")), stacked=True))
        .with_panel(ts(L, "TLS share of inbound messages",
                       "Messages by the TLS version of the session they came over "
                       "(plaintext: no TLS).",
                       queries((share_of("mailsec_tls_messages_total", "version"),
                                "{{version}}")),
                       unit="percentunit", stacked=True, max_value=1))
        .with_panel(ts(L, "DKIM signatures by algorithm and key size",
                       "Verified DKIM signatures by algorithm, key size and result.",
                       queries((per_minute(f"sum by (algorithm, key_bits, result) "
                                           f'({rate("mailsec_dkim_signatures_total")})'),
                                "{{algorithm}} {{key_bits}} bits: {{result}}")),
                       unit="suffix: signatures/min"))
        .with_panel(ts(L, "Authentication results by method",
                       "Every result per method (spf, spf_helo, dkim, dmarc, tls).",
                       queries((per_minute(f"sum by (method, result) "
                                           f'({rate("mailsec_auth_results_total")})'),
                                "{{method}}={{result}}")), unit="suffix: results/min"))
        .with_panel(ts(L, "Forged Authentication-Results removed",
                       "Incoming Authentication-Results headers that claimed our authserv-id "
                       "and were deleted.",
                       queries((per_minute(
                           f'sum ({rate("mailsec_forged_authres_removed_total")})'),
                                "removed")), unit="suffix: headers/min"))
    )

    # -- DNS -------------------------------------------------------------------------------
    dns_bucket = "mailsec_dns_query_duration_seconds_bucket"
    failures = 'outcome=~"timeout|servfail"'
    b = (
        b.with_row(row(L, "DNS"))
        .with_panel(ts(L, "DNS latency", "Latency percentiles of queries that went to the "
                       "network (cache hits are not queries).",
                       queries((quantile(0.5, dns_bucket), "p50"),
                               (quantile(0.95, dns_bucket), "p95"),
                               (quantile(0.99, dns_bucket), "p99")),
                       unit="s", width=8))
        .with_panel(ts(L, "DNS queries by outcome", "answer, nxdomain, nodata, timeout, "
                       "servfail.",
                       queries((per_minute(
                           f'sum by (outcome) ({rate("mailsec_dns_queries_total")})'),
                                "{{outcome}}")), unit=QUERY_RATE, width=8, stacked=True))
        .with_panel(ts(L, "DNS timeouts and SERVFAIL",
                       "Failed queries by type; they become temperror and can tempfail mail. "
                       "B: their share of all queries (percent).",
                       queries((per_minute(f"sum by (type, outcome) "
                                           f'({rate("mailsec_dns_queries_total", failures)})'),
                                "{{type}} {{outcome}}"),
                               (f'sum ({rate("mailsec_dns_queries_total", failures)})\n'
                                f'  / sum ({rate("mailsec_dns_queries_total")})',
                                "failed share")),
                       unit=QUERY_RATE, width=8)
                    .override_by_query("B", [model.DynamicConfigValue(id_val="unit",
                                                                      value="percentunit")]))
    )

    # -- processing ------------------------------------------------------------------------
    message_bucket = "mailsec_message_duration_seconds_bucket"
    b = (
        b.with_row(row(L, "Processing"))
        .with_panel(ts(L, "End-of-message processing time",
                       "From the end of DATA to our reply: p50, p95, p99.",
                       queries((quantile(0.5, message_bucket), "p50"),
                               (quantile(0.95, message_bucket), "p95"),
                               (quantile(0.99, message_bucket), "p99")),
                       unit="s", width=8))
        .with_panel(ts(L, "Time per check (p99)",
                       "p99 of each check; SPF runs while the message is still being "
                       "transferred, so it can exceed the end-of-message time.",
                       queries((quantile(0.99, "mailsec_check_duration_seconds_bucket",
                                         "check"), "{{check}}")),
                       unit="s", width=8))
        .with_panel(ts(L, "Check errors", "Checks that crashed (their result became "
                       "temperror); each one is a bug worth a look in the log.",
                       queries((per_minute(
                           f'sum by (check) ({rate("mailsec_check_errors_total")})'),
                                "{{check}}")), unit="suffix: errors/min", width=8))
        .with_panel(ts(L, "Connections open by instance", "MTA connections open, per instance.",
                       queries((f"sum by (instance) ({series('mailsec_connections_open')})",
                                "{{instance}}")), unit="short", width=8))
        .with_panel(ts(L, "New connections", "MTA connections accepted per minute.",
                       queries((per_minute(f"sum by (instance) "
                                           f'({rate("mailsec_connections_total")})'),
                                "{{instance}}")), unit="suffix: connections/min", width=8))
        .with_panel(ts(L, "Scrape targets up", "1 when Prometheus scraped the instance, 0 when "
                       "it could not (see the MailsecMilterDown alert).",
                       queries((f"sum by (instance) ({series('up')})", "{{instance}}")),
                       unit="short", width=8))
        .with_panel(ts(L, "Running versions", "Instances per mailsec-milter and Python "
                       "version.",
                       queries((f"count by (version, python) "
                                f"({series('mailsec_build_info')})",
                                "{{version}} (Python {{python}})")), unit="short", width=24,
                       height=6))
    )
    # -- domain posture (the daily audit of [audit] domains, docs/AUDIT.md) ------------------
    b = (
        b.with_row(row(L, "Domain posture"))
        .with_panel(ts(L, "DMARC policy of own domains",
                       "Each of your [audit] domains on the DMARC ladder at the last daily "
                       "audit: 0 none, 1 quarantine, 2 reject (the baseline), -1 no policy.",
                       queries((f"max by (domain) ({series('mailsec_posture_dmarc_policy')})",
                                "{{domain}}")), unit="short", width=8))
        .with_panel(ts(L, "MTA-STS mode of own domains",
                       "0 none, 1 testing, 2 enforce, -1 no valid policy.",
                       queries((f"max by (domain) ({series('mailsec_posture_mta_sts_mode')})",
                                "{{domain}}")), unit="short", width=8))
        .with_panel(ts(L, "Own domains meeting the baseline",
                       "1 when the domain meets [audit] baseline (MailsecOwnDomainBelowBaseline "
                       "fires on 0); TLS-RPT and DANE published (1) or not (0).",
                       queries((f"min by (domain) ({series('mailsec_posture_baseline_met')})",
                                "{{domain}} baseline"),
                               (f"min by (domain) ({series('mailsec_posture_tls_rpt')})",
                                "{{domain}} TLS-RPT"),
                               (f"min by (domain) ({series('mailsec_posture_dane')})",
                                "{{domain}} DANE")), unit="short", width=8))
        .with_panel(ts(L, "Age of the last good audit",
                       "Time since the last daily audit without errors finished, per instance "
                       "(the MailsecPostureAuditStale alert fires after two days).",
                       queries((f"time() - max by (instance) "
                                f"({series('mailsec_posture_last_success_timestamp_seconds')})",
                                "{{instance}}")), unit="s", width=24, height=6))
    )
    # -- DMARC aggregate reports (docs/REPORTS.md; which domains: the reports dashboard) ------
    b = (
        b.with_row(row(L, "DMARC reports"))
        .with_panel(ts(L, "Report records written and dropped",
                       "Aggregate-report records written to the store, and dropped by reason "
                       "(mail is never affected; MailsecReportRecordsDropped fires on drops).",
                       queries((per_minute(f"sum ({rate('mailsec_report_records_total')})"),
                                "written"),
                               (per_minute(f"sum by (reason) "
                                           f"({rate('mailsec_report_records_dropped_total')})"),
                                "dropped {{reason}}")),
                       unit="suffix: records/min", width=8))
        .with_panel(ts(L, "Report queue and store writes",
                       "Records waiting for the store (summed over workers) and the p99 time of "
                       "one batch write.",
                       queries((f"sum by (instance) ({series('mailsec_report_queue_depth')})",
                                "queued {{instance}}"),
                               (quantile(0.99, "mailsec_report_store_write_seconds_bucket"),
                                "write p99 (s)")), unit="short", width=8))
        .with_panel(top(L, "Reports sent in the range",
                        "What the daily `reports send` did in the selected time range: reports "
                        "sent, given up (failed), deferred to a later run, and destinations "
                        "skipped by reason (docs/REPORTS.md).",
                        instant_queries(
                            (f"sum (increase({series('mailsec_reports_sent_total')}"
                             f"[$__range]))", "sent"),
                            (f"sum (increase({series('mailsec_reports_failed_total')}"
                             f"[$__range]))", "failed"),
                            (f"sum (increase({series('mailsec_reports_deferred_total')}"
                             f"[$__range]))", "deferred"),
                            (f"sum by (reason) (increase("
                             f"{series('mailsec_reports_skipped_total')}[$__range]))",
                             "skipped {{reason}}")), width=8))
    )
    return b.build()


def render() -> str:
    board = build()
    return JSONEncoder(sort_keys=True, indent=2, ensure_ascii=False).encode(board) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="fail if the JSON file is stale")
    mode.add_argument("--stdout", action="store_true", help="print instead of writing")
    args = parser.parse_args(argv)
    text = render()
    if args.stdout:
        sys.stdout.write(text)
        return 0
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is stale: run .venv/bin/python monitoring/dashboard.py",
                  file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
