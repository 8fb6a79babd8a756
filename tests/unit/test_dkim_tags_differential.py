"""Generated DKIM signatures and key records, differential against dkimpy 1.1.8 (issue 12).

Tag lists vary in what issue 12 found mishandled: name case (``D=`` beside ``d=``), order,
unknown and non-tag-name tags (``x-foo=``, ``a.b=``), lists in ``s=``/``h=``/``q=``/``t=``,
white space and folding around names, ``=`` and values, duplicates. Each message is signed
here (dkimpy's own header hashing, PyNaCl's ed25519), so any tag text can be signed.

The property: there is no input where we pass and dkimpy fails, except the deliberate
differences of docs/CONFORMANCE.md ("DKIM tag parsing"). Those are taken out by asking dkimpy
about the *twin* of each input — the same tags with a service list that includes email
written ``s=email``, a q= list that includes dns/txt written ``q=dns/txt``, and k= in lower
case — so an input outside those differences is compared as it is. Each deliberate difference
is also asserted on its own (``test_deliberate_difference_*``): one that silently disappears
fails. Bounded: a few hundred examples, a few seconds.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

import dkim
import nacl.encoding
import nacl.signing
import pytest
from dkim.canonicalization import CanonicalizationPolicy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailsec_milter.checks.dkim import DkimSettings, check_dkim
from mailsec_milter.dns import StaticResolver
from mailsec_milter.model import AuthResult, Envelope, MessageSnapshot, parse_message
from tests.support.dkimkeys import zone_line

MESSAGE = (
    b"From: Joe <joe@example.com>\r\n"
    b"To: Sam <sam@example.net>\r\n"
    b"Subject: differential\r\n"
    b"Message-ID: <diff-1@example.com>\r\n"
    b"\r\n"
    b"Hello,  world.\r\n"
)
SIGNER = nacl.signing.SigningKey(b"\x0e" * 32)
PUBLIC = SIGNER.verify_key.encode(encoder=nacl.encoding.Base64Encoder)
RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
BODY_HASH = base64.b64encode(hashlib.sha256(
    RELAXED.canonicalize_body(dkim.DKIM(MESSAGE).body)).digest())
SELECTOR = "sel"
DOMAIN = "example.com"

Tags = list[tuple[str, str]]

# --- rendering and signing ------------------------------------------------------------------

_SPACES = st.sampled_from(["", "", " ", "\t", "  ", "\r\n ", "\r\n\t"])
_DNS_SPACES = st.sampled_from(["", "", " ", "\t"])  # a TXT record holds no line breaks


@dataclass(frozen=True)
class Layout:
    """White space around each tag's name, "=" and value, and whether a ";" ends the list."""

    spaces: tuple[tuple[str, str, str, str], ...]
    trailing_semicolon: bool


def layouts(count: int, spaces: st.SearchStrategy[str]) -> st.SearchStrategy[Layout]:
    one = st.tuples(spaces, spaces, spaces, spaces)
    return st.builds(Layout, st.tuples(*[one] * count), st.booleans())


def render(tags: Tags, layout: Layout) -> str:
    parts = []
    for (name, value), (a, b, c, d) in zip(tags, layout.spaces, strict=False):
        parts.append(f"{a}{name}{b}={c}{value}{d}")
    return ";".join(parts) + (";" if layout.trailing_semicolon else "")


def sign(tags: Tags, layout: Layout) -> bytes:
    """MESSAGE with a DKIM-Signature of exactly ``tags`` laid out as ``layout``, then
    ``bh=`` and ``b=``: the header hash is dkimpy's (``hash_headers`` over the fields h= names,
    selected as dkimpy's verifier selects them), the signature PyNaCl's ed25519 (RFC 8463)."""
    text = render(tags, layout).rstrip(";").rstrip("\r\n\t ")
    value = " " + text + f"; bh={BODY_HASH.decode()}; b="
    h_value = dict(tags).get("h", "from")
    include = [x.lower() for x in re.split(rb"\s*:\s*", h_value.encode())]
    if b"from" in include:  # what dkimpy's verifier adds (its bug#644046 fix)
        include.append(b"from")
    hasher = hashlib.sha256()
    headers = RELAXED.canonicalize_headers(dkim.DKIM(MESSAGE).headers)
    dkim.hash_headers(hasher, RELAXED, headers, include,
                      (b"DKIM-Signature", value.encode()), None)
    signature = base64.b64encode(SIGNER.sign(hasher.digest()).signature).decode()
    return f"DKIM-Signature:{value}{signature}\r\n".encode() + MESSAGE


# --- our answer and dkimpy's -----------------------------------------------------------------

def ours(message: bytes, key_record: str) -> AuthResult:
    headers, body = parse_message(message)
    resolver = StaticResolver.from_zone_text(
        zone_line(f"{SELECTOR}._domainkey.{DOMAIN}", key_record))
    outcome = check_dkim(resolver, MessageSnapshot(Envelope("192.0.2.1"), headers, body),
                         DkimSettings())
    assert len(outcome.signatures) == 1
    return outcome.signatures[0].result


def dkimpy_passes(message: bytes, key_record: str) -> bool:
    records = {f"{SELECTOR}._domainkey.{DOMAIN}": key_record.encode()}

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name.decode("ascii", "replace").rstrip(".").lower())

    return bool(dkim.verify(message, dnsfunc=dnsfunc))


# --- generated tag lists -----------------------------------------------------------------------

def _list(items: list[str], spaces: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A colon-separated list of 1-3 of ``items`` with white space around the colons."""
    def join(picked: list[str], gaps: list[tuple[str, str]]) -> str:
        out = picked[0]
        for item, (before, after) in zip(picked[1:], gaps, strict=False):
            out += f"{before}:{after}{item}"
        return out

    return st.builds(join, st.lists(st.sampled_from(items), min_size=1, max_size=3),
                     st.lists(st.tuples(spaces, spaces), min_size=2, max_size=2))


_SIG_EXTENSIONS = [("D", "other.example"), ("S", "other"), ("Q", "x-other"), ("A", "rsa-sha1"),
                   ("x-foo", "bar"), ("z9", "1"), ("foo_bar", "x"), ("a.b", "c"),
                   ("v", "1"), ("d", "other.example"), ("x-foo", "again")]
_KEY_EXTENSIONS = [("T", "y"), ("K", "rsa"), ("S", "tlsrpt"), ("H", "sha1"), ("x-foo", "bar"),
                   ("a.b", "c"), ("n", "notes about this key"), ("p", "AAAA"), ("t", "y"),
                   ("x-foo", "again"), ("V", "DKIM2")]


@st.composite
def signature_tags(draw: st.DrawFn) -> Tags:
    signed = _list(["from", "From", "subject", "SUBJECT", "to", "message-id"], _SPACES)
    h_value = draw(signed)
    if "from" not in _items(h_value) and draw(st.integers(0, 4)):  # mostly signed, as it must
        h_value = draw(st.sampled_from(["from:", "From : ", "FROM\t:"])) + h_value
    tags: Tags = [("v", "1"), ("a", "ed25519-sha256"), ("d", DOMAIN), ("s", SELECTOR),
                  ("c", "relaxed/relaxed"), ("h", h_value)]
    if draw(st.booleans()):
        tags.append(("i", draw(st.sampled_from(
            ["joe@example.com", "@example.com", "joe@sub.example.com", "@EXAMPLE.COM"]))))
    if draw(st.booleans()):
        tags.append(("q", draw(_list(["dns/txt", "DNS/TXT", "x-other", "dns", "x/y"],
                                     _SPACES))))
    tags += draw(st.lists(st.sampled_from(_SIG_EXTENSIONS), max_size=3))
    return list(draw(st.permutations(tags)))


@st.composite
def key_tags(draw: st.DrawFn) -> Tags:
    tags: Tags = [("p", PUBLIC.decode())]
    tags.append(("k", draw(st.sampled_from(["ed25519"] * 4 + ["ED25519", "Ed25519", "rsa"]))))
    if draw(st.booleans()):
        tags.append(("s", draw(_list(["email", "tlsrpt", "*", "x-y", "EMAIL"], _DNS_SPACES))))
    if draw(st.booleans()):
        tags.append(("h", draw(_list(["sha256", "sha1", "SHA256"], _DNS_SPACES))))
    if draw(st.booleans()):
        tags.append(("t", draw(_list(["y", "s", "S", "x"], _DNS_SPACES))))
    tags += draw(st.lists(st.sampled_from(_KEY_EXTENSIONS), max_size=3))
    tags = list(draw(st.permutations(tags)))
    if draw(st.booleans()):
        tags.insert(0, ("v", draw(st.sampled_from(["DKIM1", "DKIM1", "DKIM2"]))))
    return tags


def _items(value: str) -> list[str]:
    return [item.strip(" \t\r\n").lower() for item in value.split(":")]


def key_twin(tags: Tags) -> Tags:
    """The key record as dkimpy must read it to agree where we differ on purpose: a service
    list that includes email or * written ``s=email``, k= in lower case (RFC 6376 §3.6.1,
    RFC 5234 §2.3)."""
    twin = []
    for name, value in tags:
        if name == "s" and {"email", "*"} & set(_items(value)):
            value = "email"
        elif name == "k":
            value = value.lower()
        twin.append((name, value))
    return twin


def signature_twin(tags: Tags) -> Tags:
    """The signature as dkimpy must read it to agree where we differ on purpose: a q= list
    that includes dns/txt written ``q=dns/txt`` (RFC 6376 §3.5)."""
    return [(name, "dns/txt" if name == "q" and "dns/txt" in _items(value) else value)
            for name, value in tags]


# --- the property ---------------------------------------------------------------------------------

@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sig=signature_tags(), sig_layout=layouts(12, _SPACES), key=key_tags(),
       key_layout=layouts(12, _DNS_SPACES))
def test_we_never_pass_where_dkimpy_fails(sig: Tags, sig_layout: Layout, key: Tags,
                                          key_layout: Layout) -> None:
    message = sign(sig, sig_layout)
    record = render(key, key_layout)
    if ours(message, record) is not AuthResult.PASS:
        return
    twin_message = sign(signature_twin(sig), sig_layout)
    twin_record = render(key_twin(key), key_layout)
    assert dkimpy_passes(twin_message, twin_record), (message, record)


def test_the_generator_reaches_both_answers() -> None:
    """The corpus is not vacuous: plain inputs pass on both sides, and our checks (h=, t=s,
    duplicate tags) refuse some that dkimpy lets pass."""
    plain = [("v", "1"), ("a", "ed25519-sha256"), ("d", DOMAIN), ("s", SELECTOR),
             ("c", "relaxed/relaxed"), ("h", "from:subject")]
    layout = Layout(((" ", "", "", ""),) * 12, False)
    record = f"v=DKIM1; k=ed25519; p={PUBLIC.decode()}"
    message = sign(plain, layout)
    assert ours(message, record) is AuthResult.PASS and dkimpy_passes(message, record)
    subdomain = sign([*plain, ("i", "joe@sub.example.com")], layout)
    assert dkimpy_passes(subdomain, record + "; t=s")
    assert ours(subdomain, record + "; t=s") is AuthResult.PERMERROR


# --- the deliberate differences, each asserted --------------------------------------------------

PLAIN = [("v", "1"), ("a", "ed25519-sha256"), ("d", DOMAIN), ("s", SELECTOR),
         ("c", "relaxed/relaxed"), ("h", "from:subject")]
LAYOUT = Layout(((" ", "", "", ""),) * 12, False)
RECORD = f"v=DKIM1; k=ed25519; p={PUBLIC.decode()}"


@pytest.mark.parametrize(("section", "sig", "record"), [
    ("RFC 6376 §3.6.1 s= list", PLAIN, RECORD + "; s=email:tlsrpt"),
    ("RFC 6376 §3.6.1 s= list", PLAIN, RECORD + "; s=x-other:*"),
    ("RFC 5234 §2.3 s= case", PLAIN, RECORD + "; s=EMAIL"),
    ("RFC 5234 §2.3 k= case", PLAIN, f"v=DKIM1; k=ED25519; p={PUBLIC.decode()}"),
    ("RFC 6376 §3.5 q= list", [*PLAIN, ("q", "dns/txt:x-other")], RECORD),
    ("RFC 5234 §2.3 q= case", [*PLAIN, ("q", "DNS/TXT")], RECORD),
])
def test_deliberate_difference_we_pass_where_dkimpy_fails(section: str, sig: Tags,
                                                         record: str) -> None:
    message = sign(sig, LAYOUT)
    assert ours(message, record) is AuthResult.PASS, section
    assert not dkimpy_passes(message, record), section
