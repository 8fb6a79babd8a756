"""RFC 8601 Appendix B examples (``authres/rfc8601-appendix-b.yml``) against our A-R reader.

Our reader is deliberately small: it only needs the authserv-id, to find and delete forged
headers (RFC 8601 §5). For every example header we check that

* ``extract_authserv_id`` finds the example's authserv-id, through comments and folding;
* ``forged_indices`` counts it as ours when our id is that authserv-id (in any case), and not
  when our id differs or is only a suffix of it;
* with ``include_subdomains`` a ``sub.<id>`` header counts and a ``bad<id>`` one does not.

The ``authres`` package parses the same examples as a cross-check of the transcription, with
its one known failure (B.7, LIBRARY-NOTES.md) kept as a strict xfail.
"""

from __future__ import annotations

from typing import Any

import authres
import authres.arc
import authres.dkim_b
import authres.dmarc
import pytest
import yaml

from mailsec_milter.authres import extract_authserv_id, forged_indices
from mailsec_milter.model import parse_message
from tests.support.conformance import conformance_dir, missing_suite

pytestmark = pytest.mark.conformance

SUITE = "authres/rfc8601-appendix-b.yml"
EXPECTED_EXAMPLES = 7
EXPECTED_HEADERS = 9  # B.1 has none; B.4, B.5 and B.6 have two each

AUTHRES_PARSE_FAILURES = {
    "B.7": "authres 1.2.0 stops at the CFWS after a method version ('dkim / 1 (One yay) =', "
           "LIBRARY-NOTES.md); our own reader only needs the authserv-id",
}


def _load() -> list[dict[str, Any]]:
    path = conformance_dir() / SUITE
    if not path.is_file():
        return []
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, list)
    return data


def _cases() -> list[tuple[str, int, str, dict[str, Any]]]:
    """(example id, position, header text, expectation) for every header of every example."""
    cases = []
    for example in _load():
        headers = example.get("headers") or ([example["header"]] if example.get("header") else [])
        expects = example["expect"] if isinstance(example["expect"], list) else [example["expect"]]
        for position, header in enumerate(headers):
            cases.append((example["id"], position, header, expects[position]))
    return cases


CASES = _cases()


def _params() -> list[Any]:
    if not CASES:
        return [pytest.param(None, id="suite-missing")]
    return [pytest.param(case, id=f"{case[0]}-{case[1] + 1}") for case in CASES]


def _field(header: str) -> tuple[str, str]:
    """Name and unfolded value of the example, read the way a message's header is read."""
    headers, _ = parse_message(header.encode() + b"\n\nbody\n")
    assert len(headers) == 1
    return headers[0].name, headers[0].value


def _require(case: Any) -> tuple[str, int, str, dict[str, Any]]:
    if case is None:
        missing_suite(conformance_dir() / SUITE)
    assert isinstance(case, tuple)
    return case


def test_suite_has_every_example() -> None:
    examples = _load()
    if not examples:
        missing_suite(conformance_dir() / SUITE)
    assert [e["id"] for e in examples] == [f"B.{n}" for n in range(1, EXPECTED_EXAMPLES + 1)]
    assert len(CASES) == EXPECTED_HEADERS


@pytest.mark.parametrize("case", _params())
def test_authserv_id_is_found(case: Any) -> None:
    _, _, header, expect = _require(case)
    name, value = _field(header)
    assert name == "Authentication-Results"
    assert extract_authserv_id(value) == expect["authserv_id"]


@pytest.mark.parametrize("case", _params())
def test_example_counts_as_ours_only_for_its_own_id(case: Any) -> None:
    _, _, header, expect = _require(case)
    authserv_id = expect["authserv_id"]
    headers, _ = parse_message(header.encode() + b"\n\nbody\n")
    for include_subdomains in (False, True):
        assert forged_indices(headers, authserv_id, include_subdomains) == [1]
        assert forged_indices(headers, authserv_id.upper(), include_subdomains) == [1]
        assert forged_indices(headers, authserv_id + ".", include_subdomains) == [1]
        assert forged_indices(headers, "mx." + authserv_id, include_subdomains) == []
        assert forged_indices(headers, "other.example", include_subdomains) == []
        parent = authserv_id.split(".", 1)[1]  # example.com for mx.example.com, com for example.com
        assert forged_indices(headers, parent, False) == []


@pytest.mark.parametrize("case", _params())
def test_subdomain_ids_count_only_when_asked(case: Any) -> None:
    _, _, header, expect = _require(case)
    authserv_id = expect["authserv_id"]
    sub = header.replace(authserv_id, "sub." + authserv_id, 1)
    bad = header.replace(authserv_id, "bad" + authserv_id, 1)
    sub_headers, _ = parse_message(sub.encode() + b"\n\nbody\n")
    bad_headers, _ = parse_message(bad.encode() + b"\n\nbody\n")
    assert extract_authserv_id(sub_headers[0].value) == "sub." + authserv_id
    assert forged_indices(sub_headers, authserv_id, True) == [1]
    assert forged_indices(sub_headers, authserv_id, False) == []
    assert forged_indices(bad_headers, authserv_id, True) == []
    assert forged_indices(bad_headers, authserv_id, False) == []


@pytest.mark.parametrize("case", _params())
def test_folding_with_crlf_does_not_matter(case: Any) -> None:
    _, _, header, expect = _require(case)
    crlf = header.replace("\n", "\r\n").encode() + b"\r\n\r\nbody\r\n"
    headers, _ = parse_message(crlf)
    assert extract_authserv_id(headers[0].value) == expect["authserv_id"]
    assert forged_indices(headers, expect["authserv_id"], False) == [1]


def test_all_headers_of_the_appendix_in_one_message() -> None:
    """Every example in one header block: indices are per name, 1-based, highest first."""
    if not CASES:
        missing_suite(conformance_dir() / SUITE)
    block = "\n".join(header for _, _, header, _ in CASES)
    headers, _ = parse_message(block.encode() + b"\n\nbody\n")
    ids = [expect["authserv_id"] for _, _, _, expect in CASES]
    for ours in set(ids):
        expected = sorted((i + 1 for i, v in enumerate(ids) if v == ours), reverse=True)
        assert forged_indices(headers, ours, False) == expected


def _unquote(value: str) -> str:
    import re

    return re.sub(r"\\(.)", r"\1", value)


@pytest.mark.parametrize("case", _params())
def test_authres_package_agrees_with_the_transcription(case: Any) -> None:
    example_id, _, header, expect = _require(case)
    if example_id in AUTHRES_PARSE_FAILURES:
        pytest.xfail(AUTHRES_PARSE_FAILURES[example_id])
    context = authres.FeatureContext(authres.dkim_b, authres.dmarc, authres.arc)
    _, value = _field(header)
    parsed = context.parse_value(value)
    assert parsed.authserv_id == expect["authserv_id"].lower()
    if "version" in expect:
        assert parsed.version == str(expect["version"])
    got = [(r.method, r.result, r.reason and _unquote(r.reason),
            {f"{p.type}.{p.name}": p.value for p in r.properties}) for r in parsed.results]
    wanted = [(r["method"], r["result"], r.get("reason"),
               {k: str(v) for k, v in r.get("props", {}).items()}) for r in expect["results"]]
    assert got == wanted


def test_b7_still_fails_in_authres() -> None:
    """When authres learns B.7, AUTHRES_PARSE_FAILURES must shrink: strict check of the xfail."""
    example = next((e for e in _load() if e["id"] == "B.7"), None)
    if example is None:
        missing_suite(conformance_dir() / SUITE)
    assert example is not None
    _, value = _field(example["header"])
    with pytest.raises(authres.AuthResError):
        authres.FeatureContext(authres.dkim_b).parse_value(value)
    assert extract_authserv_id(value) == "foo.example.net"
