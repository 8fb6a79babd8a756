"""OpenDMARC's libopendmarc test vectors (../shared/conformance/dmarc/opendmarc/
opendmarc-vectors.yml) run through our parser, alignment, From extraction and PSL code.

The file itself warns that some expectations are libopendmarc-specific. Where RFC 9989 (or RFC
7489 for the PSL) says otherwise we follow the RFC: each such vector is listed in a DEVIATIONS
table with the section, asserted to give *our* answer, and counted, so a deviation that
silently disappears fails too. Pass counts are pinned in EXPECTED_* constants.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from publicsuffixlist import PublicSuffixList

from mailsec_milter.addresses import AuthorProblem, author_domains, normalise_domain
from mailsec_milter.checks.dkim import DkimOutcome, DkimSignatureOutcome
from mailsec_milter.checks.dmarc import (
    DmarcSettings,
    RecordStatus,
    check_dmarc,
    identifiers_aligned_psl,
    load_psl,
    organizational_domain_psl,
    parse_record,
)
from mailsec_milter.checks.spf import SpfIdentity, SpfOutcome
from mailsec_milter.dns import StaticResolver
from mailsec_milter.model import AuthResult
from tests.support.conformance import conformance_dir, missing_suite

pytestmark = pytest.mark.conformance

VECTORS = "dmarc/opendmarc/opendmarc-vectors.yml"
OLD_PSL = "dmarc/opendmarc/libopendmarc-tests/effective_tld_names.dat"


def _vectors() -> dict[str, Any]:
    path = conformance_dir() / VECTORS
    if not path.is_file():
        missing_suite(path)
    loaded: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return loaded


# --- record_parse -----------------------------------------------------------------------------

STATUS = {
    "DMARC_PARSE_OKAY": RecordStatus.VALID,
    "DMARC_PARSE_ERROR_EMPTY": RecordStatus.NOT_DMARC,
    "DMARC_PARSE_ERROR_BAD_VERSION": RecordStatus.NOT_DMARC,
    "DMARC_PARSE_ERROR_BAD_VALUE": RecordStatus.INVALID,
    "DMARC_PARSE_ERROR_NO_REQUIRED_P": RecordStatus.INVALID,
}

# vector n → (our status, reason with the RFC section)
RECORD_DEVIATIONS: dict[int, tuple[RecordStatus, str]] = {
    5: (RecordStatus.INVALID,
        "p=n is not a dmarc-request value (RFC 9989 §4.8); no rua, so no DMARC processing "
        "(§4.10.1). libopendmarc accepts it as none."),
    10: (RecordStatus.VALID,
         "a bad adkim value falls back to its default r (RFC 9989 §4.8: syntax errors are "
         "discarded in favor of default values)"),
    11: (RecordStatus.VALID, "a bad aspf value falls back to r (RFC 9989 §4.8)"),
    12: (RecordStatus.VALID,
         "rf was removed (RFC 9989 Appendix C.5.2): an unknown tag MUST be ignored (§4.7)"),
    13: (RecordStatus.VALID, "ri was removed (RFC 9989 Appendix C.5.2; §4.7 ignore unknown)"),
    14: (RecordStatus.VALID,
         "pct was removed (RFC 9989 Appendix C.5.2; §4.7); in RFC 7489 mode an out-of-range "
         "pct falls back to its default 100 (RFC 7489 §6.3)"),
    19: (RecordStatus.VALID, "rf removed (RFC 9989 Appendix C.5.2; §4.7 ignore unknown tags)"),
}
EXPECTED_RECORD_AGREEMENT = (12, 7)  # (agree, deviations) of 19


def test_record_parse_vectors() -> None:
    agree = deviate = 0
    for vector in _vectors()["record_parse"]:
        ours = parse_record(vector["record"]).status
        n = vector["n"]
        if n in RECORD_DEVIATIONS:
            assert ours is RECORD_DEVIATIONS[n][0], (vector, RECORD_DEVIATIONS[n][1])
            assert ours is not STATUS[vector["expect"]]
            deviate += 1
        else:
            assert ours is STATUS[vector["expect"]], vector
            agree += 1
    assert (agree, deviate) == EXPECTED_RECORD_AGREEMENT


def test_record_parse_vectors_in_rfc7489_mode() -> None:
    """RFC 7489 knows pct/rf/ri; bad values still fall back to defaults (RFC 7489 §6.3)."""
    for vector in _vectors()["record_parse"]:
        ours = parse_record(vector["record"], mode="rfc7489").status
        expected = RECORD_DEVIATIONS.get(vector["n"], (STATUS[vector["expect"]], ""))[0]
        assert ours is expected, vector


# --- alignment --------------------------------------------------------------------------------

ALIGNMENT_DEVIATIONS = {
    5: "'.mac.com.' has an empty first label: not a domain name (RFC 1035 §2.3.1), so it "
       "aligns with nothing; libopendmarc strips leading dots (RFC 9989 §4.4 compares names)",
    6: "'....mac.com....' likewise is not a domain name (RFC 1035 §2.3.1; RFC 9989 §4.4)",
}
EXPECTED_ALIGNMENT_AGREEMENT = (8, 2)


def _aligned_vectors(psl: PublicSuffixList) -> tuple[int, int]:
    agree = deviate = 0
    for vector in _vectors()["alignment"]:
        ours = identifiers_aligned_psl(vector["from_domain"], vector["other_domain"],
                                       strict=vector["mode"] == "strict", psl=psl)
        expected = vector["expect"] == "aligned"
        if vector["n"] in ALIGNMENT_DEVIATIONS:
            assert ours is (not expected), (vector, ALIGNMENT_DEVIATIONS[vector["n"]])
            deviate += 1
        else:
            assert ours is expected, vector
            agree += 1
    return agree, deviate


def test_alignment_vectors_without_psl() -> None:
    """libopendmarc's first pass: no list, so every TLD is a public suffix (the PSL's
    implicit "*" rule, RFC 7489 §3.2)."""
    assert _aligned_vectors(PublicSuffixList([])) == EXPECTED_ALIGNMENT_AGREEMENT


def test_alignment_vectors_with_psl() -> None:
    path = conformance_dir() / OLD_PSL
    if not path.is_file():
        missing_suite(path)
    assert _aligned_vectors(load_psl(str(path))) == EXPECTED_ALIGNMENT_AGREEMENT


def test_alignment_vectors_with_the_current_psl() -> None:
    path = conformance_dir() / "dmarc" / "psl" / "public_suffix_list.dat"
    if not path.is_file():
        missing_suite(path)
    assert _aligned_vectors(load_psl(str(path))) == EXPECTED_ALIGNMENT_AGREEMENT


def test_alignment_vectors_by_tree_walk() -> None:
    """The same vectors in RFC 9989 mode, each Organizational Domain publishing a record."""
    psl = PublicSuffixList([])
    agree = deviate = 0
    for vector in _vectors()["alignment"]:
        author = normalise_domain(vector["from_domain"])
        other = vector["other_domain"]
        strict = vector["mode"] == "strict"
        expected = vector["expect"] == "aligned"
        if author is None:
            assert vector["n"] in ALIGNMENT_DEVIATIONS or not expected, vector
            deviate += vector["n"] in ALIGNMENT_DEVIATIONS
            agree += vector["n"] not in ALIGNMENT_DEVIATIONS
            continue
        org = organizational_domain_psl(author, psl) or author
        zone = f'_dmarc.{org}. TXT "v=DMARC1; p=reject; adkim={"s" if strict else "r"}"\n'
        outcome = check_dmarc(
            StaticResolver.from_zone_text(zone), author_domains([f"a@{author}"]),
            SpfOutcome(SpfIdentity.MAILFROM, AuthResult.NONE, "", ""),
            DkimOutcome((DkimSignatureOutcome(AuthResult.PASS, other),)), DmarcSettings())
        assert (outcome.result is AuthResult.PASS) is expected, (vector, outcome)
        agree += 1
    assert (agree, deviate) == EXPECTED_ALIGNMENT_AGREEMENT


# --- from_domain_extraction -------------------------------------------------------------------

# Vectors where the expected domain is right but our outcome says more than "joe.com":
# vector index (position in the list; two vectors share n=12) → (problem we report, why).
EXTRACTION_NOTES: dict[int, tuple[AuthorProblem, str]] = {
    5: (AuthorProblem.NO_DOMAIN,
        "'<<<><joe@joe.com>>>' is not RFC 5322 syntax: joe.com is salvaged and evaluated, and "
        "the malformed mailbox adds a permerror entry (RFC 9989 §5.3.1, §11.5)"),
    6: (AuthorProblem.MULTIPLE_AUTHORS,
        "libopendmarc keeps only the first address; we evaluate ace.com too (RFC 9989 §11.5, "
        "CVE-2019-16378)"),
    7: (AuthorProblem.MULTIPLE_AUTHORS,
        "as above: joe.com and ace.com are both evaluated (RFC 9989 §11.5)"),
}
EXPECTED_EXTRACTION = 13


def test_from_domain_extraction_vectors() -> None:
    vectors = _vectors()["from_domain_extraction"]
    assert len(vectors) == EXPECTED_EXTRACTION
    for index, vector in enumerate(vectors):
        result = author_domains([vector["header_value"]])
        assert result.domains[:1] == (vector["expect_domain"],), vector
        note = EXTRACTION_NOTES.get(index)
        assert result.problem is (note[0] if note else None), (vector, result)


# --- org_domain_psl ---------------------------------------------------------------------------


def _unescape(text: str) -> str:
    """The vectors write UTF-8 bytes C-style: ``\\0xd8`` is the byte 0xd8."""
    raw = re.sub(r"\\0x([0-9a-fA-F]{2})", lambda m: f"\\x{m.group(1)}", text)
    return raw.encode("latin-1").decode("unicode_escape").encode("latin-1").decode("utf-8")


ORG_DEVIATIONS = {
    4: ("xn--mgba3a4f16a.ar",
        "the bundled list has the rules 'ar' and 'ایران' (a TLD) but no 'ایران.ar', so RFC 7489 "
        "§3.2 (longest matching rule + one label) gives ایران.ar; libopendmarc's c.ایران.ar "
        "comes from its own matcher"),
}
EXPECTED_ORG_AGREEMENT = (3, 1)


def test_org_domain_psl_vectors() -> None:
    path = conformance_dir() / OLD_PSL
    if not path.is_file():
        missing_suite(path)
    psl = load_psl(str(path))
    agree = deviate = 0
    for vector in _vectors()["org_domain_psl"]:
        domain = _unescape(vector["domain"])
        ours = organizational_domain_psl(domain, psl)
        if vector["n"] in ORG_DEVIATIONS:
            assert ours == ORG_DEVIATIONS[vector["n"]][0], vector
            deviate += 1
        else:
            assert ours == normalise_domain(_unescape(vector["expect_org_domain"])), vector
            agree += 1
    assert (agree, deviate) == EXPECTED_ORG_AGREEMENT


def test_deviation_tables_cite_sections() -> None:
    for _status, reason in RECORD_DEVIATIONS.values():
        assert "§" in reason or "Appendix" in reason
    for reason in (*ALIGNMENT_DEVIATIONS.values(), *(r for _s, r in ORG_DEVIATIONS.values()),
                   *(r for _p, r in EXTRACTION_NOTES.values())):
        assert "§" in reason


def test_vectors_file_is_where_we_expect() -> None:
    path = conformance_dir() / VECTORS
    if not path.is_file():
        missing_suite(path)
    assert Path(path).stat().st_size > 1000
