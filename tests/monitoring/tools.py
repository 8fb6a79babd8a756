"""Shared by the monitoring tests: where Prometheus and promtool are, the files under test, and
what the metrics code says exists (names, labels, closed label values)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailsec_milter import metrics
from mailsec_milter.policy import Action, Reason

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"
DASHBOARD_JSON = MONITORING / "grafana" / "mailsec-milter.json"
RULES = MONITORING / "prometheus" / "mailsec-milter.rules.yml"
RULE_TESTS = MONITORING / "prometheus" / "tests.yml"
JOB = "mailsec-milter"


def tool(name: str) -> str:
    """Path of a Prometheus binary (Debian package `prometheus`); skips the test when it is
    missing, except in CI (CI=true), where a missing tool is a failure."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists()
                                  else None)
    if path is None:
        message = (f"{name} is not installed (Debian package prometheus; "
                   "scripts/install-deps.sh --test installs it)")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def load_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def dashboard_targets(board: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) for every query of every panel (rows included, collapsed or not)."""
    out = []
    for panel in board["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            out.extend((inner, target) for target in inner.get("targets", []))
    return out


# -- what the code says exists -----------------------------------------------------------------

def metric_labels() -> dict[str, set[str]]:
    """Every series name the daemon exposes -> its label names (histograms: _bucket with le,
    _count, _sum), from ``metrics.describe()``; plus Prometheus's own ``up``."""
    names: dict[str, set[str]] = {"up": set()}
    for doc in metrics.describe():
        if doc.kind == "histogram":
            names[doc.name + "_bucket"] = {*doc.labels, "le"}
            names[doc.name + "_count"] = set(doc.labels)
            names[doc.name + "_sum"] = set(doc.labels)
        else:
            names[doc.name] = set(doc.labels)
    return names


def label_values() -> dict[str, set[str]]:
    """The closed value set of each label (docs/METRICS.md "Label values")."""
    return {
        "verdict": {a.value for a in Action},
        "reason": {r.value for r in Reason},
        "method": set(metrics.METHODS),
        "result": set(metrics.RESULTS),
        "published": set(metrics.POLICIES),
        "applied": set(metrics.DISPOSITIONS),
        "algorithm": set(metrics.DKIM_ALGORITHMS),
        "key_bits": set(metrics.KEY_SIZES),
        "version": set(metrics.TLS_VERSIONS),
        "type": set(metrics.DNS_TYPES),
        "outcome": set(metrics.DNS_OUTCOMES),
        "check": set(metrics.CHECKS),
    }


SCRAPE_LABELS = {"job", "instance"}
_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_BARE_METRIC = re.compile(r"(?<![\w:])(mailsec_[a-z0-9_]+)(?![\w:])")
_RECORDED = re.compile(r"(?<![\w:])([a-z_]+:[a-z0-9_]+:[a-z0-9_]+)(?![\w:])")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


def result_labels(expr: str) -> set[str]:
    """The labels an aggregating expression's result has: its first ``by (...)`` less ``le``
    (every expression in monitoring/ aggregates with ``by``; none: no labels)."""
    match = re.search(r"\bby\s*\(([^)]*)\)", expr)
    if match is None:
        return set()
    return {x.strip() for x in match.group(1).split(",") if x.strip()} - {"le"}


def recorded_labels() -> dict[str, set[str]]:
    """Recording rule name -> the labels of its series."""
    return {rule["record"]: result_labels(rule["expr"]) for rule in load_rules()
            if "record" in rule}


def check_promql_names(expr: str) -> list[str]:
    """Problems with metric names, label names and label values in ``expr`` (empty: none).

    Every ``mailsec_*`` name must be one the daemon exposes; every matcher and grouping label
    must belong to a metric of the expression (or be job/instance/le); every literal value of a
    closed label must be in its set (regex alternatives are checked one by one)."""
    known = metric_labels() | recorded_labels()
    values = label_values()
    problems: list[str] = []
    used = set(_BARE_METRIC.findall(expr)) | set(_RECORDED.findall(expr))
    used |= {m.group(1) for m in _SELECTOR.finditer(expr) if m.group(1) in known}
    allowed = set(SCRAPE_LABELS) | {"le"}
    for name in used:
        if name not in known:
            problems.append(f"unknown metric {name}")
        else:
            allowed |= known[name]
    for selector in _SELECTOR.finditer(expr):
        for label, _op, value in _MATCHER.findall(selector.group(2)):
            if label not in allowed:
                problems.append(f"label {label} is not a label of {sorted(used)}")
            if label in values and "$" not in value:
                for alternative in value.split("|"):
                    if alternative not in values[label]:
                        problems.append(f"{label}={alternative!r} is not a {label} value")
    for grouping in _GROUPING.findall(expr):
        for label in filter(None, (x.strip() for x in grouping.split(","))):
            if label not in allowed:
                problems.append(f"grouping label {label} is not a label of {sorted(used)}")
    return problems
