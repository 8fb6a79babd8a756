"""DKIM test keys, signing and zone text for the DKIM tests.

Keys are generated once per test session (``functools.cache``): RSA with ``openssl genrsa``
(independent of the ``cryptography`` package the verifier uses), ed25519 with PyNaCl. Signing
goes through dkimpy's own ``dkim.sign`` so the verifier under test never checks its own output
format.
"""

from __future__ import annotations

import base64
import functools
import shutil
import subprocess
from dataclasses import dataclass

import dkim
import nacl.encoding
import nacl.signing
import nacl.utils


@dataclass(frozen=True)
class KeyPair:
    kind: str  # "rsa" or "ed25519"
    private: bytes  # what dkim.sign takes: PEM for RSA, base64 seed for ed25519
    public_b64: str  # the p= value
    bits: int

    def record(self, extra: str = "") -> str:
        """The key TXT record text, e.g. ``v=DKIM1; k=rsa; p=...``."""
        tail = f"; {extra}" if extra else ""
        return f"v=DKIM1; k={self.kind}; p={self.public_b64}{tail}"


def _openssl() -> str:
    path = shutil.which("openssl")
    if path is None:  # pragma: no cover - environment problem, not a test result
        raise RuntimeError("openssl is needed to generate RSA test keys")
    return path


@functools.cache
def rsa_key(bits: int = 2048) -> KeyPair:
    """A fresh RSA key of ``bits`` bits (PKCS#1 PEM private, SubjectPublicKeyInfo public)."""
    openssl = _openssl()
    pem = subprocess.run(
        [openssl, "genrsa", "-traditional", str(bits)],
        check=True, capture_output=True,
    ).stdout
    der = subprocess.run(
        [openssl, "rsa", "-pubout", "-outform", "DER"],
        input=pem, check=True, capture_output=True,
    ).stdout
    return KeyPair("rsa", pem, base64.b64encode(der).decode("ascii"), bits)


@functools.cache
def ed25519_key(seed: bytes | None = None) -> KeyPair:
    """An ed25519 key (RFC 8463); a fixed 32-byte ``seed`` gives a reproducible key."""
    signing = nacl.signing.SigningKey(seed or nacl.utils.random(32))
    private = signing.encode(encoder=nacl.encoding.Base64Encoder)
    public = signing.verify_key.encode(encoder=nacl.encoding.Base64Encoder).decode("ascii")
    return KeyPair("ed25519", private, public, 256)


def sign(
    message: bytes,
    key: KeyPair,
    selector: str = "sel",
    domain: str = "example.com",
    *,
    algorithm: str | None = None,
    include_headers: list[str] | None = None,
    length: bool = False,
    canonicalize: tuple[bytes, bytes] = (b"relaxed", b"relaxed"),
) -> bytes:
    """``message`` with a DKIM-Signature (made by dkimpy) prepended."""
    if algorithm is None:
        algorithm = "ed25519-sha256" if key.kind == "ed25519" else "rsa-sha256"
    header = dkim.sign(
        message,
        selector.encode(),
        domain.encode(),
        key.private,
        signature_algorithm=algorithm.encode(),
        include_headers=[h.encode() for h in include_headers] if include_headers else None,
        length=length,
        canonicalize=canonicalize,
    )
    return bytes(header) + message


def zone_line(name: str, text: str | bytes) -> str:
    """One StaticResolver TXT line, split into quoted character-strings of at most 255 bytes."""
    data = text.encode() if isinstance(text, str) else text
    chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
    quoted = " ".join('"' + _escape(chunk) + '"' for chunk in chunks)
    return f"{name}. TXT {quoted}"


def _escape(chunk: bytes) -> str:
    out = []
    for byte in chunk:
        char = chr(byte)
        if char in '"\\' or not 0x20 <= byte < 0x7F:
            out.append(f"\\{byte:03d}")
        else:
            out.append(char)
    return "".join(out)


def key_name(selector: str, domain: str) -> str:
    return f"{selector}._domainkey.{domain}"


def sign_with_tags(
    message: bytes,
    key: KeyPair,
    tags: list[tuple[str, str]],
    signed_headers: list[str],
    canonicalization: str = "relaxed/relaxed",
) -> bytes:
    """Sign with exactly ``tags`` (in order; ``bh=`` and ``b=`` are added), bypassing the checks
    ``dkim.sign`` makes, so tests can build valid signatures a careful signer would refuse
    (no From in h=, an i= that is not under d=, ...)."""
    import hashlib

    from dkim.canonicalization import CanonicalizationPolicy

    algorithm = dict(tags).get("a", "ed25519-sha256" if key.kind == "ed25519" else "rsa-sha256")
    verifier = dkim.DKIM(message, signature_algorithm=algorithm.encode())
    policy = CanonicalizationPolicy.from_c_value(canonicalization.encode())
    hasher = hashlib.sha1 if algorithm == "rsa-sha1" else hashlib.sha256
    verifier.hasher = hasher
    body_hash = base64.b64encode(hasher(policy.canonicalize_body(verifier.body)).digest())
    if key.kind == "ed25519":
        private: object = nacl.signing.SigningKey(key.private, encoder=nacl.encoding.Base64Encoder)
    else:
        private = dkim.crypto.parse_pem_private_key(key.private)
    fields = [(name.encode(), value.encode()) for name, value in tags]
    fields += [(b"c", canonicalization.encode())] if "c" not in dict(tags) else []
    fields += [(b"h", b":".join(h.encode() for h in signed_headers)), (b"bh", body_hash),
               (b"b", b"0" * 60)]
    value = verifier.gen_header(fields, tuple(h.lower().encode() for h in signed_headers),
                                policy, b"DKIM-Signature", private)
    return b"DKIM-Signature: " + bytes(value) + message


def arc_seal(message: bytes, key: KeyPair, selector: str, domain: str,
             results: str) -> bytes:
    """``message`` as a forwarder at ``domain`` would pass it on: its own
    Authentication-Results (``results``, e.g. ``dmarc=pass header.from=bank.example``) copied
    into a new ARC set (made by dkimpy's ``arc_sign``) prepended to the message.

    dkimpy reads the A-R header of its own authserv-id (``domain`` here) to fill the
    ARC-Authentication-Results, so that header is added first and then left in the message,
    as a real forwarder leaves it.
    """
    with_results = f"Authentication-Results: {domain}; {results}\r\n".encode() + message
    fields = dkim.arc_sign(with_results, selector.encode(), domain.encode(), key.private,
                           domain.encode())
    return b"".join(fields) + with_results
