"""The mailsec-milter reports dashboard, as code: who is rejected, and from where, read from the
DMARC aggregate-report store in PostgreSQL (Grafana's PostgreSQL data source).

    .venv/bin/python monitoring/reports_dashboard.py          # writes grafana/mailsec-reports.json
    .venv/bin/python monitoring/reports_dashboard.py --check  # exit 1: the JSON is stale
    .venv/bin/python monitoring/reports_dashboard.py --stdout # print it

Prometheus carries no domain or address labels (unbounded cardinality), so "which domains are
we rejecting, and from where?" is answered from the store's ``report_rows`` table
(mailsec_milter/reports/store.py): one row per RFC 9990 record tuple and UTC day with a message
count. Its ``day`` is TEXT 'YYYY-MM-DD', so the time range selects whole UTC days: every query
keeps ``day::date BETWEEN`` the UTC dates of ``$__timeFrom()`` and ``$__timeTo()`` (a day that
has begun is shown whole). Source networks are IPv4 /24 and IPv6 /56, computed in SQL. Counts
are whole messages per day or per range: a small site's numbers stay readable.

Every panel uses the data source uid ``mailsec-reports`` (provisioned by
monitoring/grafana/provisioning/reports-datasource.yml and docker/grafana/) and the ``domain``
variable (author domains, multi-value, ``= ANY (ARRAY[$domain]::text[])``).
tests/monitoring/test_reports_dashboard.py runs every query, Grafana's macros substituted as
Grafana does, against a real PostgreSQL.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard as dashboard_builder
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

OUTPUT = Path(__file__).resolve().parent / "grafana" / "mailsec-reports.json"
UID = "mailsec-reports"
TITLE = "mailsec-milter: DMARC reports (who, from where)"
DATASOURCE_TYPE = "grafana-postgresql-datasource"  # Grafana's core PostgreSQL plugin (10.x+)
DATASOURCE_UID = "mailsec-reports"
DATASOURCE = model.DataSourceRef(type_val=DATASOURCE_TYPE, uid=DATASOURCE_UID)
TOP_N = 20
MESSAGES = "short"

# The selected time range as whole UTC days (day is TEXT 'YYYY-MM-DD', a UTC date).
DAYS = ("day::date BETWEEN ($__timeFrom()::timestamptz AT TIME ZONE 'UTC')::date "
        "AND ($__timeTo()::timestamptz AT TIME ZONE 'UTC')::date")
# $domain is a multi-value variable: Grafana writes its values quoted and comma-separated. An
# array, not IN ($domain): with no values yet (an empty store) ARRAY[]::text[] matches nothing,
# where IN () would be a syntax error on every panel.
DOMAINS = "header_from = ANY (ARRAY[$domain]::text[])"
WHERE = f"WHERE {DAYS}\n  AND {DOMAINS}"
# The sender's network: IPv4 /24, IPv6 /56 (one site's allocation), as text '192.0.2.0/24'.
NETWORK = ("network(set_masklen(inet(source_ip), "
           "CASE WHEN family(inet(source_ip)) = 4 THEN 24 ELSE 56 END))::text")
DAY_TIME = "(day::date)::timestamp AT TIME ZONE 'UTC'"  # midnight UTC of the day
REFUSED = "disposition IN ('reject', 'quarantine')"
DKIM_UNALIGNED = "dmarc_dkim = 'fail'"
SPF_UNALIGNED = "dmarc_spf = 'fail'"
FORGED = f"{DKIM_UNALIGNED} AND {SPF_UNALIGNED}"  # DMARC fail: neither aligned


def messages_where(condition: str) -> str:
    """Messages of the group that meet ``condition``; 0, not NULL (an empty cell reads as
    "unknown", 0 as "none")."""
    return f"COALESCE(SUM(messages) FILTER (WHERE {condition}), 0)"


def count_of(disposition: str) -> str:
    return messages_where(f"disposition = '{disposition}'")


@dataclass
class SqlQuery(cogvariants.Dataquery):
    """A query of Grafana's SQL data sources (the SDK has no PostgreSQL query model): raw SQL in
    code mode, answered as a time series (columns time, metric, value) or a table."""

    ref_id: str
    raw_sql: str
    format: str = "table"  # "time_series" or "table"
    datasource: model.DataSourceRef = field(default_factory=lambda: DATASOURCE)

    def to_json(self) -> dict[str, object]:
        return {"refId": self.ref_id, "datasource": self.datasource, "rawSql": self.raw_sql,
                "format": self.format, "rawQuery": True, "editorMode": "code"}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SqlQuery:
        """Strict: a key this model does not know is an error (the round-trip test uses it)."""
        known = {"refId", "datasource", "rawSql", "format", "rawQuery", "editorMode"}
        unknown = set(data) - known
        if unknown or data.get("rawQuery") is not True or data.get("editorMode") != "code":
            raise ValueError(f"not a raw SQL query in code mode: {sorted(unknown)} {data}")
        source = data["datasource"]
        return cls(ref_id=data["refId"], raw_sql=data["rawSql"], format=data["format"],
                   datasource=model.DataSourceRef(type_val=source.get("type"),
                                                  uid=source.get("uid")))


class Sql(cogbuilder.Builder[cogvariants.Dataquery]):
    def __init__(self, raw_sql: str, *, ref: str = "A", time_series: bool = False) -> None:
        self._query = SqlQuery(ref_id=ref, raw_sql=raw_sql,
                               format="time_series" if time_series else "table")

    def build(self) -> SqlQuery:
        return self._query


class Layout:
    """Hands out panel ids: unique, stable, in reading order."""

    def __init__(self) -> None:
        self.next_id = 1

    def take(self) -> int:
        value = self.next_id
        self.next_id += 1
        return value


def per_day(layout: Layout, title: str, description: str, sql: str, *,
            width: int = 12) -> timeseries.Panel:
    """Messages per UTC day as stacked bars (one bar per day: the store has nothing finer)."""
    return (timeseries.Panel().id(layout.take()).title(title).description(description)
            .datasource(DATASOURCE).targets([Sql(sql, time_series=True)])
            .unit(MESSAGES).decimals(0).min(0).span(width).height(9)
            .draw_style(common.GraphDrawStyle.BARS).fill_opacity(80).line_width(1)
            .show_points(common.VisibilityMode.NEVER)
            .stacking(common_builder.StackingConfig().mode(common.StackingMode.NORMAL))
            .legend(common_builder.VizLegendOptions()
                    .display_mode(common.LegendDisplayMode.TABLE)
                    .placement(common.LegendPlacement.RIGHT).show_legend(True)
                    .calcs(["sum"]))
            .tooltip(common_builder.VizTooltipOptions()
                     .mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)))


def top_table(layout: Layout, title: str, description: str, sql: str, *,
              width: int = 12) -> table.Panel:
    """A top-N table: the query sorts and limits, the table keeps its order."""
    return (table.Panel().id(layout.take()).title(title).description(description)
            .datasource(DATASOURCE).targets([Sql(sql)])
            .unit(MESSAGES).decimals(0).span(width).height(10)
            .show_header(True)
            .cell_options(common.TableAutoCellOptions()))


def total(layout: Layout, title: str, description: str, sql: str, *,
          unit: str = MESSAGES) -> stat.Panel:
    """One number for the selected days."""
    panel = (stat.Panel().id(layout.take()).title(title).description(description)
             .datasource(DATASOURCE).targets([Sql(sql)]).unit(unit)
             .span(6).height(4)
             .graph_mode(common.BigValueGraphMode.NONE)
             .color_mode(common.BigValueColorMode.VALUE)
             .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]))
             .thresholds(dashboard_builder.ThresholdsConfig()
                         .mode(model.ThresholdsMode.ABSOLUTE)
                         .steps([model.Threshold(value=None, color="blue")])))
    return panel.decimals(0) if unit == MESSAGES else panel


def row(layout: Layout, title: str) -> dashboard_builder.Row:
    return dashboard_builder.Row(title).id(layout.take())


# -- the queries (module constants: the tests run each one) ------------------------------------

TOTAL_SQL = f"SELECT COALESCE(SUM(messages), 0) AS messages\nFROM report_rows\n{WHERE}"
SHARE_SQL = ("SELECT COALESCE(SUM(messages) FILTER (WHERE {cond})::float8 "
             "/ NULLIF(SUM(messages), 0), 0) AS share\nFROM report_rows\n" + WHERE)
REJECTED_SHARE_SQL = SHARE_SQL.format(cond="disposition = 'reject'")
QUARANTINED_SHARE_SQL = SHARE_SQL.format(cond="disposition = 'quarantine'")
FORGED_SHARE_SQL = SHARE_SQL.format(cond=FORGED)

BY_DISPOSITION_SQL = (
    f"SELECT {DAY_TIME} AS time, disposition AS metric, SUM(messages) AS value\n"
    f"FROM report_rows\n{WHERE}\nGROUP BY 1, 2\nORDER BY 1, 2")
REFUSED_BY_DOMAIN_SQL = (
    f"SELECT {DAY_TIME} AS time, header_from || ' ' || disposition AS metric, "
    f"SUM(messages) AS value\nFROM report_rows\n{WHERE}\n  AND {REFUSED}\n"
    f"GROUP BY 1, 2\nORDER BY 1, 2")
REFUSED_BY_NETWORK_SQL = (
    f"SELECT {DAY_TIME} AS time, {NETWORK} AS metric, SUM(messages) AS value\n"
    f"FROM report_rows\n{WHERE}\n  AND {REFUSED}\nGROUP BY 1, 2\nORDER BY 1, 2")
BY_DOMAIN_SQL = (
    f"SELECT header_from AS \"author domain\", {count_of('reject')} AS reject,\n"
    f"  {count_of('quarantine')} AS quarantine, {count_of('pass')} AS pass,\n"
    f"  {count_of('none')} AS \"none\", SUM(messages) AS total\n"
    f"FROM report_rows\n{WHERE}\nGROUP BY header_from\n"
    f"ORDER BY {messages_where(REFUSED)} DESC, total DESC, header_from\nLIMIT {TOP_N}")
BY_NETWORK_SQL = (
    f"SELECT {NETWORK} AS network, {count_of('reject')} AS reject,\n"
    f"  {count_of('quarantine')} AS quarantine, {count_of('pass')} AS pass,\n"
    f"  {count_of('none')} AS \"none\", SUM(messages) AS total,\n"
    f"  COUNT(DISTINCT header_from) AS domains\n"
    f"FROM report_rows\n{WHERE}\nGROUP BY 1\n"
    f"ORDER BY {messages_where(REFUSED)} DESC, total DESC, network\nLIMIT {TOP_N}")
FORGED_DOMAINS_SQL = (
    f"SELECT header_from AS \"author domain\",\n"
    f"  {messages_where(FORGED)} AS forged,\n"
    f"  COUNT(DISTINCT {NETWORK}) FILTER (WHERE {FORGED}) AS networks,\n"
    f"  SUM(messages) AS total\n"
    f"FROM report_rows\n{WHERE}\nGROUP BY header_from\n"
    f"HAVING SUM(messages) FILTER (WHERE {FORGED}) > 0\n"
    f"ORDER BY forged DESC, header_from\nLIMIT {TOP_N}")
MISALIGNED_SENDERS_SQL = (
    f"SELECT {NETWORK} AS network, header_from AS \"author domain\",\n"
    f"  string_agg(DISTINCT envelope_from, ' ') AS \"envelope from\",\n"
    f"  {messages_where(FORGED)} AS \"dmarc fail\",\n"
    f"  {messages_where(DKIM_UNALIGNED)} AS \"dkim unaligned\",\n"
    f"  {messages_where(SPF_UNALIGNED)} AS \"spf unaligned\",\n"
    f"  {messages_where(REFUSED)} AS refused\n"
    f"FROM report_rows\n{WHERE}\n  AND ({DKIM_UNALIGNED} OR {SPF_UNALIGNED})\n"
    f"GROUP BY 1, 2\n"
    f"ORDER BY \"dmarc fail\" DESC, SUM(messages) DESC, network, "
    f"\"author domain\"\nLIMIT {TOP_N}")
DOMAIN_VARIABLE_SQL = (f"SELECT DISTINCT header_from FROM report_rows\nWHERE {DAYS}\n"
                       f"ORDER BY 1")


def build() -> model.Dashboard:
    L = Layout()  # noqa: N806 (short on purpose: it is on every line)
    b = (
        dashboard_builder.Dashboard(TITLE)
        .uid(UID)
        .description("DMARC-evaluated mail by author domain and source network, from the "
                     "report store ([reports] store, PostgreSQL). Per UTC day. Generated by "
                     "monitoring/reports_dashboard.py: edit that, not this JSON.")
        .tags(["mailsec-milter", "mail", "dmarc"])
        .editable()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .refresh("1h")
        .time("now-7d", "now")
        .timezone("utc")
        .timepicker(dashboard_builder.TimePicker().refresh_intervals(["15m", "1h", "6h"]))
        .with_variable(
            dashboard_builder.QueryVariable("domain")
            .label("Author domain")
            .description("Author (RFC5322.From) domains with mail in the selected days.")
            .query(DOMAIN_VARIABLE_SQL)
            .datasource(DATASOURCE)
            .current(model.VariableOption(selected=True, text="All", value="$__all"))
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True))
    )
    b = (
        b.with_row(row(L, "Overview"))
        .with_panel(total(L, "Messages", "DMARC-evaluated messages of the selected days "
                          "(one per author domain with a DMARC record).", TOTAL_SQL))
        .with_panel(total(L, "Rejected", "Share of them rejected (disposition reject).",
                          REJECTED_SHARE_SQL, unit="percentunit"))
        .with_panel(total(L, "Quarantined", "Share of them quarantined (held or tagged).",
                          QUARANTINED_SHARE_SQL, unit="percentunit"))
        .with_panel(total(L, "DMARC fail", "Share that failed DMARC: neither DKIM nor SPF "
                          "aligned with the author domain (forged, or a forwarder or mailing "
                          "list that broke it).", FORGED_SHARE_SQL, unit="percentunit"))
    )
    b = (
        b.with_row(row(L, "Over time"))
        .with_panel(per_day(L, "Messages by disposition", "Messages per UTC day by what was "
                            "applied: reject, quarantine, pass (DMARC pass under an enforcing "
                            "policy), none (p=none, or not enforced).",
                            BY_DISPOSITION_SQL, width=24))
        .with_panel(per_day(L, "Rejected and quarantined by author domain",
                            "Refused messages per UTC day, by author domain and disposition.",
                            REFUSED_BY_DOMAIN_SQL))
        .with_panel(per_day(L, "Rejected and quarantined by source network",
                            "Refused messages per UTC day, by the sending network "
                            "(IPv4 /24, IPv6 /56).", REFUSED_BY_NETWORK_SQL))
    )
    b = (
        b.with_row(row(L, "Who and from where"))
        .with_panel(top_table(L, "By author domain",
                              f"The {TOP_N} author domains with the most refused messages "
                              "in the selected days: reject, quarantine, pass, none.",
                              BY_DOMAIN_SQL))
        .with_panel(top_table(L, "By source network",
                              f"The {TOP_N} sending networks (IPv4 /24, IPv6 /56) with the "
                              "most refused messages, and how many author domains they used.",
                              BY_NETWORK_SQL))
        .with_panel(top_table(L, "Top forged domains",
                              "Author domains of mail that failed DMARC (neither DKIM nor SPF "
                              "aligned), most first, with the number of networks it came from "
                              "and all of the domain's mail.", FORGED_DOMAINS_SQL))
        .with_panel(top_table(L, "Top senders failing alignment",
                              "Source network and author domain of mail with DKIM or SPF "
                              "unaligned, DMARC failures first: a forger, or a legitimate "
                              "sender (ESP, forwarder, list) the domain has not set up.",
                              MISALIGNED_SENDERS_SQL))
    )
    return b.build()


def panel_queries() -> dict[str, str]:
    """Every panel's SQL by panel title (the tests run them)."""
    return {
        "Messages": TOTAL_SQL, "Rejected": REJECTED_SHARE_SQL,
        "Quarantined": QUARANTINED_SHARE_SQL, "DMARC fail": FORGED_SHARE_SQL,
        "Messages by disposition": BY_DISPOSITION_SQL,
        "Rejected and quarantined by author domain": REFUSED_BY_DOMAIN_SQL,
        "Rejected and quarantined by source network": REFUSED_BY_NETWORK_SQL,
        "By author domain": BY_DOMAIN_SQL, "By source network": BY_NETWORK_SQL,
        "Top forged domains": FORGED_DOMAINS_SQL,
        "Top senders failing alignment": MISALIGNED_SENDERS_SQL,
    }


def render() -> str:
    board = build()
    return JSONEncoder(sort_keys=True, indent=2, ensure_ascii=False).encode(board) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
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
            print(f"{OUTPUT} is stale: run .venv/bin/python monitoring/reports_dashboard.py",
                  file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
