"""Domain posture on /metrics: the result file of the last ``audit --own --write-metrics``
(written by the systemd timer's run, mailsec_milter/audit.py) turned into gauges at each scrape.

Owns: reading and validating that file, and the posture gauges' values (their names and help
are declared in mailsec_milter/metrics.py, POSTURE_FAMILIES).
Must not: import checkdmarc or mailsec_milter.audit (the daemon never does), touch the network,
or label a sample with a domain that is not in ``[audit] domains`` (senders never get labels, so
the series stay bounded whatever the file says).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .metrics import POSTURE_FAMILIES

RESULT_FILE_NAME = "audit.json"
MTA_STS_MODES = {"none": 0, "testing": 1, "enforce": 2}
_MAX_FILE_BYTES = 1_000_000


def default_result_path() -> str:
    """``$STATE_DIRECTORY/audit.json`` (systemd's StateDirectory=), else under /var/lib."""
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0] or "/var/lib/mailsec-milter"
    return str(Path(state) / RESULT_FILE_NAME)


def read_result(path: str) -> dict[str, Any] | None:
    """The result document, or None when it is missing, too large or not ours."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(_MAX_FILE_BYTES + 1)
    except OSError:
        return None
    if len(raw) > _MAX_FILE_BYTES:
        return None
    try:
        document = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(document, dict) or not isinstance(document.get("domains"), dict):
        return None
    return document


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


class PostureCollector(Collector):
    """Reads the result file on every scrape (it changes once a day; reading is cheap)."""

    def __init__(self, own_domains: Callable[[], Sequence[str]],
                 result_path: Callable[[], str]) -> None:
        self._own_domains = own_domains
        self._result_path = result_path

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {name: GaugeMetricFamily(name, help_text, labels=list(labels))
                    for name, help_text, labels in POSTURE_FAMILIES}
        own = list(dict.fromkeys(self._own_domains()))
        families["mailsec_posture_domains_configured"].add_metric([], float(len(own)))
        document = read_result(self._result_path())
        if document is not None:
            finished = _number(document.get("finished"))
            last_success = _number(document.get("last_success"))
            if finished is not None:
                families["mailsec_posture_audit_ok"].add_metric(
                    [], 1.0 if document.get("ok") is True else 0.0)
            if last_success is not None:
                families["mailsec_posture_last_success_timestamp_seconds"].add_metric(
                    [], last_success)
            domains: dict[str, Any] = document["domains"]
            for domain in own:
                entry = domains.get(domain)
                if not isinstance(entry, dict):
                    continue
                self._domain(families, domain, entry)
        yield from families.values()

    @staticmethod
    def _domain(families: dict[str, GaugeMetricFamily], domain: str,
                entry: dict[str, Any]) -> None:
        values = {
            "mailsec_posture_dmarc_policy": _number(entry.get("dmarc_policy")),
            "mailsec_posture_mta_sts_mode": float(MTA_STS_MODES.get(
                str(entry.get("mta_sts_mode")), -1)),
            "mailsec_posture_tls_rpt": _number(entry.get("tls_rpt")),
            "mailsec_posture_dane": _number(entry.get("dane")),
            "mailsec_posture_baseline_met": _number(entry.get("meets_baseline")),
        }
        for name, value in values.items():
            if value is not None:
                families[name].add_metric([domain], value)
