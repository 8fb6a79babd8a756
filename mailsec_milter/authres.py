"""The one Authentication-Results renderer (RFC 8601), and the finder of forged A-R headers.

Owns: turning structured outcomes into one folded header value, escaping every value and comment
that came from the outside, and telling which existing A-R fields claim our authserv-id.
Must not: decide anything, or see the milter.

We render ourselves rather than through the ``authres`` package: it does not fold, and its DKIM
class drops ``header.s``/``header.a`` (LIBRARY-NOTES.md). The package is still used, in the tests,
to prove every header we write parses.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from .engine import Analysis
from .model import AuthResult, Header, SpfIdentity
from .policy import Verdict

# RFC 2045 token characters: printable ASCII minus SPACE, CTLs and tspecials.
_TOKEN = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$")
# RFC 8601 pvalue also allows ``[local-part] "@" domain-name`` unquoted; we only leave it bare
# when the local part is a dot-atom (RFC 5322 3.2.3) and the domain a plain LDH name.
_ATEXT = r"[!#$%&'*+\-/=?^_`{|}~0-9A-Za-z]+"
_ADDR = re.compile(
    rf"^(?:{_ATEXT}(?:\.{_ATEXT})*)?@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*$"
)
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
HEADER_NAME = "Authentication-Results"


def quote_value(text: str, address: bool = True) -> str:
    """A value as a token, an addr-spec (``address=True``: a pvalue), or a quoted-string.

    Never returns CR, LF, other controls or non-ASCII (each becomes ``?``), and a ``;`` or ``(``
    only inside the quotes. ``address=False`` is for the places RFC 8601 wants a plain
    ``value`` (authserv-id, ``reason=``), where an unquoted ``@`` is not allowed.
    """
    clean = _UNPRINTABLE.sub("?", text)[:256]
    if clean and (_TOKEN.match(clean) or (address and _ADDR.match(clean))):
        return clean
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def comment(text: str) -> str:
    """An RFC 5322 comment with nothing that could end it early or start a new line."""
    clean = _UNPRINTABLE.sub("?", text)[:200]
    clean = clean.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return f"({clean})" if clean else ""


@dataclass(frozen=True)
class ResInfo:
    """One ``method=result`` entry with its reason comment and properties, in order."""

    method: str
    result: str
    comment: str = ""
    properties: tuple[tuple[str, str], ...] = ()
    reason: str = ""

    def render_parts(self) -> list[str]:
        parts = [f"{self.method}={self.result}"]
        if self.comment:
            parts.append(comment(self.comment))
        if self.reason:
            parts.append(f"reason={quote_value(self.reason, address=False)}")
        parts.extend(f"{name}={quote_value(value)}" for name, value in self.properties if value)
        return parts


def render(authserv_id: str, results: Sequence[ResInfo], width: int = 78) -> str:
    """The header *value* (without ``Authentication-Results:``), folded to ``width`` columns.

    Every continuation line starts with one TAB, as Postfix folds its own headers: each result
    starts a line of its own, and a result longer than a line is folded at a space between
    words or inside a comment, that space becoming the line break and the TAB (folding white
    space either way, RFC 5322 §3.2.2). A quoted-string is never folded: white space inside
    one is part of the value, so a long quoted value with spaces (rare: an odd local part) may
    leave a line longer than ``width``, as does a single word longer than the width.
    Replacing every LF + TAB by a space gives back the one-line text. No results at all
    renders ``id; none`` (RFC 8601 §2.2).
    """
    head = quote_value(authserv_id, address=False)
    if not results:
        return f"{head}; none"
    lines = [f"{head};"]
    for position, res in enumerate(results):
        last = position == len(results) - 1
        text = " ".join(res.render_parts()) + ("" if last else ";")
        lines += _fold(text, width - 1)  # each line after the TAB
    return "\n\t".join(lines)


def _fold(text: str, limit: int) -> list[str]:
    """Split ``text`` at folding points so each piece fits ``limit`` where one allows it.

    The space at each split is dropped (the caller joins the pieces with LF + TAB), so no
    piece is empty or white space only.
    """
    if len(text) <= limit:  # the common case: nothing to fold
        return [text]
    breaks = _folding_points(text)
    pieces: list[str] = []
    start = 0
    while len(text) - start > limit:
        # the last folding point within reach, else the first one beyond it; sorted
        after = bisect.bisect_right(breaks, start + limit)
        if after and breaks[after - 1] > start:
            cut = breaks[after - 1]
        elif after < len(breaks):
            cut = breaks[after]
        else:
            break
        pieces.append(text[start:cut])
        start = cut + 1
    pieces.append(text[start:])
    return pieces


def _folding_points(text: str) -> list[int]:
    """Indices of the spaces that may become a line break: outside quoted-strings (there the
    space is part of the value), not escaped by a quoted-pair, and followed by a non-space
    (so that no line starts with white space after its TAB, or is white space only)."""
    points: list[int] = []
    quoted, depth, i = False, 0, 0
    while i < len(text):
        char = text[i]
        if (quoted or depth) and char == "\\":
            i += 2  # a quoted-pair: the next character is data
            continue
        if quoted:
            quoted = char != '"'
        elif char == '"' and not depth:
            quoted = True
        elif char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif char == " " and 0 < i < len(text) - 1 and text[i + 1] != " ":
            points.append(i)
        i += 1
    return points


def extract_authserv_id(value: str) -> str | None:
    """Read the authserv-id at the start of an A-R value, tolerating comments and junk.

    Deliberately looser than a full RFC 8601 parser: a header we cannot fully parse may still be
    a forgery that claims our id, and must still be found.
    """
    text = value.replace("\r", " ").replace("\n", " ")
    i = _skip_cfws(text, 0)
    if i >= len(text):
        return None
    if text[i] == '"':
        j = i + 1
        buf = []
        while j < len(text) and text[j] != '"':
            if text[j] == "\\" and j + 1 < len(text):
                j += 1
            buf.append(text[j])
            j += 1
        if j < len(text):
            return "".join(buf).strip() or None
        i += 1  # unterminated quote: read what follows it as a token, as a lax reader would
    j = i
    while j < len(text) and text[j] not in ' \t;("':
        j += 1
    return text[i:j] or None


def _skip_cfws(text: str, i: int) -> int:
    while i < len(text):
        if text[i] in " \t":
            i += 1
        elif text[i] == "(":
            depth = 0
            while i < len(text):
                if text[i] == "\\":
                    i += 2
                    continue
                if text[i] == "(":
                    depth += 1
                elif text[i] == ")":
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
        else:
            break
    return i


def claims_our_id(authserv_id: str | None, ours: str, include_subdomains: bool) -> bool:
    if not authserv_id:
        return False
    theirs = authserv_id.strip().rstrip(".").lower()
    mine = ours.strip().rstrip(".").lower()
    return theirs == mine or (include_subdomains and theirs.endswith("." + mine))


def forged_indices(headers: Iterable[Header], ours: str, include_subdomains: bool) -> list[int]:
    """1-based per-name indices of A-R fields claiming our id, highest first.

    Highest first because each deletion shifts the indices of the later fields of the same name:
    deleting upward is the fix for the class of bug behind CVE-2022-48521.
    """
    found: list[int] = []
    index = 0
    for header in headers:
        if not header.is_named("Authentication-Results"):
            continue
        index += 1
        if claims_our_id(extract_authserv_id(header.value), ours, include_subdomains):
            found.append(index)
    return sorted(found, reverse=True)


def results_for(analysis: Analysis, verdict: Verdict | None = None) -> list[ResInfo]:
    """Map an Analysis to A-R entries with the registered property names (RFC 8601 §2.7)."""
    results: list[ResInfo] = []
    for spf in (analysis.spf_mailfrom, analysis.spf_helo):
        if spf is None:
            continue
        ptype = "smtp.mailfrom" if spf.identity is SpfIdentity.MAILFROM else "smtp.helo"
        results.append(ResInfo("spf", spf.result.value, spf.comment,
                               ((ptype, spf.identity_value or "<>"),)))
    for sig in analysis.dkim.signatures:
        props: list[tuple[str, str]] = [("header.d", sig.domain)]
        if sig.identity:
            props.append(("header.i", sig.identity))
        props += [("header.s", sig.selector), ("header.a", sig.algorithm),
                  ("header.b", sig.b_prefix)]
        results.append(ResInfo("dkim", sig.result.value, sig.comment, tuple(props)))
    if not analysis.dkim.signatures:
        results.append(ResInfo("dkim", AuthResult.NONE.value, "message not signed"))
    if analysis.dmarc is not None:
        results.append(_dmarc_result(analysis.dmarc, verdict))
    arc = analysis.arc
    if arc.result is not AuthResult.NONE:  # only messages that carry ARC fields
        props_arc: list[tuple[str, str]] = []
        note = arc.comment
        if arc.result is AuthResult.PASS:
            props_arc.append(("header.oldest-pass", str(arc.oldest_pass or 0)))
            note = f"i={arc.instances}, sealed by {arc.newest_sealer}"
        results.append(ResInfo("arc", arc.result.value, note, tuple(props_arc)))
    tls = analysis.tls
    if tls.encrypted:
        detail = " with ".join(part for part in (tls.version, tls.cipher) if part) or "encrypted"
        if tls.bits:
            detail += f", {tls.bits} bits"
        if tls.verify:
            detail += f", verify={tls.verify}"
        props_tls = [("smtp.tls-version", tls.version), ("smtp.cipher", tls.cipher)]
        if tls.bits:
            props_tls.append(("smtp.cipher-bits", str(tls.bits)))
        results.append(ResInfo("x-tls", tls.result.value, detail, tuple(props_tls)))
    else:
        results.append(ResInfo("x-tls", tls.result.value, "plaintext session"))
    return results


class DmarcFacts(Protocol):
    """What the renderer reads of a DMARC outcome (``checks.dmarc.DmarcOutcome`` has it): the
    renderer depends on the model's words, not on the checks' modules."""

    @property
    def result(self) -> AuthResult: ...
    @property
    def header_from(self) -> str: ...
    @property
    def policy(self) -> StrEnum | None: ...
    @property
    def testing(self) -> bool: ...
    @property
    def reason(self) -> str: ...


def _dmarc_result(dmarc: DmarcFacts, verdict: Verdict | None) -> ResInfo:
    """``dmarc=`` with the published policy and the evaluated and applied dispositions.

    Property names: ``policy.published-domain-policy``, ``policy.evaluated-disposition``,
    ``policy.applied-disposition`` and ``policy.override-reason``, as authentication_milter and
    RFC 7489 §7.2 (PolicyOverrideType) name them; documented in docs/POLICY.md.
    """
    notes: list[str] = []
    if dmarc.policy is not None:
        notes.append(f"p={dmarc.policy.value}" + (" t=y" if dmarc.testing else ""))
    if verdict is not None and verdict.applied_disposition:
        notes.append(f"dis={verdict.applied_disposition}")
    if verdict is not None and verdict.dry_run_action is not None:
        notes.append(f"dry run: would {verdict.dry_run_action.value}")
    if verdict is not None and verdict.override_detail and verdict.dry_run_action is None:
        notes.append(verdict.override_detail)
    if dmarc.reason and (dmarc.result is not AuthResult.PASS or dmarc.policy is None):
        # a pass without a known policy: aligned under any record although the record could
        # not be fetched — the reason says so
        notes.append(dmarc.reason)
    props: list[tuple[str, str]] = [("header.from", dmarc.header_from)]
    if dmarc.policy is not None:
        props.append(("policy.published-domain-policy", dmarc.policy.value))
    if verdict is not None:
        if verdict.evaluated_disposition:
            props.append(("policy.evaluated-disposition", verdict.evaluated_disposition))
        if verdict.applied_disposition:
            props.append(("policy.applied-disposition", verdict.applied_disposition))
        if verdict.override_reason is not None:
            props.append(("policy.override-reason", verdict.override_reason.value))
    return ResInfo("dmarc", dmarc.result.value, "; ".join(notes), tuple(props))
