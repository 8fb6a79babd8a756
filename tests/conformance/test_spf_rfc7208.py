"""The openspf RFC 7208 (and RFC 4408) test suites, run through check_spf and our resolver seam.

Every suite test is one pytest case with id ``scenario::test``. Each scenario's ``zonedata``
becomes a StaticResolver (see tests/support/spf_suite.py), and the whole pipeline under test is
the production one: check_spf → pyspf → the thread-local DNS bridge → Lookup.

What is compared: the RFC 8601 result word against the suite's acceptable results (and that it
is the suite's preferred, first, result unless listed in NOT_PREFERRED_*). Expected
explanation strings are *not* compared — on purpose, SpfOutcome never carries the sender's
``exp=`` text (it is unvetted text from the sender's DNS; see checks/spf.py) — but they are
counted, and the count is asserted so the skipped checks stay visible.

Deviations are listed in DEVIATIONS / DEVIATIONS_4408 with the RFC section that justifies
them; they run as ``xfail(strict=True)``, so a deviation that silently disappears fails too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mailsec_milter.checks.spf import SpfIdentity, check_spf
from tests.support.conformance import conformance_dir, missing_suite
from tests.support.spf_suite import SuiteCase, load_suite, zone_resolver

pytestmark = pytest.mark.conformance

SUITE_7208 = "spf/rfc7208-tests.yml"
SUITE_4408 = "spf/rfc4408-tests.yml"

# Suite tests whose expected result we deliberately do not produce: id → reason (RFC section).
# Empty: all 203 RFC 7208 tests pass through check_spf and the DNS bridge.
DEVIATIONS: dict[str, str] = {}

# RFC 4408 tests whose expected result we do not produce. Empty: the 2009.10 suite already
# accepts the RFC 7208 behaviour as an alternative result (see NOT_PREFERRED_4408).
DEVIATIONS_4408: dict[str, str] = {}

# Tests where we give an *accepted* result that is not the suite's first (preferred) one,
# because RFC 7208 changed the RFC 4408 rule. Asserted exactly, so a change is noticed.
NOT_PREFERRED_7208: dict[str, str] = {}
_TYPE99 = "RFC 7208 §3.1, §4.4, §14.1: the SPF RR type (99) is no longer looked up; TXT only"
NOT_PREFERRED_4408: dict[str, str] = {
    "Record lookup::spfonly": _TYPE99 + " → none",
    "Record lookup::txttimeout": _TYPE99 + " → the TXT timeout is temperror",
    "Selecting records::spfoverride": _TYPE99 + " → the TXT record decides (fail)",
    "Selecting records::multitxt1": _TYPE99 + "; §4.5: two v=spf1 TXT records → permerror",
    "Selecting records::multispf2": _TYPE99 + " → the single TXT record decides (pass)",
    "Record evaluation::invalid-domain-empty-label":
        "RFC 7208 §4.3, §4.8: a target-name that is no DNS name does not match; the RFC 7208 "
        "suite prefers fail (RFC 4408's preferred permerror)",
    "Record evaluation::invalid-domain-long":
        "RFC 7208 §4.3, §4.8: label > 63 octets → no match (fail), as the RFC 7208 suite",
    "Record evaluation::invalid-domain-long-via-macro":
        "RFC 7208 §4.3, §4.8: label > 63 octets after macro expansion → no match (fail)",
    "EXISTS mechanism syntax::exists-dnserr":
        "RFC 7208 §5 ¶8 (and §2.6.6): a DNS error during a mechanism's lookup → temperror",
    "Processing limits::mx-limit": "RFC 7208 §4.6.4: more than 10 MX records → permerror",
}

# Expected counts, so that a truncated or replaced suite file cannot pass unnoticed.
EXPECTED_7208_CASES = 203
EXPECTED_7208_EXPLANATIONS = 22
EXPECTED_4408_CASES = 191
EXPECTED_4408_EXPLANATIONS = 22


def _params(suite: str, deviations: dict[str, str]) -> list[object]:
    path = conformance_dir() / suite
    if not path.is_file():
        return [pytest.param(None, path, id=f"{Path(suite).name}-missing")]
    params: list[object] = []
    for case in load_suite(path):
        marks = []
        if case.id in deviations:
            marks.append(pytest.mark.xfail(strict=True, reason=deviations[case.id]))
        params.append(pytest.param(case, path, id=case.id, marks=marks))
    return params


def _run(case: SuiteCase | None, path: Path, not_preferred: dict[str, str]) -> None:
    if case is None:
        missing_suite(path)
        return
    resolver = zone_resolver(case.zonedata)
    outcome = check_spf(
        resolver, case.host, SpfIdentity.MAILFROM, case.mailfrom, case.helo, "receiver.example"
    )
    got = outcome.result.value
    assert got in case.results, (
        f"{case.id} (spec {case.spec}): got {got}, expected one of {case.results}; "
        f"queries={resolver.queries}"
    )
    if case.id in not_preferred:
        assert got != case.results[0], f"{case.id} now gives the preferred result: unlist it"
    else:
        assert got == case.results[0], (
            f"{case.id}: {got} is accepted but not preferred ({case.results[0]}): "
            "list it with its RFC 7208 section"
        )


@pytest.mark.parametrize(("case", "path"), _params(SUITE_7208, DEVIATIONS))
def test_rfc7208(case: SuiteCase | None, path: Path) -> None:
    _run(case, path, NOT_PREFERRED_7208)


@pytest.mark.parametrize(("case", "path"), _params(SUITE_4408, DEVIATIONS_4408))
def test_rfc4408(case: SuiteCase | None, path: Path) -> None:
    _run(case, path, NOT_PREFERRED_4408)


def test_rfc7208_suite_is_complete() -> None:
    """The suite has the size we report, and every deviation names a real test."""
    path = conformance_dir() / SUITE_7208
    if not path.is_file():
        missing_suite(path)
    cases = load_suite(path)
    ids = {c.id for c in cases}
    assert len(cases) == len(ids) == EXPECTED_7208_CASES
    # Explanation checks we skip on purpose (we never surface exp= text): counted, not hidden.
    assert sum(c.explanation is not None for c in cases) == EXPECTED_7208_EXPLANATIONS
    assert set(DEVIATIONS) | set(NOT_PREFERRED_7208) <= ids


def test_rfc4408_suite_is_complete() -> None:
    path = conformance_dir() / SUITE_4408
    if not path.is_file():
        missing_suite(path)
    cases = load_suite(path)
    ids = {c.id for c in cases}
    assert len(cases) == len(ids) == EXPECTED_4408_CASES
    assert sum(c.explanation is not None for c in cases) == EXPECTED_4408_EXPLANATIONS
    assert set(DEVIATIONS_4408) | set(NOT_PREFERRED_4408) <= ids
