"""check_tls: the MTA's TLS macros reduced to an x-tls result with token-only values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailsec_milter.checks.tls import check_tls, safe_token
from mailsec_milter.model import AuthResult, TlsInfo


def test_plaintext_session_is_none() -> None:
    outcome = check_tls(TlsInfo())
    assert outcome.result is AuthResult.NONE
    assert not outcome.encrypted
    assert (outcome.version, outcome.cipher, outcome.bits, outcome.verify) == ("", "", None, "")


def test_postfix_tls_macros() -> None:
    outcome = check_tls(TlsInfo(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384",
                                cipher_bits=256, verify=None))
    assert outcome.result is AuthResult.PASS
    assert outcome.encrypted
    assert (outcome.version, outcome.cipher, outcome.bits) == (
        "TLSv1.3", "TLS_AES_256_GCM_SHA384", 256)


@pytest.mark.parametrize("info", [TlsInfo(version="TLSv1.2"), TlsInfo(cipher="ECDHE-RSA")])
def test_either_macro_means_encrypted(info: TlsInfo) -> None:
    assert check_tls(info).result is AuthResult.PASS


@pytest.mark.parametrize(("bits", "expected"), [
    (None, None), (0, None), (-1, None), (128, 128), (99999, 99999), (100000, None),
])
def test_cipher_bits_are_bounded(bits: int | None, expected: int | None) -> None:
    assert check_tls(TlsInfo(version="TLSv1.3", cipher_bits=bits)).bits == expected


def test_hostile_macros_become_tokens() -> None:
    outcome = check_tls(TlsInfo(version="TLSv1.3\r\nX-Injected: yes", cipher="a;dkim=pass",
                                cipher_bits=-1, verify="x" * 40))
    assert outcome.result is AuthResult.PASS
    assert outcome.version == "TLSv1.3__X-Injected__yes"
    assert outcome.cipher == "a_dkim_pass"
    assert outcome.bits is None
    assert outcome.verify == "x" * 16


@given(st.text(max_size=200))
def test_safe_token_property(text: str) -> None:
    token = safe_token(text)
    assert len(token) <= 64
    assert all(c.isascii() and (c.isalnum() or c in "._+-") for c in token)
