"""DKIM (RFC 6376, RFC 8463 ed25519, RFC 8301 hardening) for every signature of a message.

Owns: finding the signatures, fetching each key through our Lookup, and turning dkimpy's lossy
answers into RFC 8601 results with a reason.
Must not: decide a verdict, log, or reach DNS except through the Lookup it is given.

Why we do not call ``dkim.DKIM.verify()`` directly (see LIBRARY-NOTES.md): it swallows DNS
timeouts as ``False``, reports a missing key like a bad signature, lets rsa-sha1 pass and reads
a key object left over from the previous index. We use its signature and key parsing
(``parse_tag_value``, ``validate_signature_fields``, ``evaluate_pk``) and own the rest;
canonicalisation, hashing and the public-key check are done once per message in
``dkim_hashing.py`` (why: see there).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dkim
from dkim.canonicalization import CanonicalizationPolicy

from ..dns import DnsOutcome, Lookup
from ..model import AuthResult, Header, MessageSnapshot
from .dkim_hashing import MessageHashes

MIN_RSA_BITS = 1024  # RFC 8301 §3.2: keys below 1024 bits must not be treated as valid
# The key comes from the signer's DNS, so its size is attacker-chosen, and dkimpy's RSA is a
# plain pow() that holds the GIL: a 32768-bit key with a 32768-bit exponent costs ~1 minute of
# CPU per signature, stalling every session. Refuse what OpenSSL refuses for public-key
# operations (OPENSSL_RSA_MAX_MODULUS_BITS; OPENSSL_RSA_MAX_PUBEXP_BITS above
# OPENSSL_RSA_SMALL_MODULUS_BITS), which bounds one verification to ~20 ms.
MAX_RSA_BITS = 16384
MAX_RSA_EXPONENT_BITS = 64
RSA_SMALL_MODULUS_BITS = 3072
ACCEPTED_ALGORITHMS = frozenset({"rsa-sha256", "ed25519-sha256"})
# rsa-sha1 is still verified, so that a forgery reads `fail` and a genuine one `policy`
# (RFC 8301 §3.1: never `pass`).
VERIFIABLE_ALGORITHMS = ACCEPTED_ALGORITHMS | {"rsa-sha1"}


@dataclass(frozen=True)
class DkimSignatureOutcome:
    """One signature's result, with what A-R reports (header.d/i/s/a/b) and why."""

    result: AuthResult
    domain: str = ""
    selector: str = ""
    algorithm: str = ""
    identity: str = ""
    b_prefix: str = ""
    key_bits: int | None = None
    comment: str = ""


@dataclass(frozen=True)
class DkimOutcome:
    signatures: tuple[DkimSignatureOutcome, ...] = ()
    skipped: int = 0  # signatures beyond max_signatures, not evaluated

    @property
    def result(self) -> AuthResult:
        """The best single word for the message (pass if any signature passed)."""
        if not self.signatures:
            return AuthResult.NONE
        order = [AuthResult.PASS, AuthResult.TEMPERROR, AuthResult.FAIL, AuthResult.POLICY,
                 AuthResult.NEUTRAL, AuthResult.PERMERROR]
        return min((s.result for s in self.signatures), key=order.index)


@dataclass(frozen=True)
class DkimSettings:
    max_signatures: int = 10
    # l= shorter than the body: RFC 6376 §8.2 warns of appended content
    allow_partial_body: bool = False


_TAG_RE = re.compile(rb"\s*([A-Za-z][A-Za-z0-9_]*)\s*=(.*)", re.S)
_WHITESPACE = re.compile(rb"\s+")
_H_SEPARATOR = re.compile(rb"\s*:\s*")  # dkimpy's split of h= (verify_headerprep)


@functools.lru_cache(maxsize=256)
def parse_tag_list(value: bytes) -> Mapping[str, bytes] | None:
    """Tolerant RFC 6376 §3.2 tag=value parser; None when the text is not a tag list.

    Used for reporting and prefetching before the real verification, so it must never raise.
    Duplicate tags make the list invalid (§3.2). Cached: one signature's tags are read when
    its header arrives, when it is verified and when it is reported, and a key record's for
    every message it verifies; the result is read-only (``Mapping``).
    """
    tags: dict[str, bytes] = {}
    for part in value.split(b";"):
        if not part.strip():
            continue
        match = _TAG_RE.match(part)
        if match is None:
            return None
        name = match.group(1).decode("ascii").lower()
        if name in tags:
            return None
        tags[name] = _WHITESPACE.sub(b"", match.group(2)) if name in ("b", "bh", "h") else (
            match.group(2).strip()
        )
    return tags


def key_name(tags: Mapping[str, bytes]) -> str | None:
    """The DNS name of the key a signature names (``s._domainkey.d``), or None if unusable."""
    try:
        selector = tags["s"].decode("ascii").strip()
        domain = tags["d"].decode("ascii").strip().rstrip(".")
    except (KeyError, UnicodeDecodeError):
        return None
    if not selector or not domain or any(c.isspace() for c in selector + domain):
        return None
    return f"{selector}._domainkey.{domain}".lower()


def signature_headers(snapshot: MessageSnapshot) -> tuple[Header, ...]:
    return snapshot.headers_named("DKIM-Signature")


@functools.lru_cache(maxsize=1024)
def evaluate_key(key_text: bytes) -> tuple[Any, Any, Any, Any]:
    """dkimpy's key parsing (ASN.1, base64) once per distinct key record, not per message.

    Keys are read-only after parsing, so sharing them between threads is safe; a record that
    fails to parse raises every time (exceptions are not cached).
    """
    return dkim.evaluate_pk(b"key", key_text)  # type: ignore[no-any-return]


def check_dkim(lookup: Lookup, snapshot: MessageSnapshot, settings: DkimSettings) -> DkimOutcome:
    headers = signature_headers(snapshot)
    if not headers:
        return DkimOutcome()
    evaluated = headers[: max(0, settings.max_signatures)]
    # The fields as they came, not re-parsed from text: dkimpy's parser refuses a whole message
    # over one odd header name (any byte outside [\x21-\x7e]), which would turn every
    # signature, valid ones included, into permerror.
    names = [h.name.encode("ascii", errors="replace") for h in snapshot.headers]
    hashes = MessageHashes([(name, h.raw_value) for name, h in zip(names, snapshot.headers,
                                                                   strict=True)],
                           snapshot.body)
    positions = [i for i, name in enumerate(names) if name.lower() == b"dkim-signature"]
    outcomes = tuple(
        _verify_one(hashes, positions[number] if number < len(positions) else None, header,
                    lookup, settings)
        for number, header in enumerate(evaluated)
    )
    return DkimOutcome(outcomes, len(headers) - len(evaluated))


def _signature_fields(value: bytes) -> tuple[dict[bytes, bytes], list[bytes]]:
    """What ``dkim.DKIM.verify_headerprep`` reads from one signature field: dkimpy's own tag
    parse and field checks (mandatory tags, base64, x=/t=, i= under d=, ...) and the h= list,
    without building a verifier object per message and rescanning every header per signature.
    """
    try:
        sig: dict[bytes, bytes] = dkim.util.parse_tag_value(value)
    except dkim.util.InvalidTagValueList as exc:
        raise dkim.MessageFormatError(exc) from exc
    dkim.validate_signature_fields(sig)
    return sig, [x.lower() for x in _H_SEPARATOR.split(sig[b"h"])]


def _describe(header: Header, result: AuthResult, comment: str,
              key_bits: int | None = None) -> DkimSignatureOutcome:
    tags = parse_tag_list(header.raw_value) or {}

    def text(tag: str) -> str:
        return tags.get(tag, b"").decode("utf-8", errors="replace").strip()

    return DkimSignatureOutcome(
        result=result,
        domain=text("d").lower().rstrip("."),
        selector=text("s"),
        algorithm=text("a").lower(),
        identity=text("i"),
        b_prefix=text("b")[:12],
        key_bits=key_bits,
        comment=comment,
    )


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:100]


def _verify_one(hashes: MessageHashes, position: int | None, header: Header,
                lookup: Lookup, settings: DkimSettings) -> DkimSignatureOutcome:
    tags = parse_tag_list(header.raw_value)
    if tags is None:
        return _describe(header, AuthResult.PERMERROR, "malformed signature tag list")
    algorithm = tags.get("a", b"").decode("ascii", errors="replace").strip().lower()
    if algorithm not in VERIFIABLE_ALGORITHMS:
        return _describe(header, AuthResult.PERMERROR, f"unknown algorithm {algorithm[:30]!r}")
    if position is None:
        return _describe(header, AuthResult.PERMERROR, "signature not found")
    sig_header = hashes.field(position)
    try:
        sig, include_headers = _signature_fields(sig_header[1])
    except Exception as exc:  # dkimpy parses attacker text: any crash is a bad signature
        return _describe(header, AuthResult.PERMERROR, f"invalid signature: {_short(exc)}")
    if b"from" not in include_headers:
        return _describe(header, AuthResult.PERMERROR, "From is not signed (RFC 6376 5.4)")
    name = key_name(tags)
    if name is None:
        return _describe(header, AuthResult.PERMERROR, "no usable d= and s=")

    answer = lookup.query(name, "TXT")
    if answer.outcome.is_temporary:
        return _describe(header, AuthResult.TEMPERROR, f"key lookup {answer.outcome.value}")
    texts = answer.texts()
    if answer.outcome is not DnsOutcome.ANSWER or not texts:
        return _describe(header, AuthResult.PERMERROR, "no key for signature")
    key_text = texts[0]
    key_tags = parse_tag_list(key_text)
    if key_tags is not None and key_tags.get("p", None) == b"":
        return _describe(header, AuthResult.PERMERROR, "key revoked")
    try:
        pk, key_bits, ktag, seqtlsrpt = evaluate_key(key_text)
    except Exception as exc:  # garbage key text from DNS
        return _describe(header, AuthResult.PERMERROR, f"unusable key: {_short(exc)}")
    if pk is None:  # evaluate_pk silently drops keys with an unknown s= service type
        return _describe(header, AuthResult.PERMERROR, "key is not for email (s= tag)")
    key_type = ktag.decode() if isinstance(ktag, bytes) else str(ktag)
    too_costly = rsa_cost_problem(pk) if key_type == "rsa" else ""
    if too_costly:
        return _describe(header, AuthResult.PERMERROR, f"unusable key: {too_costly}", key_bits)
    if not algorithm.startswith(key_type + "-"):
        return _describe(header, AuthResult.PERMERROR, "key type does not match a=", key_bits)
    problem = _key_restriction(key_tags or {}, algorithm, sig)
    if problem:
        return _describe(header, AuthResult.PERMERROR, problem, key_bits)

    try:
        valid = hashes.verify(sig, include_headers, sig_header, pk, key_type.encode(),
                              bool(seqtlsrpt))
    except dkim.ValidationError as exc:
        message = str(exc)
        if "body hash mismatch" in message:
            return _describe(header, AuthResult.FAIL, "body hash did not verify", key_bits)
        return _describe(header, AuthResult.PERMERROR, f"invalid signature: {_short(exc)}",
                         key_bits)
    except Exception as exc:  # malformed b=/bh=/l=/c= or a key the crypto code refuses
        return _describe(header, AuthResult.PERMERROR, f"verification error: {_short(exc)}",
                         key_bits)
    if not valid:
        return _describe(header, AuthResult.FAIL, "signature did not verify", key_bits)
    if algorithm == "rsa-sha1":
        return _describe(header, AuthResult.POLICY,
                         "signature verified, but rsa-sha1 is not acceptable (RFC 8301)", key_bits)
    if key_type == "rsa" and key_bits is not None and key_bits < MIN_RSA_BITS:
        return _describe(header, AuthResult.POLICY,
                         f"{key_bits}-bit RSA key is below {MIN_RSA_BITS} (RFC 8301)", key_bits)
    if b"l" in sig and not settings.allow_partial_body:
        unsigned = _unsigned_body_bytes(hashes, sig)
        if unsigned > 0:
            return _describe(header, AuthResult.POLICY,
                             f"l= leaves {unsigned} body bytes unsigned", key_bits)
    return _describe(header, AuthResult.PASS, f"{key_bits}-bit key" if key_bits else "", key_bits)


def rsa_cost_problem(pk: object) -> str:
    """Why verifying with this RSA key would cost too much CPU (see MAX_RSA_BITS), or ''."""
    if not isinstance(pk, dict):
        return "not an RSA public key"
    modulus, exponent = pk.get("modulus"), pk.get("publicExponent")
    if not isinstance(modulus, int) or not isinstance(exponent, int):
        return "not an RSA public key"
    bits = modulus.bit_length()
    if bits > MAX_RSA_BITS:
        return f"{bits}-bit RSA key is over {MAX_RSA_BITS} bits"
    if bits > RSA_SMALL_MODULUS_BITS and exponent.bit_length() > MAX_RSA_EXPONENT_BITS:
        return (f"RSA public exponent of {exponent.bit_length()} bits "
                f"(over {MAX_RSA_EXPONENT_BITS} with a key over {RSA_SMALL_MODULUS_BITS} bits)")
    return ""


def _key_restriction(key_tags: Mapping[str, bytes], algorithm: str,
                     sig: dict[bytes, bytes]) -> str:
    """Why the key record refuses this signature (RFC 6376 3.6.1 h= and t=s), or ''."""
    allowed = key_tags.get("h")
    if allowed is not None:
        hashes = {h.strip().lower() for h in allowed.split(b":")}
        if algorithm.rpartition("-")[2].encode() not in hashes:
            return "key h= does not allow the signature's hash"
    flags = {f.strip().lower() for f in key_tags.get("t", b"").split(b":")}
    if b"s" in flags and b"i" in sig:
        identity_domain = sig[b"i"].rpartition(b"@")[2].lower().rstrip(b".")
        if identity_domain != sig.get(b"d", b"").lower().rstrip(b"."):
            return "key t=s forbids an i= subdomain of d="
    return ""


def _unsigned_body_bytes(hashes: MessageHashes, sig: dict[bytes, bytes]) -> int:
    policy = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
    body = hashes.canonical_body(policy.body_algorithm.name)
    try:
        length = int(sig[b"l"])
    except ValueError:
        return len(body)
    return max(0, len(body) - length)
