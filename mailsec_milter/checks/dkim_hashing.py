"""DKIM canonicalisation, hashing and the signature check, each done once per message.

Owns: the RFC 6376 §3.4 canonical forms of a message's header fields and body, the body and
header hashes of §3.7, and the public-key check of a signature (RSA, RFC 8017 §8.2.2, through
OpenSSL; ed25519 through PyNaCl, RFC 8463).
Must not: parse signatures or keys, reach DNS, or map results to RFC 8601 words (dkim.py does).

Why we do not call dkimpy's ``verify_sig_process`` (measured, issue 7): for every signature it
canonicalises every header field of the message and the whole body again with Python regular
expressions, and its RSA is pure Python (``pow`` plus a byte-at-a-time ``int2str``: ~0.25 ms per
rsa-2048 signature). A dual-signed message paid all of it twice. Here each canonical form is
computed once per message and reused by every signature that needs it, the relaxed forms with
``bytes.replace`` passes, and RSA runs in OpenSSL (``cryptography``).

Results are dkimpy's, byte for byte, with one deliberate difference: dkimpy's RSA accepts a
signature that is not exactly k octets or whose integer is not below the modulus (it just
raises it to e mod n); RFC 8017 §8.2.2 step 1 and §5.2.2 say "invalid signature", and OpenSSL
(as OpenDKIM) says so. ``tests/unit/test_dkim_hashing.py`` checks the equivalence on generated
input and this difference on purpose.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import dkim
import nacl.exceptions
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import (
    CanonicalizationPolicy,
    InvalidCanonicalizationPolicyError,
    correct_empty_body,
    strip_trailing_lines,
)

__all__ = ["MessageHashes", "relaxed_body", "relaxed_header_value"]

_HASHES: dict[bytes, Callable[..., Any]] = {
    b"rsa-sha1": hashlib.sha1,
    b"rsa-sha256": hashlib.sha256,
    b"ed25519-sha256": hashlib.sha256,
}
_OPENSSL_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha1": hashes.SHA1(),
    "sha256": hashes.SHA256(),
}
# RSA sizes OpenSSL verifies for us; anything else (policy results below 1024 bits, keys
# cryptography refuses to load) keeps dkimpy's arithmetic so its results do not change.
_OPENSSL_RSA_BITS = range(1024, 16385)
_WHITESPACE = re.compile(rb"\s+")
_LINE_END = re.compile(rb"\r?\n")
# dkimpy's RE_BTAG (the b= value removed before hashing the signature field, §3.7) matches
# one base64 character per step through an optional-FWS group: ~40 µs per rsa-2048 signature.
# Its FWS, ``(?:(?:\s*\r?\n)?\s+)?``, matches exactly the strings ``\s*`` does, so this is the
# same language taken a run of base64 characters per step (~4 µs); equal on generated input.
_B_TAG_VALUE = re.compile(rb"([;\s]b\s*=)(?:\s*[a-zA-Z0-9+/=]+)*(?:\r?\n\Z)?")


def crlf(data: bytes) -> bytes:
    """Every LF or CRLF line end as CRLF, as dkimpy's own parser would make it.

    The common case — already CRLF everywhere, as Postfix sends it — is detected with counts
    instead of running the regex over the whole text.
    """
    if b"\r" not in data:
        return data.replace(b"\n", b"\r\n")
    if data.count(b"\r") == data.count(b"\r\n") == data.count(b"\n"):
        return data
    return _LINE_END.sub(b"\r\n", data)


def _squeeze_spaces(data: bytes) -> bytes:
    """Every run of SP/HTAB as one SP (dkimpy's ``compress_whitespace``), without a regex:
    each ``replace`` pass at least halves the longest run, all at C speed."""
    if b"\t" in data:
        data = data.replace(b"\t", b" ")
    while b"  " in data:
        data = data.replace(b"  ", b" ")
    return data


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 §3.4.4: trailing WSP of each line removed, other WSP runs as one SP, empty
    lines at the end removed (dkimpy's ``Relaxed.canonicalize_body``)."""
    squeezed = _squeeze_spaces(body)
    if b" \r\n" in squeezed:  # after squeezing, at most one SP can precede a line end
        squeezed = squeezed.replace(b" \r\n", b"\r\n")
    return correct_empty_body(strip_trailing_lines(squeezed))  # type: ignore[no-any-return]


def relaxed_header_value(value: bytes) -> bytes:
    """RFC 6376 §3.4.2 for a field value: unfolded, WSP runs as one SP, stripped, CRLF added
    (dkimpy's ``Relaxed.canonicalize_headers``, whose ``re.sub(b"\\r?\\n", b"", v)`` deletes
    every LF and every CR right before one, as these two passes do)."""
    if b"\n" in value:
        value = value.replace(b"\r\n", b"").replace(b"\n", b"")
    return _squeeze_spaces(value).strip() + b"\r\n"


@functools.lru_cache(maxsize=1024)
def _openssl_rsa_key(modulus: int, exponent: int) -> rsa.RSAPublicKey | None:
    """The key in OpenSSL's form, once per distinct key; None where dkimpy's path stays."""
    if modulus.bit_length() not in _OPENSSL_RSA_BITS:
        return None
    try:
        return rsa.RSAPublicNumbers(exponent, modulus).public_key()
    except (ValueError, TypeError):
        return None


def _rsa_verify(digest: Any, signature: bytes, pk: dict[str, Any]) -> bool:
    key = _openssl_rsa_key(pk["modulus"], pk["publicExponent"])
    if key is None:
        return dkim.RSASSA_PKCS1_v1_5_verify(digest, signature, pk)  # type: ignore[no-any-return]
    algorithm = _OPENSSL_HASHES[digest.name]
    try:
        key.verify(signature, digest.digest(), padding.PKCS1v15(), Prehashed(algorithm))
    except InvalidSignature:
        return False
    return True


class MessageHashes:
    """One message's header fields and body, canonicalised and hashed at most once per form.

    ``headers`` are ``(name, value)`` pairs as the MTA gave them (value without its final line
    end, line ends LF or CRLF); ``body`` likewise. Each is brought to CRLF line ends (what
    dkimpy's own parser makes of a message) when first needed, headers only when signed. Not
    shared between threads: one per message.
    """

    def __init__(self, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> None:
        self.headers = headers
        self.body = crlf(body)
        self._fields: dict[int, bytes] = {}
        self._names: dict[bytes, list[bytes]] = {}
        self._values: dict[tuple[bytes, int], bytes] = {}
        self._bodies: dict[bytes, bytes] = {}
        self._body_hashes: dict[tuple[bytes, Callable[..., Any], bytes | None], bytes] = {}

    # --- canonical forms ----------------------------------------------------------------------
    def canonical_body(self, algorithm: bytes) -> bytes:
        """The body in the ``simple`` or ``relaxed`` form (§3.4.3, §3.4.4)."""
        found = self._bodies.get(algorithm)
        if found is None:
            found = (relaxed_body(self.body) if algorithm == b"relaxed"
                     else strip_trailing_lines(self.body))
            self._bodies[algorithm] = found
        return found

    def _header_names(self, algorithm: bytes) -> list[bytes]:
        """Field names as dkimpy compares them when selecting (relaxed strips trailing WSP)."""
        names = self._names.get(algorithm)
        if names is None:
            if algorithm == b"relaxed":
                names = [name.lower().rstrip() for name, _value in self.headers]
            else:
                names = [name.lower() for name, _value in self.headers]
            self._names[algorithm] = names
        return names

    def field(self, index: int) -> tuple[bytes, bytes]:
        """Header ``index`` as dkimpy holds it: the name, and the value with CRLF line ends and
        a final CRLF."""
        value = self._fields.get(index)
        if value is None:
            value = crlf(self.headers[index][1]) + b"\r\n"
            self._fields[index] = value
        return self.headers[index][0], value

    def _canonical_field(self, algorithm: bytes, index: int) -> tuple[bytes, bytes]:
        name, value = self.field(index)
        if algorithm != b"relaxed":
            return name, value
        key = (algorithm, index)
        canonical = self._values.get(key)
        if canonical is None:
            canonical = relaxed_header_value(value)
            self._values[key] = canonical
        return name.lower().rstrip(), canonical

    def _selected(self, algorithm: bytes, include: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
        """§5.4.2: each name in h= takes the lowest field of that name not yet taken (dkimpy's
        ``select_headers`` over the canonical names)."""
        names = self._header_names(algorithm)
        chosen: list[tuple[bytes, bytes]] = []
        last_index: dict[bytes, int] = {}
        for wanted in include:
            i = last_index.get(wanted, len(names))
            while i > 0:
                i -= 1
                if names[i] == wanted:
                    chosen.append(self._canonical_field(algorithm, i))
                    break
            last_index[wanted] = i
        return chosen

    # --- hashes ---------------------------------------------------------------------------------
    def body_hash(self, algorithm: bytes, hasher: Callable[..., Any],
                  length: bytes | None) -> bytes:
        """§3.7 body hash of the canonical body, cut to ``l=`` when given."""
        key = (algorithm, hasher, length)
        found = self._body_hashes.get(key)
        if found is None:
            body = self.canonical_body(algorithm)
            if length is not None:
                body = body[: int(length)]
            found = hasher(body).digest()
            self._body_hashes[key] = found
        return found

    def verify(self, sig: dict[bytes, bytes], include_headers: list[bytes],
               sig_header: tuple[bytes, bytes], pk: Any, key_type: bytes,
               tlsrpt_key: bool) -> bool:
        """What ``dkim.DKIM.verify_sig_process`` answers for a verifier holding this message,
        raising the same exceptions for the same problems."""
        if tlsrpt_key:  # RFC 8460 keys (s=tlsrpt) are not for email; dkimpy refuses them so
            raise dkim.ValidationError("Message is not tlsrpt and Service Type is tlsrpt")
        try:
            policy = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
        except InvalidCanonicalizationPolicyError as exc:
            raise dkim.MessageFormatError(f"invalid c= value: {exc.args[0]}") from exc
        hasher = _HASHES[sig[b"a"]]
        header_algorithm: bytes = policy.header_algorithm.name
        body_algorithm: bytes = policy.body_algorithm.name

        if b"bh" in sig:
            got = self.body_hash(body_algorithm, hasher, sig.get(b"l"))
            expected = base64.b64decode(_WHITESPACE.sub(b"", sig[b"bh"]))
            if got != expected:
                raise dkim.ValidationError(
                    f"body hash mismatch (got {base64.b64encode(got)!r}, "
                    f"expected {sig[b'bh']!r})")

        # dkimpy hashes one From more than h= names (its bug#644046 fix): a second, unsigned
        # From field then breaks the signature. Kept, so results stay the same.
        if b"from" in include_headers:
            include_headers.append(b"from")
        digest = hasher()
        for name, value in self._selected(header_algorithm, include_headers):
            digest.update(name)
            digest.update(b":")
            digest.update(value)
        sig_name, sig_value = sig_header
        unsigned = _B_TAG_VALUE.sub(b"\\1", sig_value)
        if header_algorithm == b"relaxed":
            sig_name, unsigned = sig_name.lower().rstrip(), relaxed_header_value(unsigned)
        digest.update(sig_name)
        digest.update(b":")
        digest.update(unsigned.rstrip())  # hashed without its CRLF (§3.7)
        signature = base64.b64decode(_WHITESPACE.sub(b"", sig[b"b"]))
        if key_type == b"rsa":
            try:
                return _rsa_verify(digest, signature, pk)
            except (TypeError, dkim.crypto.DigestTooLargeError) as exc:
                raise dkim.KeyFormatError(f"digest too large for modulus: {exc}") from exc
        if key_type == b"ed25519":
            try:
                pk.verify(digest.digest(), signature)
            except nacl.exceptions.BadSignatureError:
                return False
            return True
        raise dkim.UnknownKeyTypeError(key_type)
