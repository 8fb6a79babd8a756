"""What Grafana does to a PostgreSQL panel's SQL before it reaches the server, for the macros
and variables the reports dashboard uses — so the tests run the SQL the server would really get.

Two steps, in Grafana's order:

1. Template variables (the frontend's ``templateSrv.replace`` with the SQL data sources'
   ``interpolateVariable``): a multi-value or include-All variable becomes its values, each in
   single quotes with ``'`` doubled, joined by ``,`` — so ``ARRAY[$domain]`` reads
   ``ARRAY['a.test','b.test']``; "All" without a custom all value is every option of
   the variable. ``$name`` and ``${name}`` are both replaced.
2. Macros (the backend, pkg/tsdb/grafana-postgresql-datasource/macros.go), matched by
   ``\\$(\\w+)\\(([^)]*)\\)``: ``$__timeFrom()`` and ``$__timeTo()`` are the range's ends
   quoted as Go's ``time.RFC3339Nano`` in UTC (``'2026-11-02T06:00:00Z'``, fractional
   seconds only when non-zero), ``$__timeFilter(expr)`` is
   ``expr BETWEEN '<from>' AND '<to>'``. Any other macro is an error here (Grafana would
   either expand it differently or reject it): extend this module before using one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

_MACRO = re.compile(r"\$(__\w+)\(([^)]*)\)")
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def rfc3339nano(moment: datetime) -> str:
    """Go's ``time.RFC3339Nano`` of a UTC time: trailing zeros of the fraction dropped, 'Z'."""
    utc = moment.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += "." + f"{utc.microsecond:06d}".rstrip("0")
    return text + "Z"


def quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def interpolate_variables(sql: str, variables: Mapping[str, Sequence[str]]) -> str:
    """Step 1: every ``$name`` of a multi-value variable as its quoted, comma-joined values.
    Names starting with ``__`` (macros, Grafana's own) are left for step 2."""
    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name.startswith("__"):
            return match.group(0)
        if name not in variables:
            raise KeyError(f"unknown variable ${name}")
        return ",".join(quote(v) for v in variables[name])
    return _VARIABLE.sub(replace, sql)


def expand_macros(sql: str, time_from: datetime, time_to: datetime) -> str:
    """Step 2: the time-range macros."""
    begin, end = quote(rfc3339nano(time_from)), quote(rfc3339nano(time_to))

    def replace(match: re.Match[str]) -> str:
        name, argument = match.group(1), match.group(2).strip()
        if name == "__timeFrom" and not argument:
            return begin
        if name == "__timeTo" and not argument:
            return end
        if name == "__timeFilter" and argument:
            return f"{argument} BETWEEN {begin} AND {end}"
        raise ValueError(f"macro ${name}({argument}) is not supported by this substitution")
    return _MACRO.sub(replace, sql)


def render(sql: str, *, time_from: datetime, time_to: datetime,
           variables: Mapping[str, Sequence[str]] | None = None) -> str:
    """The SQL Grafana sends for a panel, for the given range and variable values."""
    expanded = expand_macros(interpolate_variables(sql, variables or {}), time_from, time_to)
    leftover = re.findall(r"\$\{?\w+", expanded)
    assert not leftover, f"not substituted: {leftover}"
    return expanded
