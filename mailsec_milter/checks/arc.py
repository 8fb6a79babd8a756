"""ARC (RFC 8617) chain validation: the cv= a receiver computes, the oldest instance whose
ARC-Message-Signature still validates, and what each sealer recorded.

Owns: finding the ARC sets, validating the chain through dkimpy with DNS from our Lookup, and
reading each ARC-Authentication-Results header far enough for local policy (``method=result``
and ``header.from``).
Must not: decide a verdict (trusting a sealer is policy.py's), log, or reach DNS except
through the Lookup it is given.

Why dkimpy is wrapped rather than called as is (LIBRARY-NOTES.md):
- its key-record reading compares s= as a whole string (a key for ``email:tlsrpt`` is no
  key) and skips h=; the record is read by ``dkim_tags.read_key_record`` instead, and dkimpy
  gets only its k= and p=;
- its default DNS swallows timeouts; ours raises ``_DnsTemporaryError``, which dkimpy does not
  catch, so DNS trouble becomes ``temperror`` instead of a chain that "failed";
- its RSA is a pure-Python ``pow()`` holding the GIL: a key from the sealer's DNS bigger than
  ``dkim.MAX_RSA_BITS`` is answered as "no key" (the set fails) instead of stalling every
  session for a minute;
- when the newest seal says ``cv=fail`` it returns ``None`` ("chain terminated"); RFC 8617
  §5.2 step 2 makes that chain ``fail``;
- its message parser refuses a whole message over one odd header name; that, like any other
  exception from parsing attacker text, is a ``fail`` with the reason, never a crash.

Each ARC-Authentication-Results is read with the ``authres`` package; one it cannot parse
counts as recording nothing, so it can never vouch for a message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import authres
import authres.dmarc
import dkim

from ..dns import DnsOutcome, Lookup
from ..model import AuthResult, MessageSnapshot, field_name_key
from .dkim import evaluate_key, parse_tag_list, rsa_cost_problem
from .dkim_tags import key_refusal, read_key_record

ARC_HEADERS = ("arc-seal", "arc-message-signature", "arc-authentication-results")
MAX_INSTANCES = 50  # RFC 8617 §4.2.1: i= is 1..50; a longer chain is fail


@dataclass(frozen=True)
class ArcSet:
    """One ARC set as validated: who sealed it and what its AAR recorded."""

    instance: int
    seal_domain: str
    seal_valid: bool
    message_signature_valid: bool
    chain_status: str  # the cv= this sealer wrote
    recorded: tuple[tuple[str, str], ...] = ()  # (method, result) from its AAR, in order
    recorded_header_from: str = ""  # header.from of the dmarc entry of its AAR, if any

    def recorded_result(self, method: str) -> str | None:
        """The first result the sealer recorded for ``method`` (e.g. "dmarc"), or None."""
        return next((result for name, result in self.recorded if name == method), None)


@dataclass(frozen=True)
class ArcOutcome:
    """``result`` is the chain validation status in A-R words: none, pass, fail, temperror."""

    result: AuthResult = AuthResult.NONE
    instances: int = 0
    oldest_pass: int | None = None  # header.oldest-pass (RFC 8617 §5.2 step 6), when pass
    sets: tuple[ArcSet, ...] = ()  # newest first
    # d= of the ARC-Seal with the highest i=, read from the header even when the chain could
    # not be validated (policy needs it to know whether a DNS failure could matter)
    newest_sealer: str = ""
    comment: str = ""

    @property
    def newest(self) -> ArcSet | None:
        return self.sets[0] if self.sets else None


class _DnsTemporaryError(Exception):
    """Raised from our dnsfunc; dkimpy catches only its own exceptions, so this reaches us."""


def has_arc_headers(snapshot: MessageSnapshot) -> bool:
    return any(field_name_key(h.name) in ARC_HEADERS for h in snapshot.headers)


def check_arc(lookup: Lookup, snapshot: MessageSnapshot) -> ArcOutcome:
    """Validate the ARC chain of a message (RFC 8617 §5.2)."""
    if not has_arc_headers(snapshot):
        return ArcOutcome()
    sealer = newest_sealer(snapshot)
    try:
        status, data, reason = dkim.arc_verify(snapshot.raw_message(), dnsfunc=_dnsfunc(lookup))
    except _DnsTemporaryError as exc:
        return ArcOutcome(AuthResult.TEMPERROR, newest_sealer=sealer,
                          comment=f"key lookup {exc}")
    except Exception as exc:  # dkimpy parses attacker text: any crash is a broken chain
        return ArcOutcome(AuthResult.FAIL, newest_sealer=sealer,
                          comment=f"invalid ARC headers: {_short(exc)}")
    sets = tuple(_arc_set(item) for item in data if isinstance(item, dict))
    instances = max((s.instance for s in sets), default=0)
    reason_text = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
    if status == dkim.CV_Pass:
        if instances > MAX_INSTANCES:
            return ArcOutcome(AuthResult.FAIL, instances, None, sets, sealer,
                              f"more than {MAX_INSTANCES} ARC sets")
        return ArcOutcome(AuthResult.PASS, instances, _oldest_pass(sets), sets, sealer)
    if status == dkim.CV_None and not sets:
        # ARC-* fields without one complete set with i=: a malformed chain, not "no chain"
        # (RFC 8617 §5.2 step 1 and §5.1.1).
        return ArcOutcome(AuthResult.FAIL, 0, None, sets, sealer,
                          f"no valid ARC set: {reason_text}"[:120])
    # CV_Fail, or None when the newest seal itself says cv=fail (§5.2 step 2).
    return ArcOutcome(AuthResult.FAIL, instances, None, sets, sealer, reason_text[:120])


def newest_sealer(snapshot: MessageSnapshot) -> str:
    """d= of the ARC-Seal with the highest i=, read from the header alone (no validation)."""
    best, domain = 0, ""
    for header in snapshot.headers_named("ARC-Seal"):
        tags = parse_tag_list(header.raw_value) or {}
        try:
            instance = int(tags.get("i", b"0").strip())
        except ValueError:
            continue
        if instance > best:
            best, domain = instance, _text(tags.get("d", b"")).lower().rstrip(".")
    return domain


def _dnsfunc(lookup: Lookup) -> Any:
    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode("ascii", errors="replace") if isinstance(name, bytes) else name
        answer = lookup.query(text.rstrip("."), "TXT")
        if answer.outcome.is_temporary:
            raise _DnsTemporaryError(answer.outcome.value)
        texts = answer.texts()
        if answer.outcome is not DnsOutcome.ANSWER or not texts:
            return None
        # The record is read by our parser, as for DKIM (dkim_tags.py): a key whose s=, h= or
        # v= refuses an rsa-sha256 seal is no key, and dkimpy sees only k= and p=, so a list
        # in s= (email:tlsrpt) or an odd extension tag cannot make it drop a usable key.
        key = read_key_record(texts[0])
        if isinstance(key, str) or key_refusal(key, "rsa-sha256", None):
            return None
        if key.key_type == "rsa":
            try:
                pk = evaluate_key(key)[0]
            except Exception:
                return key.for_dkimpy()  # undecodable: dkimpy refuses it the same way
            if rsa_cost_problem(pk):
                return None
        return key.for_dkimpy()

    return dnsfunc


def _arc_set(item: Mapping[str, Any]) -> ArcSet:
    recorded, header_from = _read_aar(item.get("aar-value", b""))
    cv = item.get("cv", b"")
    return ArcSet(
        instance=int(item.get("instance", 0)),
        seal_domain=_text(item.get("as-domain", b"")).lower().rstrip("."),
        seal_valid=bool(item.get("as-valid", False)),
        message_signature_valid=bool(item.get("ams-valid", False)),
        chain_status=_text(cv).lower(),
        recorded=recorded,
        recorded_header_from=header_from,
    )


def _oldest_pass(sets: tuple[ArcSet, ...]) -> int:
    """0 when every ARC-Message-Signature validates, else the instance just above the newest
    one that does not (RFC 8617 §5.2 step 6)."""
    failing = [s.instance for s in sets if not s.message_signature_valid]
    return max(failing) + 1 if failing else 0


_AAR_INSTANCE = re.compile(r"^\s*i\s*=\s*\d+\s*;")
_AAR_READER = authres.FeatureContext(authres.dmarc)


def _read_aar(value: object) -> tuple[tuple[tuple[str, str], ...], str]:
    """(method, result) pairs of an ARC-Authentication-Results value, and the header.from of
    its first dmarc entry. What ``authres`` cannot parse records nothing (it cannot vouch)."""
    if not isinstance(value, bytes):
        return (), ""
    text = value.decode("utf-8", errors="replace").replace("\r", "").replace("\n", "")
    try:
        parsed = _AAR_READER.parse_value(_AAR_INSTANCE.sub("", text, count=1))
    except Exception:  # authres raises SyntaxError and others on text it does not accept
        return (), ""
    recorded = tuple((str(r.method).lower(), str(r.result).lower()) for r in parsed.results)
    header_from = next((str(p.value) for r in parsed.results if str(r.method).lower() == "dmarc"
                        for p in r.properties if (p.type, p.name) == ("header", "from")), "")
    return recorded, header_from.lower().rstrip(".")


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace").strip()
    return str(value or "").strip()


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:120]
