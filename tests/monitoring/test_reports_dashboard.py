"""The reports dashboard (monitoring/reports_dashboard.py → grafana/mailsec-reports.json): valid
by construction, on the provisioned PostgreSQL data source, and every query right against a
REAL PostgreSQL holding known report rows.

(1) The committed JSON is the generator's output and round-trips through the SDK's typed models
(the SQL queries through the generator's strict model); (2) every panel and the variable use the
data source uid and type that the provisioning files declare; (3) each panel's SQL, rendered the
way Grafana renders it (tests/monitoring/grafana_sql.py: variables, then macros), runs on a
private PostgreSQL (tests/support/pgserver.py) set up by the compose stack's own
docker/postgres/init-reports.sql, written through ReportStore by the writer role and read by the
read-only grafana_reader role, and returns the numbers the rows imply.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from mailsec_milter.reports.record import PublishedPolicy, ReportRecord
from mailsec_milter.reports.store import ReportStore
from tests.monitoring import grafana_sql, tools
from tests.support.pgserver import PostgresServer, postgres_bin

REPORTS_JSON = tools.MONITORING / "grafana" / "mailsec-reports.json"
DOCKER = tools.REPO / "docker"
INIT_SQL = DOCKER / "postgres" / "init-reports.sql"
DOCKER_DATASOURCE = DOCKER / "grafana" / "reports-datasource.yml"
EXAMPLE_DATASOURCE = tools.MONITORING / "grafana" / "provisioning" / "reports-datasource.yml"

# The dashboard's range in the tests: 2 Nov 06:00 to 4 Nov 12:00 UTC, i.e. the UTC days 2, 3
# and 4 November (whole days: the store has nothing finer). Rows on 1 and 5 November are out.
RANGE_FROM = datetime(2026, 11, 2, 6, 0, tzinfo=UTC)
RANGE_TO = datetime(2026, 11, 4, 12, 0, tzinfo=UTC)
DAY1, DAY2, DAY3, DAY4, DAY5 = (date(2026, 11, d) for d in range(1, 6))


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mailsec_reports_dashboard",
                                                  tools.MONITORING / "reports_dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while decorating
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    return dict(json.loads(REPORTS_JSON.read_text(encoding="utf-8")))


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def sql_of(board: dict[str, Any], title: str) -> str:
    (panel,) = [p for p in panels(board) if p["title"] == title]
    (target,) = panel["targets"]
    return str(target["rawSql"])


# -- the JSON ---------------------------------------------------------------------------------

def test_committed_json_is_the_generated_output() -> None:
    assert REPORTS_JSON.read_text(encoding="utf-8") == generator().render(), (
        "monitoring/grafana/mailsec-reports.json is stale: "
        "run .venv/bin/python monitoring/reports_dashboard.py")


def test_generator_check_mode_agrees() -> None:
    result = subprocess.run([sys.executable, str(tools.MONITORING / "reports_dashboard.py"),
                             "--check"], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr


def test_round_trips_through_the_sdk_models(board: dict[str, Any]) -> None:
    from grafana_foundation_sdk.cog import runtime
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models import dashboard as model
    from grafana_foundation_sdk.models import stat as stat_model
    from grafana_foundation_sdk.models import table as table_model
    from grafana_foundation_sdk.models import timeseries as timeseries_model

    module = generator()
    register_default_plugins()
    runtime.register_dataquery_variant(runtime.DataqueryConfig(
        identifier=module.DATASOURCE_TYPE, from_json_hook=module.SqlQuery.from_json))
    parsed = model.Dashboard.from_json(board)
    assert json.loads(JSONEncoder(sort_keys=True).encode(parsed)) == board
    typed_options = {"stat": stat_model.Options, "timeseries": timeseries_model.Options,
                     "table": table_model.Options}
    queries = 0
    for panel in parsed.panels or []:
        if isinstance(panel, model.RowPanel):
            continue
        assert isinstance(panel.options, typed_options[str(panel.type_val)]), panel.title
        for target in panel.targets or []:
            assert isinstance(target, module.SqlQuery), panel.title
            queries += 1
    assert queries == len(module.panel_queries())


def test_strict_query_model_rejects_a_foreign_key() -> None:
    module = generator()
    good = {"refId": "A", "datasource": {"type": module.DATASOURCE_TYPE, "uid": "x"},
            "rawSql": "SELECT 1", "format": "table", "rawQuery": True, "editorMode": "code"}
    assert module.SqlQuery.from_json(good).to_json()["rawSql"] == "SELECT 1"
    with pytest.raises(ValueError):
        module.SqlQuery.from_json({**good, "expr": "up"})
    with pytest.raises(ValueError):
        module.SqlQuery.from_json({**good, "editorMode": "builder"})


def test_panels_are_importable(board: dict[str, Any]) -> None:
    assert board["uid"] == "mailsec-reports" and board["schemaVersion"] >= 39
    all_panels = panels(board)
    ids = [p["id"] for p in all_panels]
    titles = [p["title"] for p in all_panels]
    assert len(ids) == len(set(ids)) and len(titles) == len(set(titles))
    cells: dict[tuple[int, int], str] = {}
    for panel in all_panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel.get("description"), panel["title"]
        (target,) = panel["targets"]
        assert target["rawQuery"] is True and target["editorMode"] == "code"
        expected = "time_series" if panel["type"] == "timeseries" else "table"
        assert target["format"] == expected, panel["title"]
        if expected == "time_series":  # Grafana's long format: time, metric, value, by time
            assert 'AS time, ' in target["rawSql"] and "AS metric, " in target["rawSql"]
            assert "AS value" in target["rawSql"]
            assert target["rawSql"].rstrip().endswith("ORDER BY 1, 2"), panel["title"]


def test_units_read_well_on_a_small_site(board: dict[str, Any]) -> None:
    """Whole messages (no decimals, no per-second rates) or percent; daily bars."""
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        defaults = panel["fieldConfig"]["defaults"]
        if defaults["unit"] == "short":
            assert defaults["decimals"] == 0, panel["title"]
        else:
            assert defaults["unit"] == "percentunit", panel["title"]
            assert "::float8 / NULLIF(SUM(messages), 0)" in sql_of(board, panel["title"])
        if panel["type"] == "timeseries":
            assert defaults["custom"]["drawStyle"] == "bars", panel["title"]


# -- the data source: one uid, provisioned -----------------------------------------------------

def _sources(path: Path) -> list[dict[str, Any]]:
    return list(yaml.safe_load(path.read_text())["datasources"])


def test_every_query_uses_the_provisioned_data_source(board: dict[str, Any]) -> None:
    module = generator()
    (docker_source,) = _sources(DOCKER_DATASOURCE)
    (example_source,) = _sources(EXAMPLE_DATASOURCE)
    provisioned = {"type": docker_source["type"], "uid": docker_source["uid"]}
    assert provisioned == {"type": example_source["type"], "uid": example_source["uid"]}
    assert provisioned == {"type": module.DATASOURCE_TYPE, "uid": module.DATASOURCE_UID}
    refs = [(p["title"], p["datasource"]) for p in panels(board) if p["type"] != "row"]
    refs += [(p["title"], t["datasource"]) for p in panels(board) for t in p.get("targets", [])]
    refs += [(v["name"], v["datasource"]) for v in board["templating"]["list"]]
    assert refs and all(ref == provisioned for _, ref in refs), refs
    for source in (docker_source, example_source):
        assert source["user"] == "grafana_reader"
        assert source["jsonData"]["database"] and source["secureJsonData"]["password"]


def test_the_domain_variable_is_multi_value_and_filters_every_panel(
        board: dict[str, Any]) -> None:
    (variable,) = board["templating"]["list"]
    assert (variable["name"], variable["type"]) == ("domain", "query")
    assert variable["multi"] and variable["includeAll"] and "allValue" not in variable
    assert variable["query"].startswith("SELECT DISTINCT header_from FROM report_rows")
    for title, sql in generator().panel_queries().items():
        assert sql_of(board, title) == sql
        assert "header_from = ANY (ARRAY[$domain]::text[])" in sql, title
        assert "day::date BETWEEN" in sql, title


# -- the queries, against a real PostgreSQL ------------------------------------------------------

def _policy(domain: str, p: str) -> PublishedPolicy:
    return PublishedPolicy(domain=domain, discovery_method="treewalk", p=p, sp=p, np=p,
                           adkim="r", aspf="r", testing="n")


def _record(day: date, author: str, source_ip: str, disposition: str, dkim: str, spf: str,
            envelope_from: str = "", p: str = "reject") -> ReportRecord:
    return ReportRecord(day=day, policy_domain=author, rua=f"mailto:dmarc@{author}",
                        published=_policy(author, p), source_ip=source_ip,
                        header_from=author, envelope_from=envelope_from or author,
                        disposition=disposition, dmarc_dkim=dkim, dmarc_spf=spf)


def known_rows() -> list[ReportRecord]:
    """One ReportRecord per message (the store sums equal ones)."""
    rows: list[ReportRecord] = []

    def add(count: int, *args: Any, **kwargs: Any) -> None:
        rows.extend([_record(*args, **kwargs)] * count)

    # example.com (p=reject): 10 passing from its own server, forgeries from one /24 and
    # one from elsewhere.
    add(10, DAY2, "example.com", "198.51.100.5", "pass", "pass", "pass")
    add(3, DAY3, "example.com", "192.0.2.10", "reject", "fail", "fail", "spam.test")
    add(2, DAY3, "example.com", "192.0.2.77", "reject", "fail", "fail", "spam.test")
    add(2, DAY2, "example.com", "203.0.113.50", "reject", "fail", "fail", "other.test")
    # bank.test: forgeries from one IPv6 /56 (two addresses) under p=reject, and quarantined
    # ones from another network (the domain published p=quarantine then).
    add(3, DAY4, "bank.test", "2001:db8:1:ab00::1", "reject", "fail", "fail", "x.test")
    add(1, DAY4, "bank.test", "2001:db8:1:abff::2", "reject", "fail", "fail", "x.test")
    add(2, DAY3, "bank.test", "203.0.113.9", "quarantine", "fail", "fail", "y.test",
        p="quarantine")
    # news.test (p=none): a mailing list breaks DKIM, its SPF is the list's: DMARC fails but
    # the policy applies nothing.
    add(6, DAY3, "news.test", "203.0.113.20", "none", "fail", "fail", "lists.test", p="none")
    # partly unaligned but passing DMARC (SPF aligned): counted as misaligned, not as forged.
    add(4, DAY4, "news.test", "198.51.100.40", "none", "fail", "pass", p="none")
    # Out of the range: the day before and the day after.
    add(50, DAY1, "example.com", "192.0.2.10", "reject", "fail", "fail", "spam.test")
    add(70, DAY5, "outside.test", "192.0.2.10", "reject", "fail", "fail", "spam.test")
    return rows


def _need_postgres() -> None:
    if postgres_bin() is None:
        reason = "PostgreSQL server binaries not installed (scripts/install-deps.sh --test)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true, so this fails instead of skipping)", pytrace=False)
        pytest.skip(reason)


def _url(user: str, password: str, port: int, database: str) -> str:
    return f"postgresql://{user}:{password}@127.0.0.1:{port}/{database}"


@pytest.fixture(scope="module")
def reader_url() -> Iterator[str]:
    """The compose stack's store, for real: a database named as compose's POSTGRES_DB, set up
    by docker/postgres/init-reports.sql as the image's entrypoint runs it, filled through
    ReportStore with the milter's own store URL (host moved to the private server), and read
    with the Grafana data source's credentials."""
    _need_postgres()
    writer = urlsplit(tomllib.loads((DOCKER / "mailsec-milter.toml").read_text())
                      ["reports"]["store"])
    (source,) = _sources(DOCKER_DATASOURCE)
    database = source["jsonData"]["database"]
    assert writer.path == f"/{database}"
    with PostgresServer() as server:
        server.psql(f"CREATE DATABASE {database}")  # the entrypoint's POSTGRES_DB
        server.psql(INIT_SQL.read_text(), database=database)
        assert writer.username and writer.password
        store = ReportStore(_url(writer.username, writer.password, server.port, database))
        try:
            store.write(known_rows())
        finally:
            store.close()
        yield _url(source["user"], source["secureJsonData"]["password"], server.port,
                   database)


def run_sql(url: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, connect_timeout=5) as conn:
        return [tuple(row) for row in conn.execute(sql.encode()).fetchall()]


def panel_rows(url: str, board: dict[str, Any], title: str,
               domains: Sequence[str] | None = None) -> list[tuple[Any, ...]]:
    """The panel's rows as Grafana would get them for the test range; ``domains`` None is the
    variable's "All": every value its own query returns for the range."""
    if domains is None:
        domains = domain_options(url, board)
    sql = grafana_sql.render(sql_of(board, title), time_from=RANGE_FROM, time_to=RANGE_TO,
                             variables={"domain": domains})
    return run_sql(url, sql)


def domain_options(url: str, board: dict[str, Any]) -> list[str]:
    (variable,) = board["templating"]["list"]
    sql = grafana_sql.render(variable["query"], time_from=RANGE_FROM, time_to=RANGE_TO)
    return [str(row[0]) for row in run_sql(url, sql)]


def test_the_reader_role_reads_and_cannot_write(reader_url: str) -> None:
    import psycopg

    assert run_sql(reader_url, "SELECT COUNT(*) FROM report_rows")[0][0] > 0
    for statement in ("DELETE FROM report_rows", "CREATE TABLE grafana_was_here (x int)",
                      "UPDATE report_claims SET state = 'sent'"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            run_sql(reader_url, statement)


def test_the_domain_variable_lists_the_days_in_range(reader_url: str,
                                                     board: dict[str, Any]) -> None:
    # outside.test has rows only on 5 November, after the range.
    assert domain_options(reader_url, board) == ["bank.test", "example.com", "news.test"]


def test_overview_numbers(reader_url: str, board: dict[str, Any]) -> None:
    # 10 + 3 + 2 + 2 + 3 + 1 + 2 + 6 + 4 = 33 messages on 2-4 November
    assert panel_rows(reader_url, board, "Messages") == [(33,)]
    assert panel_rows(reader_url, board, "Rejected") == [(pytest.approx(11 / 33),)]
    assert panel_rows(reader_url, board, "Quarantined") == [(pytest.approx(2 / 33),)]
    assert panel_rows(reader_url, board, "DMARC fail") == [(pytest.approx(19 / 33),)]
    # One domain selected: the $domain filter really filters.
    assert panel_rows(reader_url, board, "Messages", ["bank.test"]) == [(6,)]
    assert panel_rows(reader_url, board, "Rejected", ["bank.test"]) == [
        (pytest.approx(4 / 6),)]
    assert panel_rows(reader_url, board, "Messages", ["news.test", "example.com"]) == [(27,)]


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def test_messages_by_disposition_per_day(reader_url: str, board: dict[str, Any]) -> None:
    rows = panel_rows(reader_url, board, "Messages by disposition")
    assert rows == [
        (_midnight(DAY2), "pass", 10), (_midnight(DAY2), "reject", 2),
        (_midnight(DAY3), "none", 6), (_midnight(DAY3), "quarantine", 2),
        (_midnight(DAY3), "reject", 5),
        (_midnight(DAY4), "none", 4), (_midnight(DAY4), "reject", 4),
    ]


def test_refused_by_domain_and_by_network_over_time(reader_url: str,
                                                    board: dict[str, Any]) -> None:
    assert panel_rows(reader_url, board, "Rejected and quarantined by author domain") == [
        (_midnight(DAY2), "example.com reject", 2),
        (_midnight(DAY3), "bank.test quarantine", 2),
        (_midnight(DAY3), "example.com reject", 5),
        (_midnight(DAY4), "bank.test reject", 4),
    ]
    assert panel_rows(reader_url, board, "Rejected and quarantined by source network") == [
        (_midnight(DAY2), "203.0.113.0/24", 2),
        (_midnight(DAY3), "192.0.2.0/24", 5),  # .10 and .77: one /24
        (_midnight(DAY3), "203.0.113.0/24", 2),
        (_midnight(DAY4), "2001:db8:1:ab00::/56", 4),  # ab00::1 and abff::2: one /56
    ]


def test_by_author_domain_and_by_source_network(reader_url: str,
                                                board: dict[str, Any]) -> 0:
    # reject, quarantine, pass, none, total — most refused first
    assert panel_rows(reader_url, board, "By author domain") == [
        ("example.com", 7, 0, 10, 0, 17),
        ("bank.test", 4, 2, 0, 0, 6),
        ("news.test", 0, 0, 0, 10, 10),
    ]
    assert panel_rows(reader_url, board, "By source network") == [
        ("192.0.2.0/24", 5, 0, 0, 0, 5, 1),
        ("203.0.113.0/24", 2, 2, 0, 6, 10, 3),  # refused 4, ties the /56: more mail
        ("2001:db8:1:ab00::/56", 4, 0, 0, 0, 4, 1),
        ("198.51.100.0/24", 0, 0, 10, 4, 14, 2),
    ]


def test_top_forged_domains(reader_url: str, board: dict[str, Any]) -> 0:
    # forged (neither aligned), networks it came from, all of the domain's mail
    assert panel_rows(reader_url, board, "Top forged domains") == [
        ("example.com", 7, 2, 17),
        ("bank.test", 6, 2, 6),
        ("news.test", 6, 1, 10),
    ]
    assert panel_rows(reader_url, board, "Top forged domains", ["bank.test"]) == [
        ("bank.test", 6, 2, 6)]


def test_top_senders_failing_alignment(reader_url: str, board: dict[str, Any]) -> 0:
    # network, author domain, envelope from, dmarc fail, dkim unaligned, spf unaligned, refused
    assert panel_rows(reader_url, board, "Top senders failing alignment") == [
        ("203.0.113.0/24", "news.test", "lists.test", 6, 6, 6, 0),
        ("192.0.2.0/24", "example.com", "spam.test", 5, 5, 5, 5),
        ("2001:db8:1:ab00::/56", "bank.test", "x.test", 4, 4, 4, 4),
        ("203.0.113.0/24", "bank.test", "y.test", 2, 2, 2, 2),
        ("203.0.113.0/24", "example.com", "other.test", 2, 2, 2, 2),
        ("198.51.100.0/24", "news.test", "news.test", 0, 4, 0, 0),
    ]


def test_a_quote_in_a_domain_value_stays_a_value(reader_url: str,
                                                 board: dict[str, Any]) -> None:
    """Grafana quotes each value and doubles quotes: no value can end the SQL string."""
    assert panel_rows(reader_url, board, "Messages", ["x') OR ('1'='1"]) == [(0,)]


def test_no_domain_yet_is_no_data_not_an_error(reader_url: str, board: dict[str, Any]) -> None:
    """An empty store gives the variable no values: every panel still runs (and is empty)."""
    for title in generator().panel_queries():
        rows = panel_rows(reader_url, board, title, [])
        assert rows in ([], [(0,)]), f"{title}: {rows}"
