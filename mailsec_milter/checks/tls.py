"""TLS status of the SMTP session, from the MTA's macros.

Owns: turning ``{tls_version}``, ``{cipher}``, ``{cipher_bits}`` and Sendmail's ``{verify}``
into one result an operator can read in the header. There is no registered RFC 8601 method for
transport security, so the result is reported under the experimental method ``x-tls``
(RFC 8601 §2.7.6 allows ``x-`` methods), the same shape OpenDKIM and authentication_milter use:
``pass`` when the session was encrypted, ``none`` when it was plaintext.
Must not: trust the macro text: every value is reduced to a closed character set before it can
reach the header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..model import AuthResult, TlsInfo

_SAFE = re.compile(r"[^A-Za-z0-9._+-]")


def safe_token(text: str | None, limit: int = 64) -> str:
    """Reduce attacker-influenced macro text to a short token safe in any header position."""
    if not text:
        return ""
    return _SAFE.sub("_", text.strip())[:limit]


@dataclass(frozen=True)
class TlsOutcome:
    result: AuthResult
    version: str = ""
    cipher: str = ""
    bits: int | None = None
    verify: str = ""

    @property
    def encrypted(self) -> bool:
        return self.result is AuthResult.PASS


def check_tls(tls: TlsInfo) -> TlsOutcome:
    if not tls.encrypted:
        return TlsOutcome(AuthResult.NONE)
    bits = tls.cipher_bits if tls.cipher_bits is not None and 0 < tls.cipher_bits < 100000 else None
    return TlsOutcome(
        AuthResult.PASS,
        version=safe_token(tls.version),
        cipher=safe_token(tls.cipher),
        bits=bits,
        verify=safe_token(tls.verify, 16),
    )
