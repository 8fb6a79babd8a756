"""Load the openspf YAML test suites (RFC 4408 / RFC 7208) into StaticResolver zones.

The suite format is the one pyspf's own runner (``test/testspf.py``) reads; we follow its
reading of ``zonedata`` exactly, translated into the answers a recursive resolver would give:

* each name maps to a list of entries: ``{TYPE: value}`` or the bare string ``TIMEOUT``;
* ``TXT``/``SPF`` values are a string or a list of character-strings (``[]`` is a TXT record
  with no strings); non-ASCII text is encoded as UTF-8, as pyspf's runner does;
* ``SPF`` entries also act as ``TXT`` records when the name has no ``TXT`` entry at all (the
  suite relies on drivers "auto-magically" duplicating them); ``TXT: NONE`` suppresses that;
* ``{TYPE: TIMEOUT}`` makes queries of that type time out;
* a bare ``TIMEOUT`` ends the list: a query type with no record before it times out, a type
  with records before it gets just those records (records after it are never seen);
* ``MX: [pref, host]``, ``A``/``AAAA``/``PTR``/``CNAME``: one value each.

CNAMEs are followed by StaticResolver itself (as a recursive resolver and dnspython would);
pyspf's runner instead hands the CNAME to pyspf, which follows it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mailsec_milter.dns import (
    SUPPORTED_TYPES,
    DnsOutcome,
    DnsResult,
    Record,
    StaticResolver,
    normalise_name,
)

TIMEOUT = "TIMEOUT"
Entry = tuple[str, Any] | str  # (type, value) or the bare "TIMEOUT"


@dataclass(frozen=True)
class SuiteCase:
    """One test of one scenario."""

    scenario: str
    name: str
    host: str
    mailfrom: str
    helo: str
    results: tuple[str, ...]
    explanation: str | None
    spec: str
    zonedata: Mapping[str, Any] = field(repr=False, hash=False, compare=False)

    @property
    def id(self) -> str:
        return f"{self.scenario}::{self.name}"


def load_suite(path: Path) -> list[SuiteCase]:
    """All tests of all scenarios of one suite file, in file order."""
    cases: list[SuiteCase] = []
    with path.open("rb") as fh:
        for number, scenario in enumerate(yaml.safe_load_all(fh), 1):
            if not scenario:
                continue
            title = str(scenario.get("description") or f"scenario {number}")
            zonedata = scenario.get("zonedata") or {}
            for name, test in (scenario.get("tests") or {}).items():
                result = test["result"]
                results = tuple(result) if isinstance(result, list) else (result,)
                explanation = test.get("explanation")
                cases.append(
                    SuiteCase(
                        scenario=title,
                        name=str(name),
                        host=str(test["host"]),
                        mailfrom=str(test.get("mailfrom") or ""),
                        helo=str(test.get("helo") or ""),
                        results=tuple(str(r) for r in results),
                        explanation=None if explanation is None else str(explanation),
                        spec=str(test.get("spec", "")),
                        zonedata=zonedata,
                    )
                )
    return cases


def _entries(records: list[Any]) -> Iterator[Entry]:
    """pyspf's ``getrdata``: the entries of one name, with SPF→TXT duplication appended."""
    generated: list[Entry] = []
    generate = True
    for item in records:
        if not isinstance(item, dict):
            yield str(item)  # the bare TIMEOUT
            continue
        for rtype, value in item.items():
            rtype = str(rtype).upper()
            if rtype == "TXT":
                generate = False
            elif rtype == "SPF" and generate:
                generated.append(("TXT", value))
            if value != "NONE":
                yield (rtype, value)
    if generate:
        yield from generated


def _record(rtype: str, value: Any) -> Record:
    if rtype in ("TXT", "SPF"):
        strings = value if isinstance(value, list) else [value]
        return tuple(str(s).encode("utf-8") for s in strings)
    if rtype == "MX":
        preference, exchange = value
        return (int(preference), normalise_name(str(exchange)))
    if rtype in ("PTR", "CNAME"):
        return normalise_name(str(value))
    return str(value)


def zone_results(zonedata: Mapping[str, Any]) -> list[DnsResult]:
    """The per-(name, type) answers a StaticResolver should give for a scenario's zonedata."""
    results: list[DnsResult] = []
    for raw_name, raw_records in zonedata.items():
        name = normalise_name(str(raw_name))
        entries = list(_entries(list(raw_records or [])))
        any_answer = False
        for rtype in sorted(SUPPORTED_TYPES):
            records: list[Record] = []
            timed_out = False
            for entry in entries:
                if isinstance(entry, str):
                    timed_out = entry == TIMEOUT and not records
                    break
                etype, value = entry
                if etype != rtype:
                    continue
                if value == TIMEOUT:
                    timed_out = True
                    break
                records.append(_record(etype, value))
            if timed_out:
                results.append(DnsResult(name, rtype, DnsOutcome.TIMEOUT))
                any_answer = True
            elif records:
                results.append(DnsResult(name, rtype, DnsOutcome.ANSWER, tuple(records), 300))
                any_answer = True
        if not any_answer:  # the name exists but holds nothing we can ask for
            results.append(DnsResult(name, "TXT", DnsOutcome.NODATA))
    return results


def zone_resolver(zonedata: Mapping[str, Any]) -> StaticResolver:
    return StaticResolver(zone_results(zonedata))
