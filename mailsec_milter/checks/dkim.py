"""DKIM (RFC 6376, RFC 8463 ed25519, RFC 8301 hardening) for every signature of a message.

Owns: finding the signatures, fetching each key through our Lookup, and turning dkimpy's lossy
answers into RFC 8601 results with a reason.
Must not: decide a verdict, log, or reach DNS except through the Lookup it is given.

Why we do not call ``dkim.DKIM.verify()`` directly (see LIBRARY-NOTES.md): it swallows DNS
timeouts as ``False``, reports a missing key like a bad signature, lets rsa-sha1 pass and reads
a key object left over from the previous index. We use its signature field checks
(``validate_signature_fields``) and its key decoding (``evaluate_pk``, fed only ``k=`` and
``p=``) and own the rest: tag lists and what a key record allows are read in ``dkim_tags.py``
(why not dkimpy's: see there), canonicalisation, hashing and the public-key check are done
once per message in ``dkim_hashing.py`` (why: see there).

Which header fields are DKIM-Signature fields is decided once, by ``Header.is_named`` (ASCII
case-insensitive on the name as received), and each signature's tags, key and cryptographic
check are all read from that one field.
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
from .dkim_tags import (
    KeyRecord,
    key_refusal,
    parse_tag_list,
    query_methods_problem,
    read_key_record,
)

__all__ = ["DkimOutcome", "DkimSettings", "DkimSignatureOutcome", "check_dkim", "evaluate_key",
           "key_name", "parse_tag_list", "rsa_cost_problem"]

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


_H_SEPARATOR = re.compile(rb"\s*:\s*")  # dkimpy's split of h= (verify_headerprep)
_WHITESPACE = re.compile(rb"\s+")


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


@functools.lru_cache(maxsize=1024)
def evaluate_key(key: KeyRecord) -> tuple[Any, Any, Any, Any]:
    """dkimpy's key decoding (ASN.1, base64) once per distinct key, not per message.

    dkimpy sees only ``k=`` and ``p=`` (``KeyRecord.for_dkimpy``); everything else the record
    says was read by ``read_key_record``. Keys are read-only after parsing, so sharing them
    between threads is safe; a key that fails to decode raises every time (exceptions are not
    cached).
    """
    return dkim.evaluate_pk(b"key", key.for_dkimpy())  # type: ignore[no-any-return]


def check_dkim(lookup: Lookup, snapshot: MessageSnapshot, settings: DkimSettings) -> DkimOutcome:
    # One pass decides which fields are signatures and where each one is; its tags, its key
    # and the signature that is checked all come from that same field (issue 12: two name
    # comparisons once paired one field's d= with another field's signature).
    positions = [i for i, h in enumerate(snapshot.headers) if h.is_named("DKIM-Signature")]
    if not positions:
        return DkimOutcome()
    evaluated = positions[: max(0, settings.max_signatures)]
    # The fields as they came, not re-parsed from text: dkimpy's parser refuses a whole message
    # over one odd header name (any byte outside [\x21-\x7e]), which would turn every
    # signature, valid ones included, into permerror.
    hashes = MessageHashes([(h.name.encode("ascii", errors="replace"), h.raw_value)
                            for h in snapshot.headers], snapshot.body)
    outcomes = tuple(_verify_one(hashes, position, snapshot.headers[position], lookup, settings)
                     for position in evaluated)
    return DkimOutcome(outcomes, len(positions) - len(evaluated))


def _fields_for_dkimpy(tags: Mapping[str, bytes]) -> tuple[dict[bytes, bytes], list[bytes]]:
    """The signature's tags as ``dkim.DKIM.verify_headerprep`` holds them, after its field
    checks (mandatory tags, base64, x=/t=, i= under d=, ...), and the h= list — without a
    verifier object per message. Raises dkimpy's exceptions for a bad signature.

    q= is checked here (``query_methods_problem``) and not shown to dkimpy, which refuses any
    q= but exactly ``dns/txt`` (RFC 6376 §3.5 makes it a list whose unknown methods are
    ignored).
    """
    problem = query_methods_problem(tags)
    if problem:
        raise dkim.ValidationError(problem)
    sig = {name.encode("ascii"): value for name, value in tags.items() if name != "q"}
    dkim.validate_signature_fields(sig)
    return sig, [x.lower() for x in _H_SEPARATOR.split(sig[b"h"])]


def _signature_fields(value: bytes) -> tuple[dict[bytes, bytes], list[bytes]]:
    """``_fields_for_dkimpy`` of one signature field value."""
    tags = parse_tag_list(value)
    if tags is None:
        raise dkim.MessageFormatError("malformed signature tag list")
    return _fields_for_dkimpy(tags)


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
        b_prefix=_WHITESPACE.sub(b"", tags.get("b", b""))[:12].decode("ascii", "replace"),
        key_bits=key_bits,
        comment=comment,
    )


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:100]


def _verify_one(hashes: MessageHashes, position: int, header: Header,
                lookup: Lookup, settings: DkimSettings) -> DkimSignatureOutcome:
    tags = parse_tag_list(header.raw_value)
    if tags is None:
        return _describe(header, AuthResult.PERMERROR, "malformed signature tag list")
    algorithm = tags.get("a", b"").decode("ascii", errors="replace").strip().lower()
    if algorithm not in VERIFIABLE_ALGORITHMS:
        return _describe(header, AuthResult.PERMERROR, f"unknown algorithm {algorithm[:30]!r}")
    sig_header = hashes.field(position)
    try:
        sig, include_headers = _fields_for_dkimpy(tags)
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
    # Every restriction the record states is read before the key is used (never dropped
    # because another tag is odd: issue 12); a record we cannot read is no key.
    key = read_key_record(texts[0])
    if isinstance(key, str):
        return _describe(header, AuthResult.PERMERROR, key)
    try:
        pk, key_bits, _ktag, _tlsrpt = evaluate_key(key)
    except Exception as exc:  # garbage key text from DNS
        return _describe(header, AuthResult.PERMERROR, f"unusable key: {_short(exc)}")
    key_type = key.key_type
    too_costly = rsa_cost_problem(pk) if key_type == "rsa" else ""
    if too_costly:
        return _describe(header, AuthResult.PERMERROR, f"unusable key: {too_costly}", key_bits)
    if not algorithm.startswith(key_type + "-"):
        return _describe(header, AuthResult.PERMERROR, "key type does not match a=", key_bits)
    problem = key_refusal(key, algorithm, sig)
    if problem:
        return _describe(header, AuthResult.PERMERROR, problem, key_bits)

    try:
        # tlsrpt_key False: read_key_record refused every key whose s= leaves out email
        valid = hashes.verify(sig, include_headers, sig_header, pk, key_type.encode(), False)
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


def _unsigned_body_bytes(hashes: MessageHashes, sig: dict[bytes, bytes]) -> int:
    policy = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
    body = hashes.canonical_body(policy.body_algorithm.name)
    try:
        length = int(sig[b"l"])
    except ValueError:
        return len(body)
    return max(0, len(body) - length)
