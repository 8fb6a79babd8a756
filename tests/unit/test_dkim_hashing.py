"""checks/dkim_hashing.py gives dkimpy's results, byte for byte, only faster.

The reference is dkimpy itself (``Relaxed.canonicalize_*`` and ``verify_sig_process``) on
generated input: bodies and field values built from the characters canonicalisation cares
about, messages signed by dkimpy with every c= combination, then tampered with. The one
deliberate difference (RFC 8017 §8.2.2: a signature that is not k octets, or not below the
modulus, is invalid; dkimpy accepts both) is tested on its own.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import dkim
import pytest
from dkim.canonicalization import Relaxed, Simple
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mailsec_milter.checks import dkim_hashing
from mailsec_milter.checks.dkim import _signature_fields
from mailsec_milter.checks.dkim_hashing import MessageHashes, relaxed_body, relaxed_header_value
from mailsec_milter.model import Envelope, Header, MessageSnapshot
from tests.support import dkimkeys

# Everything the relaxed algorithms treat specially, plus filler.
_PIECES = [b" ", b"  ", b"\t", b"\r\n", b"\n", b"\r", b"a", b"b", b"\x0b", b"\x0c", b":", b";"]
_bodies = st.lists(st.sampled_from(_PIECES), max_size=60).map(b"".join)


@settings(max_examples=1500, deadline=None)
@given(_bodies)
def test_relaxed_body_is_dkimpys(body: bytes) -> None:
    assert relaxed_body(body) == Relaxed.canonicalize_body(body)


@settings(max_examples=1500, deadline=None)
@given(_bodies)
def test_relaxed_header_value_is_dkimpys(value: bytes) -> None:
    [(_name, expected)] = Relaxed.canonicalize_headers([(b"X", value)])
    assert relaxed_header_value(value) == expected


@settings(max_examples=300, deadline=None)
@given(_bodies)
def test_simple_body_is_dkimpys(body: bytes) -> None:
    expected = Simple.canonicalize_body(re.sub(rb"\r?\n", b"\r\n", body))
    assert MessageHashes([], body).canonical_body(b"simple") == expected


def test_long_whitespace_runs_collapse_to_one_space() -> None:
    body = b"a" + b" \t" * 50_000 + b"b \t \r\n\r\n\r\n"
    assert relaxed_body(body) == b"a b\r\n" == Relaxed.canonicalize_body(body)


# --- whole signatures against verify_sig_process --------------------------------------------

_NAMES = ["From", "To", "Subject", "X-Extra", "x-extra", "Date", "Reply-To"]
_VALUES = st.lists(st.sampled_from([b" ", b"\t", b"a", b"b", b"\r\n ", b"\r\n\t", b"c;d"]),
                   min_size=1, max_size=12).map(lambda parts: b"v" + b"".join(parts))


def _outcome(run: Any) -> tuple[str, ...]:
    try:
        return ("returned", repr(run()))
    except Exception as exc:  # the exception type and text are part of what must match
        return ("raised", type(exc).__name__, str(exc))


def _fields(message: bytes) -> MessageSnapshot:
    """The message as the milter hands it over: field names exactly as written before the
    colon (``FROM :`` included, which dkimpy's own parser refuses)."""
    head, _, body = message.partition(b"\r\n\r\n")
    headers = []
    for field in re.split(rb"\r\n(?![ \t])", head):
        name, _, value = field.partition(b":")
        headers.append(Header(name.decode("ascii"), value))
    return MessageSnapshot(Envelope(None), tuple(headers), body)


def _reference_verifier(snapshot: MessageSnapshot) -> dkim.DKIM:
    """dkimpy's verifier holding those fields, line ends made CRLF as its parser makes them."""
    verifier = dkim.DKIM(None, minkey=0)
    verifier.headers = [[h.name.encode("ascii", "replace"),
                         re.sub(rb"\r?\n", b"\r\n", h.raw_value) + b"\r\n"]
                        for h in snapshot.headers]
    verifier.body = re.sub(rb"\r?\n", b"\r\n", snapshot.body)
    return verifier


def _ours(snapshot: MessageSnapshot) -> MessageHashes:
    return MessageHashes([(h.name.encode("ascii", "replace"), h.raw_value)
                          for h in snapshot.headers], snapshot.body)


def _both(message: bytes, index: int = 0) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """dkimpy (verify_headerprep + verify_sig_process) against ours (_signature_fields +
    MessageHashes.verify) for signature ``index``: same answer, or the same exception."""
    snapshot = _fields(message)
    reference = _reference_verifier(snapshot)
    hashes = _ours(snapshot)
    position = [i for i, h in enumerate(snapshot.headers)
                if h.name.lower() == "dkim-signature"][index]
    selector = dkim.util.parse_tag_value(hashes.field(position)[1])[b"s"]
    pk, bits, ktag, tlsrpt = dkim.evaluate_pk(b"key", _KEY_RECORDS[selector])

    def theirs() -> object:
        prepared = reference.verify_headerprep(idx=index)
        assert prepared
        sig, include, sig_headers = prepared
        reference.pk, reference.keysize, reference.ktag, reference.seqtlsrpt = (
            pk, bits, ktag, tlsrpt)
        return reference.verify_sig_process(sig, include, sig_headers[index], None)

    def ours() -> object:
        sig_header = hashes.field(position)
        sig, include = _signature_fields(sig_header[1])
        return hashes.verify(sig, include, sig_header, pk, ktag, bool(tlsrpt))

    return _outcome(theirs), _outcome(ours)


_RSA = dkimkeys.rsa_key(1024)
_ED = dkimkeys.ed25519_key(b"\x07" * 32)
_KEY_RECORDS = {b"rsa": _RSA.record().encode(), b"ed": _ED.record().encode()}


@st.composite
def _signed_messages(draw: st.DrawFn) -> bytes:
    headers = draw(st.lists(st.tuples(st.sampled_from(_NAMES), _VALUES), min_size=1,
                            max_size=6))
    headers.append(("From", b" a@example.com"))
    draw(st.randoms()).shuffle(headers)
    body = draw(_bodies)
    message = b"".join(n.encode() + b":" + v + b"\r\n" for n, v in headers) + b"\r\n" + body
    canon = (draw(st.sampled_from([b"simple", b"relaxed"])),
             draw(st.sampled_from([b"simple", b"relaxed"])))
    names = sorted({n for n, _v in headers} | {"From"})
    signed = draw(st.lists(st.sampled_from([*names, "Missing"]), max_size=5))
    selector, key = draw(st.sampled_from([("rsa", _RSA), ("ed", _ED)]))
    try:
        message = dkimkeys.sign(message, key, selector, include_headers=["From", *signed],
                                length=draw(st.booleans()), canonicalize=canon)
    except dkim.DKIMException:
        assume(False)
    tamper = draw(st.sampled_from(["none", "body-space", "body-append", "header-space",
                                   "second-from", "header-case"]))
    head, _, tail = message.partition(b"\r\n\r\n")
    if tamper == "body-space":
        tail = tail.replace(b"a", b"a \t", 1)
    elif tamper == "body-append":
        tail += b"appended\r\n"
    elif tamper == "header-space":
        head = head.replace(b"From: a", b"From:  a\t", 1)
    elif tamper == "second-from":
        head += b"\r\nFrom: b@example.net"
    elif tamper == "header-case":
        head = head.replace(b"\r\nFrom:", b"\r\nFROM :", 1)
    return head + b"\r\n\r\n" + tail


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_signed_messages())
def test_verify_matches_dkimpy(message: bytes) -> None:
    theirs, ours = _both(message)
    assert ours == theirs


def test_two_signatures_share_one_canonical_body(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = dkim_hashing.relaxed_body
    monkeypatch.setattr(dkim_hashing, "relaxed_body", lambda body: calls.append(1) or real(body))
    message = b"From: a@example.com\r\nSubject: s\r\n\r\nbody  text \r\n"
    message = dkimkeys.sign(message, _ED, "ed")
    message = dkimkeys.sign(message, _RSA, "rsa")
    hashes = _ours(_fields(message))
    for position in (0, 1):  # the two DKIM-Signature fields come first
        sig_header = hashes.field(position)
        sig, include = _signature_fields(sig_header[1])
        pk, _bits, ktag, _tlsrpt = dkim.evaluate_pk(b"key", _KEY_RECORDS[sig[b"s"]])
        assert hashes.verify(sig, include, sig_header, pk, ktag, False) is True
    assert len(calls) == 1


# --- the deliberate difference: RFC 8017 §8.2.2 -----------------------------------------------

def _rsa_signed(bits: int) -> tuple[bytes, dict[bytes, bytes]]:
    key = dkimkeys.rsa_key(bits)
    _KEY_RECORDS[f"rsa{bits}".encode()] = key.record().encode()
    message = dkimkeys.sign(b"From: a@example.com\r\n\r\nhello\r\n", key, f"rsa{bits}")
    prepared = dkim.DKIM(message).verify_headerprep(idx=0)
    assert prepared
    return message, prepared[0]


def _with_signature(message: bytes, old_b: bytes, new: bytes) -> bytes:
    return message.replace(old_b, base64.b64encode(new), 1)


@pytest.mark.parametrize("change", ["plus-modulus", "leading-zero"])
def test_non_canonical_rsa_signatures_are_invalid_unlike_dkimpy(change: str) -> None:
    message, sig = _rsa_signed(2048)
    old_b = sig[b"b"]  # as folded in the message (b= itself is not hashed)
    assert old_b in message
    signature = base64.b64decode(old_b.replace(b"\r\n ", b""))
    modulus = dkim.evaluate_pk(b"key", _KEY_RECORDS[b"rsa2048"])[0]["modulus"]
    if change == "plus-modulus":  # same value mod n, but not below n (RSAVP1 step 1)
        value = int.from_bytes(signature, "big") + modulus
        forged = value.to_bytes((value.bit_length() + 7) // 8, "big")
    else:  # not k octets long (RSASSA-PKCS1-v1_5-VERIFY step 1)
        forged = b"\x00" + signature
    theirs, ours = _both(_with_signature(message, old_b, forged))
    assert theirs == ("returned", "True")  # dkimpy's arithmetic accepts it
    assert ours == ("returned", "False")


def test_small_rsa_keys_keep_dkimpys_arithmetic() -> None:
    message, _sig = _rsa_signed(512)
    theirs, ours = _both(message)
    assert ours == theirs == ("returned", "True")
    modulus = dkim.evaluate_pk(b"key", _KEY_RECORDS[b"rsa512"])[0]["modulus"]
    assert dkim_hashing._openssl_rsa_key(modulus, 65537) is None


_TAG_TEXT = st.lists(st.sampled_from([b"b", b"b=", b" b =", b";b=", b"bh=", b"\tb\r\n =", b"A",
                                      b"z9+/", b"=", b" ", b"\r\n ", b"\r\n", b"\n", b";",
                                      b"\x0b", b"-", b"h=a:b"]),
                     max_size=30).map(b"".join)


@settings(max_examples=3000, deadline=None)
@given(_TAG_TEXT)
def test_b_tag_removal_is_dkimpys(value: bytes) -> None:
    assert dkim_hashing._B_TAG_VALUE.sub(b"\\1", value) == dkim.RE_BTAG.sub(b"\\1", value)


@settings(max_examples=1500, deadline=None)
@given(_bodies)
def test_crlf_is_dkimpys_line_end_rule(data: bytes) -> None:
    assert dkim_hashing.crlf(data) == re.sub(rb"\r?\n", b"\r\n", data)
