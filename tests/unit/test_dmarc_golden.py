"""Golden DMARC cases from tests/golden/dmarc/*.yml, each derived from an RFC section.

Each case is a zone (StaticResolver), the author (From values or one domain), the SPF and DKIM
outcomes, and the expected DmarcOutcome fields; ``queries`` pins the exact DNS lookups so the
RFC 9989 §4.10 Tree Walk order and its eight-query limit are checked literally.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mailsec_milter.addresses import AuthorDomains, author_domains
from mailsec_milter.checks.dkim import DkimOutcome, DkimSignatureOutcome
from mailsec_milter.checks.dmarc import DmarcOutcome, DmarcSettings, check_dmarc
from mailsec_milter.checks.spf import SpfIdentity, SpfOutcome
from mailsec_milter.dns import StaticResolver
from mailsec_milter.model import AuthResult
from tests.support.conformance import conformance_dir

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "dmarc"
MIN_CASES = 30


def _load() -> list[tuple[str, dict[str, Any]]]:
    cases: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(GOLDEN.glob("*.yml")):
        for case in yaml.safe_load(path.read_text())["cases"]:
            cases.append((f"{path.stem}::{case['id']}", case))
    return cases


CASES = _load()


def _psl_path() -> str | None:
    path = conformance_dir() / "dmarc" / "psl" / "public_suffix_list.dat"
    return str(path) if path.is_file() else None  # else the list packaged with publicsuffixlist


def run_case(case: dict[str, Any]) -> tuple[DmarcOutcome, StaticResolver]:
    resolver = StaticResolver.from_zone_text(case.get("zone") or "")
    if "from" in case:
        authors = author_domains(case["from"])
    else:
        authors = AuthorDomains((case["author"],), (), 1, 1)
    spf_spec = case.get("spf") or {}
    spf = SpfOutcome(
        SpfIdentity(spf_spec.get("identity", "mailfrom")),
        AuthResult(spf_spec.get("result", "none")),
        spf_spec.get("domain", ""),
        spf_spec.get("domain", ""),
    )
    dkim = DkimOutcome(tuple(
        DkimSignatureOutcome(AuthResult(s["result"]), str(s["domain"]))
        for s in case.get("dkim") or ()))
    mode = case.get("mode", "rfc9989")
    settings = DmarcSettings(mode=mode, psl_path=_psl_path() if mode == "rfc7489" else None,
                             **(case.get("settings") or {}))
    value = float(case.get("random", 0.5))
    outcome = check_dmarc(resolver, authors, spf, dkim, settings, random=lambda: value)
    return outcome, resolver


def _actual(outcome: DmarcOutcome, resolver: StaticResolver, key: str) -> object:
    if key == "queries":
        return [f"{rdtype} {name}" for name, rdtype in resolver.queries]
    if key == "dkim_aligned":
        return list(outcome.dkim_aligned)
    if key == "author_problem":
        return None if outcome.author_problem is None else outcome.author_problem.value
    value = getattr(outcome, key)
    return value.value if hasattr(value, "value") else value


def test_there_are_enough_cases_and_each_cites_a_section() -> None:
    assert len(CASES) >= MIN_CASES
    for case_id, case in CASES:
        cited = case.get("rfc", "")
        assert "RFC" in cited and ("§" in cited or "Appendix" in cited), (
            f"{case_id} does not cite an RFC section")
        assert case.get("expect"), case_id
    assert len({case_id for case_id, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [c for _, c in CASES], ids=[i for i, _ in CASES])
def test_golden_case(case: dict[str, Any]) -> None:
    outcome, resolver = run_case(case)
    expected = case["expect"]
    mismatches = {
        key: (_actual(outcome, resolver, key), want)
        for key, want in expected.items()
        if _actual(outcome, resolver, key) != want
    }
    assert not mismatches, f"{mismatches}\n{outcome}"
    # Every lookup went through the per-check memo: no name is asked twice.
    assert len(resolver.queries) == len(set(resolver.queries)) == outcome.dns_queries
