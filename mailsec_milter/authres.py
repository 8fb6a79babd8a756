"""The one Authentication-Results renderer (RFC 8601), and the finder of forged A-R headers.

Owns: turning structured outcomes into one folded header value, escaping every value and comment
that came from the outside, and telling which existing A-R fields claim our authserv-id.
Must not: decide anything, or see the milter.

We render ourselves rather than through the ``authres`` package: it does not fold, and its DKIM
class drops ``header.s``/``header.a`` (LIBRARY-NOTES.md). The package is still used, in the tests,
to prove every header we write parses.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .checks.spf import SpfIdentity
from .engine import Analysis
from .model import AuthResult, Header

# RFC 2045 token characters: printable ASCII minus SPACE, CTLs and tspecials.
_TOKEN = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$")
# RFC 8601 pvalue also allows an addr-spec ([local-part] "@" domain-name) unquoted.
_ADDR = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]*@[A-Za-z0-9.\-]+$")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def quote_value(text: str) -> str:
    """A property value as a token, an addr-spec, or a quoted-string; never raw CR/LF/;."""
    clean = _UNPRINTABLE.sub("?", text)[:256]
    if clean and (_TOKEN.match(clean) or _ADDR.match(clean)):
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
            parts.append(f"reason={quote_value(self.reason)}")
        parts.extend(f"{name}={quote_value(value)}" for name, value in self.properties if value)
        return parts


def render(authserv_id: str, results: Sequence[ResInfo], width: int = 78) -> str:
    """The header *value* (without ``Authentication-Results:``), folded at ``;`` and spaces.

    No results at all renders ``id; none`` (RFC 8601 §2.2).
    """
    head = quote_value(authserv_id)
    if not results:
        return f"{head}; none"
    lines = [f"{head};"]
    for position, res in enumerate(results):
        last = position == len(results) - 1
        lines.extend(_fold(res.render_parts(), width, ";" if not last else ""))
    return "\n\t".join(lines)


def _fold(parts: list[str], width: int, terminator: str) -> list[str]:
    out: list[str] = []
    current = ""
    for part in parts:
        candidate = f"{current} {part}" if current else part
        if current and len(candidate) + 8 > width:
            out.append(current)
            current = part
        else:
            current = candidate
    out.append(current + terminator)
    return out


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
        return "".join(buf).strip() or None
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
        if header.name.strip().lower() != "authentication-results":
            continue
        index += 1
        if claims_our_id(extract_authserv_id(header.value), ours, include_subdomains):
            found.append(index)
    return sorted(found, reverse=True)


def results_for(analysis: Analysis) -> list[ResInfo]:
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
    tls = analysis.tls
    if tls.encrypted:
        detail = f"{tls.version} with {tls.cipher}" + (f", {tls.bits} bits" if tls.bits else "")
        if tls.verify:
            detail += f", verify={tls.verify}"
        props_tls = [("smtp.tls-version", tls.version), ("smtp.cipher", tls.cipher)]
        if tls.bits:
            props_tls.append(("smtp.cipher-bits", str(tls.bits)))
        results.append(ResInfo("x-tls", tls.result.value, detail, tuple(props_tls)))
    else:
        results.append(ResInfo("x-tls", tls.result.value, "plaintext session"))
    return results
