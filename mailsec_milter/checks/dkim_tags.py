"""DKIM tag=value lists (RFC 6376 §3.2) and what a key record allows (§3.5 q=, §3.6.1).

Owns: the one tag-list parser every DKIM and ARC path reads signatures and key records with
(reporting, key prefetch, the fields handed to dkimpy, key records), the reading of a key
record's ``v=``/``k=``/``s=``/``h=``/``t=``/``p=`` tags, the restrictions a key puts on a
signature, and the signature's ``q=`` list.
Must not: reach DNS, verify anything, or map results to RFC 8601 words (dkim.py and arc.py do).

Why our own parser, not dkimpy's ``parse_tag_value``/``evaluate_pk`` (issue 12):
- dkimpy compares ``s=`` to ``email``/``*``/``tlsrpt`` as a whole string, so a key published
  for several services (``s=email:tlsrpt``, §3.6.1 allows a colon-separated list) is no key at
  all, and its ``validate_signature_fields`` wants ``q=`` to be exactly ``dns/txt``, where §3.5
  says a verifier ignores query methods it does not know;
- our previous parser lower-cased tag names, so ``D=`` beside ``d=`` was a "duplicate" and a
  key record with ``T=y`` beside ``t=s`` was unparsable — and its ``t=``/``h=`` restrictions were
  then skipped while dkimpy still verified with the key. Tag names are case-sensitive (§3.2).

So a key record is read once, here, and dkimpy only ever sees ``k=`` and ``p=`` of it
(``KeyRecord.for_dkimpy``): what a key allows can no longer be lost between two parsers.

Tag names: ``ALPHA *(ALPHA / DIGIT / "_")`` (§3.2). A name that starts with a letter but goes on
with other visible characters (``x-foo=``, ``a.b=``) is not a tag-name; like dkimpy and OpenDKIM
we skip such a tag as one we do not know (§3.2 says unknown tags are ignored) — it can never
stand in for, or hide, a tag we read. Anything else that is not ``name=value`` (no ``=``, a name
with white space inside or not starting with a letter, an empty tag-spec between two ``;``)
makes the whole list invalid, as do two tags of exactly the same name (skipped ones included,
as dkimpy counts them).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["KeyRecord", "key_refusal", "parse_tag_list", "query_methods_problem",
           "read_key_record"]

_TAG_NAME = re.compile(rb"[A-Za-z][A-Za-z0-9_]*")
_OTHER_NAME = re.compile(rb"[A-Za-z][\x21-\x7e]*")  # visible ASCII: skipped as unknown
_WSP = b" \t\r\n"
_KEY_TYPES = frozenset({"rsa", "ed25519"})


@functools.lru_cache(maxsize=1024)
def parse_tag_list(value: bytes) -> Mapping[str, bytes] | None:
    """The tags of an RFC 6376 §3.2 tag-list by their exact (case-sensitive) names, each value
    stripped of surrounding white space as dkimpy strips it; None when the text is not a
    tag-list. Never raises (it reads attacker text before anything is verified).

    Cached: a signature's tags are read when its header arrives, when it is verified and when
    it is reported, a key record's for every message it verifies; the result is read-only.
    """
    tags: dict[str, bytes] = {}
    skipped: set[bytes] = set()
    specs = value.strip().split(b";")
    if specs[-1] == b"":  # one trailing ";" is allowed
        specs.pop()
    for spec in specs:
        name, equals, rest = spec.partition(b"=")
        name = name.strip()
        if not equals:
            return None
        if _TAG_NAME.fullmatch(name) is None:
            if _OTHER_NAME.fullmatch(name) is None or name in skipped:
                return None
            skipped.add(name)
            continue  # not a tag-name: an unknown tag, skipped (module docstring)
        text = name.decode("ascii")
        if text in tags:
            return None  # §3.2: a duplicate tag invalidates the whole list
        tags[text] = rest.strip()
    return tags


def _items(value: bytes) -> frozenset[str]:
    """A colon-separated list (``s=``, ``h=``, ``t=``, ``q=``) as lower-case items; FWS may
    surround each colon. ABNF literals are case-insensitive (RFC 5234 §2.3)."""
    return frozenset(item.strip(_WSP).decode("ascii", errors="replace").lower()
                     for item in value.split(b":"))


def query_methods_problem(tags: Mapping[str, bytes]) -> str:
    """Why a signature's ``q=`` leaves us no way to fetch its key, or ''.

    §3.5: q= is a colon-separated list; methods a verifier does not know are ignored, and only
    a list without ``dns/txt`` is unusable (dkimpy wants q= to be exactly ``dns/txt``).
    """
    value = tags.get("q")
    if value is None or "dns/txt" in _items(value):
        return ""
    return f"q= offers no dns/txt query method ({value[:40].decode('ascii', 'replace')!r})"


@dataclass(frozen=True)
class KeyRecord:
    """What a DKIM key record (§3.6.1) says, read from its tags alone."""

    key_type: str  # k=, "rsa" when absent
    public_key: bytes  # p= as published (base64, may hold FWS); b"" means revoked
    services: frozenset[str]  # s=, {"*"} when absent
    hash_algorithms: frozenset[str] | None  # h=, None when absent (any)
    flags: frozenset[str]  # t=

    def for_dkimpy(self) -> bytes:
        """The record as dkimpy's ``evaluate_pk`` should read it: only ``k=`` and ``p=``, so
        that none of its whole-string comparisons (s=, v=) can refuse a key we accept."""
        return b"k=" + self.key_type.encode("ascii") + b"; p=" + self.public_key


@functools.lru_cache(maxsize=1024)
def read_key_record(text: bytes) -> KeyRecord | str:
    """The key record in ``text``, or why it cannot be used at all (a sentence)."""
    tags = parse_tag_list(text)
    if tags is None:
        return "malformed key record"
    version = tags.get("v")
    if version is not None and version != b"DKIM1":  # §3.6.1: such records are discarded
        return "key record v= is not DKIM1"
    public_key = tags.get("p")
    if public_key is None:
        return "key record has no p="
    if public_key == b"":
        return "key revoked"
    services = _items(tags["s"]) if "s" in tags else frozenset({"*"})
    if not services & {"email", "*"}:
        shown = tags["s"][:40].decode("ascii", "replace")
        return f"key is not for email (s={shown})"
    key_type = tags.get("k", b"rsa").strip(_WSP).decode("ascii", errors="replace").lower()
    if key_type not in _KEY_TYPES:
        return f"unknown key type k={key_type[:20]}"
    hashes = _items(tags["h"]) if "h" in tags else None
    flags = _items(tags["t"]) if "t" in tags else frozenset()
    return KeyRecord(key_type, public_key, services, hashes, flags)


def key_refusal(key: KeyRecord, algorithm: str, sig: Mapping[bytes, bytes] | None) -> str:
    """Why ``key`` refuses a signature made with ``algorithm`` (e.g. ``rsa-sha256``), or ''.

    ``sig`` (the signature's tags) is given for DKIM, where ``t=s`` applies: the i= domain must
    then be d= itself, not a subdomain (§3.6.1). ARC seals have no i= identity (None).
    """
    if key.hash_algorithms is not None and \
            algorithm.rpartition("-")[2] not in key.hash_algorithms:
        return "key h= does not allow the signature's hash"
    if sig is not None and "s" in key.flags and b"i" in sig:
        identity_domain = sig[b"i"].rpartition(b"@")[2].lower().rstrip(b".")
        if identity_domain != sig.get(b"d", b"").lower().rstrip(b"."):
            return "key t=s forbids an i= subdomain of d="
    return ""
