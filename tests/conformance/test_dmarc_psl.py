"""The public-suffix list's own test vectors (../shared/conformance/dmarc/psl/test_psl.txt,
``checkPublicSuffix(domain, registrable)``) through our RFC 7489 Organizational Domain function,
with the PSL snapshot that ships next to them.

Our function returns A-labels (RFC 9989 §5.3.1: U-labels are converted for processing), so an
expected value written with U-labels is compared after the same conversion; ``null`` input is
passed as the empty string. Every vector must pass; the count is pinned.
"""

from __future__ import annotations

import re

import pytest

from mailsec_milter.addresses import normalise_domain
from mailsec_milter.checks.dmarc import (
    DmarcSettings,
    identifiers_aligned_psl,
    load_psl,
    organizational_domain_psl,
)
from tests.support.conformance import conformance_dir, missing_suite

pytestmark = pytest.mark.conformance

PSL = "dmarc/psl/public_suffix_list.dat"
VECTORS = "dmarc/psl/test_psl.txt"
EXPECTED_VECTORS = 78

_LINE = re.compile(r"^checkPublicSuffix\((null|'[^']*'),\s*(null|'[^']*')\);\s*$")


def _literal(text: str) -> str | None:
    return None if text == "null" else text[1:-1]


def _load() -> list[tuple[str | None, str | None]]:
    path = conformance_dir() / VECTORS
    if not path.is_file():
        return []
    vectors = []
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _LINE.match(line.strip())
        if match:  # commented-out vectors start with "//" and do not match
            vectors.append((_literal(match.group(1)), _literal(match.group(2))))
    return vectors


VECTOR_LIST = _load()


def _psl_path() -> str:
    path = conformance_dir() / PSL
    if not path.is_file():
        missing_suite(path)
    return str(path)


def test_vector_count() -> None:
    if not VECTOR_LIST:
        missing_suite(conformance_dir() / VECTORS)
    assert len(VECTOR_LIST) == EXPECTED_VECTORS


@pytest.mark.parametrize(("domain", "expected"), VECTOR_LIST,
                         ids=[f"{d}->{e}" for d, e in VECTOR_LIST])
def test_check_public_suffix(domain: str | None, expected: str | None) -> None:
    psl = load_psl(_psl_path())
    ours = organizational_domain_psl(domain or "", psl)
    assert ours == (normalise_domain(expected) if expected is not None else None)


def test_settings_load_the_given_psl_once() -> None:
    path = _psl_path()
    settings = DmarcSettings(mode="rfc7489", psl_path=path)
    assert settings.public_suffix_list() is load_psl(path)


@pytest.mark.parametrize(
    ("author", "identifier"),
    [
        ("github.io", "attacker.github.io"),  # private section
        ("victim.github.io", "attacker.github.io"),
        ("victim.co.uk", "co.uk"),
        ("co.uk", "victim.co.uk"),
        ("victim.co.uk", "attacker.co.uk"),
        ("b.c.mm", "c.mm"),  # wildcard rule *.mm
        ("www.ck", "test.ck"),  # exception rule !www.ck
    ],
)
def test_public_suffixes_never_align(author: str, identifier: str) -> None:
    psl = load_psl(_psl_path())
    assert not identifiers_aligned_psl(author, identifier, strict=False, psl=psl)
