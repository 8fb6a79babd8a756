"""The RFC5322.From author domains of a message, as DMARC needs them.

Owns: reading every ``From:`` header value as an RFC 5322 §3.6.2 mailbox-list (display names,
quoted strings, nested comments anywhere, group syntax, angle-addr, obsolete routes and
phrases, RFC 6854 groups), turning each author's domain into the A-label form DMARC queries
(RFC 9989 §5.3.1: lowercase, UTS #46 mapping and IDNA2008 A-labels through the ``idna``
package, trailing dot dropped), and naming the defined problems. Also owns
``normalise_domain``, the one place that decides whether a text is a usable DNS domain name
(used for SPF, DKIM and ARC identifiers and the configuration's domains too).
Must not: decode RFC 2047 encoded-words before parsing (an encoded-word is an atom; decoding
first lets text inside a display name look like an address), guess which of several authors is
"the" author, reach the network, log, or raise on any input.

Problems and what ``checks.dmarc.check_dmarc`` makes of them (RFC 9989 §4.4, §5.3.1, §11.5;
RFC 5322 §3.6 requires exactly one From field holding at least one mailbox):

* ``NO_FROM`` — no From header at all → dmarc=permerror ("no From header"); nothing to look up.
* ``NO_DOMAIN`` — a From header that holds no mailbox, a mailbox without a domain (``<>``, a
  domain literal, an invalid or non-DNS domain), or text that does not parse → a permerror
  entry for it. Any domain a reader could still be shown (from the well-formed mailboxes, the
  ``@domain`` parts salvaged from the malformed ones, and — whenever the structure is broken
  or names no usable domain — every ``@domain`` anywhere in the raw text, in quoted strings,
  comments, unterminated literals and decoded encoded-words; a domain with code points the
  reader cannot see is read without them: ``displayed_domain``) is evaluated too, listed in
  ``salvaged``, and the strictest result wins, so garbage next to a forged address yields
  ``fail``, never a softer result. When nothing at all can be read, ``domains`` is empty and
  policy decides by ``[policy] unusable_from``.
* ``MULTIPLE_FROM_HEADERS`` — more than one From header → every domain of every header is
  evaluated, the strictest result wins, and the problem is reported so policy can refuse it.
* ``MULTIPLE_AUTHORS`` — one From header with several mailboxes → every distinct domain is
  evaluated, the strictest result wins (CVE-2019-16378: a second address can never turn a
  fail into a pass).

Lenient readings that keep the domain unambiguous are accepted without a problem: a display
name in front of an addr-spec without angle brackets (``Joe joe@example.com``), a group whose
closing ``;`` is missing, empty list elements (obs-mbox-list), CFWS between the atoms of a
domain (obs-domain: ``legit.example(comment)`` is ``legit.example``).
"""

from __future__ import annotations

import base64
import email.quoprimime
import ipaddress
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, NamedTuple

import idna
import idna.uts46data  # loaded at start, not on the first non-ASCII From

__all__ = [
    "AuthorDomains",
    "AuthorProblem",
    "author_domains",
    "displayed_domain",
    "normalise_domain",
]


class AuthorProblem(StrEnum):
    """Defined outcomes for From headers DMARC cannot take at face value (most severe first)."""

    NO_FROM = "no-from"
    NO_DOMAIN = "no-domain"
    MULTIPLE_FROM_HEADERS = "multiple-from-headers"
    MULTIPLE_AUTHORS = "multiple-authors"


_PROBLEM_ORDER = tuple(AuthorProblem)


@dataclass(frozen=True)
class AuthorDomains:
    """The author domains of one message, in header order, each once.

    ``problem`` is the most severe of ``problems`` (None for the one normal case: exactly one
    From header holding exactly one mailbox with a usable domain). ``salvaged`` lists the
    domains (also in ``domains``) that were read from malformed mailboxes.
    """

    domains: tuple[str, ...] = ()
    problems: tuple[AuthorProblem, ...] = ()
    mailboxes: int = 0
    from_headers: int = 0
    salvaged: tuple[str, ...] = ()

    @property
    def problem(self) -> AuthorProblem | None:
        return self.problems[0] if self.problems else None


# --- domain names -----------------------------------------------------------------------------

_LABEL_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")
_MAX_NAME = 253


def normalise_domain(text: str) -> str | None:
    """The A-label, lowercase form of a domain name without its trailing dot, or None.

    Non-ASCII names are mapped as a mail client maps them before display (UTS #46,
    non-transitional: case folded, full-width letters and the full stops U+3002, U+FF0E and
    U+FF61 mapped, invisible "ignored" code points removed) and each U-label is converted to its
    A-label by IDNA2008 (RFC 5890-5893 through the ``idna`` package): ``ß`` and final ``ς`` stay
    what they are (RFC 5892: PVALID), unlike Python's IDNA2003 ``idna`` codec, which turns
    ``fußball.example`` into ``fussball.example`` — a different domain somebody else can own.

    None for anything that is not a usable DNS name: empty labels (``.a.com``, ``a..com``),
    characters outside letters/digits/hyphen/underscore after conversion (so
    ``example.net(.example.com`` is rejected, CVE-2020-12272), labels over 63 or names over 253
    octets, labels IDNA2008 refuses (a joiner out of context, a disallowed code point), and
    IPv4 addresses written without brackets.
    """
    name = text.strip()
    if not name or len(name) > 4 * _MAX_NAME:
        return None
    if name.isascii():
        name = name.lower()
    else:
        converted = _to_a_labels(name)
        if converted is None:
            return None
        name = converted
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > _MAX_NAME:
        return None
    labels = name.split(".")
    if not all(_LABEL_RE.match(label) for label in labels):
        return None
    if len(labels) == 4 and all(label.isdigit() for label in labels):
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            pass
        else:
            return None
    return name


def _to_a_labels(name: str) -> str | None:
    """UTS #46 mapping, then IDNA2008 A-labels for the labels that are still non-ASCII."""
    try:
        mapped = idna.uts46_remap(name, std3_rules=False, transitional=False)
        return ".".join(label if label.isascii() else idna.alabel(label).decode("ascii")
                        for label in mapped.split("."))
    except (idna.IDNAError, UnicodeError, ValueError):
        return None


# Code points a reader does not see, or sees as a blank: format characters (zero-width
# joiners and spaces, bidi controls, invisible operators such as U+2062), white space of any
# kind, controls, the Hangul fillers and the variation selectors. UTS #46 removes some of them
# itself; the ones it refuses would otherwise make a visibly ``victim.example`` domain
# unusable, and an unusable author domain used to mean "no policy".
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Cc", "Zs", "Zl", "Zp"})
_INVISIBLE_EXTRA = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u3164\uffa0")


def _invisible(char: str) -> bool:
    code = ord(char)
    return (unicodedata.category(char) in _INVISIBLE_CATEGORIES or char in _INVISIBLE_EXTRA
            or 0x180B <= code <= 0x180F or 0xFE00 <= code <= 0xFE0F
            or 0xE0100 <= code <= 0xE01EF)


def displayed_domain(text: str) -> str | None:
    """The domain a reader is shown for ``text``: its invisible code points dropped, then
    normalised. Only asked when ``normalise_domain`` refused the text as written, so that a
    domain made unusable by something the reader cannot see is still evaluated (the strictest
    result wins; docs/POLICY.md "What the author is")."""
    domain = normalise_domain(text)
    if domain is not None or (text.isascii() and text.isprintable()):
        return domain
    return normalise_domain("".join(c for c in text if not _invisible(c)))


# --- tokens -----------------------------------------------------------------------------------

_ATOM = "atom"
_QUOTED = "quoted"
_LITERAL = "literal"
_SPECIAL = "special"

_SPECIALS = frozenset('()<>[]:;@\\,."')
_WSP = frozenset(" \t\r\n")


class _Token(NamedTuple):
    kind: str
    text: str


# One step of the common cases at C speed: a run of white space, an atom (group 1) or a
# special (group 2) other than the four that open or break a structure, which take the
# character-by-character path: ( ) " [
_FAST_TOKEN = re.compile(r'[ \t\r\n]+|([^()<>\[\]:;@\\,." \t\r\n]+)|([<>\]:;@\\,.])')


def _tokenize(value: str) -> tuple[list[_Token], bool, list[str]]:
    """RFC 5322 §3.2 lexical tokens; comments and white space are dropped (they are CFWS and
    only separate tokens). Returns the tokens, whether the text was lexically malformed (an
    unterminated quoted string, comment or domain literal, or a stray ``)``), and the text an
    unterminated quoted string or comment swallowed (a lenient reader may show it as an
    address, so it is searched for domains too)."""
    tokens: list[_Token] = []
    broken = False
    swallowed: list[str] = []
    i = 0
    n = len(value)
    fast = _FAST_TOKEN.match
    while i < n:
        found = fast(value, i)
        if found is not None:
            if found.lastindex == 1:
                tokens.append(_Token(_ATOM, found.group(1)))
            elif found.lastindex == 2:
                tokens.append(_Token(_SPECIAL, found.group(2)))
            i = found.end()
            continue
        char = value[i]
        if char in _WSP:  # unreachable while _FAST_TOKEN takes all of _WSP; never loop forever
            i += 1
        elif char == "(":
            opened = i
            i, closed = _skip_comment(value, i)
            if not closed:
                broken = True
                swallowed.append(value[opened + 1 :])
        elif char == ")":
            broken = True
            i += 1
        elif char == '"':
            i += 1
            opened = i
            buf: list[str] = []
            while i < n and value[i] != '"':
                if value[i] == "\\" and i + 1 < n:
                    i += 1
                buf.append(value[i])
                i += 1
            if i >= n:
                broken = True
                swallowed.append(value[opened:])
            i += 1
            tokens.append(_Token(_QUOTED, "".join(buf)))
        elif char == "[":
            end = value.find("]", i + 1)
            if end < 0:
                broken = True
                end = n
            tokens.append(_Token(_LITERAL, value[i + 1 : end]))
            i = end + 1
        elif char in _SPECIALS:
            tokens.append(_Token(_SPECIAL, char))
            i += 1
        else:
            start = i
            while i < n and value[i] not in _SPECIALS and value[i] not in _WSP:
                i += 1
            tokens.append(_Token(_ATOM, value[start:i]))
    return tokens, broken, swallowed


def _is(token: _Token, special: str) -> bool:
    return token.kind == _SPECIAL and token.text == special


def _is_word(token: _Token) -> bool:
    return token.kind in (_ATOM, _QUOTED)


# --- mailbox-list -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Mailbox:
    domain: str | None  # the normalised domain, None when the mailbox has none / is malformed
    salvaged: tuple[str, ...] = ()


def _split_items(tokens: list[_Token]) -> tuple[list[list[_Token]], bool]:
    """Split a mailbox-list (groups flattened) into one token list per mailbox.

    Returns the items and whether the structure was malformed (``;`` outside a group, a group
    inside a group, a ``>`` without ``<``, a ``<`` left open)."""
    items: list[list[_Token]] = []
    current: list[_Token] = []
    depth = 0
    in_group = False
    broken = False
    for token in tokens:
        if token.kind == _SPECIAL and depth == 0:
            if token.text == ",":
                items.append(current)
                current = []
                continue
            if token.text == ":":
                if in_group:
                    broken = True
                    current.append(token)
                    continue
                # the tokens so far are the group's display name, not a mailbox
                if not all(_is_word(t) or _is(t, ".") for t in current):
                    broken = True
                    current.append(token)
                    continue
                current = []
                in_group = True
                continue
            if token.text == ";":
                if not in_group:
                    broken = True
                items.append(current)
                current = []
                in_group = False
                continue
        if _is(token, "<"):
            depth += 1
        elif _is(token, ">"):
            if depth == 0:
                broken = True
            depth = max(0, depth - 1)
        current.append(token)
    items.append(current)
    if depth:
        broken = True
    return [item for item in items if item], broken


def _domain_at(tokens: list[_Token], start: int) -> tuple[str | None, int]:
    """Read ``atom *("." atom) ["."]`` (or a domain literal) from ``start``; return the raw
    domain text (None if there is none) and the index after it."""
    if start >= len(tokens):
        return None, start
    first = tokens[start]
    if first.kind == _LITERAL:
        return None, start + 1  # an address literal is not a DNS domain (RFC 9989 §5.3.1)
    if first.kind != _ATOM:
        return None, start
    parts = [first.text]
    i = start + 1
    while i + 1 < len(tokens) and _is(tokens[i], ".") and tokens[i + 1].kind == _ATOM:
        parts.append(tokens[i + 1].text)
        i += 2
    if i < len(tokens) and _is(tokens[i], "."):
        parts.append("")  # a trailing dot: "example.com."
        i += 1
    return ".".join(parts), i


def _addr_spec(tokens: list[_Token]) -> str | Literal[False] | None:
    """The domain of ``local-part "@" domain`` filling all of ``tokens``.

    Returns the raw domain text, None for a well-formed address without a DNS domain (a domain
    literal), and False when the tokens are not an addr-spec."""
    ats = [i for i, t in enumerate(tokens) if _is(t, "@")]
    if len(ats) != 1:
        return False
    at = ats[0]
    local = tokens[:at]
    if not local or not all(_is_word(t) or _is(t, ".") for t in local):
        return False
    if any(t.kind == _ATOM and "=?" in t.text for t in local):
        # RFC 2047 §5: no encoded-word in an addr-spec. Readers decode it anyway (Python's
        # headerregistry then shows the address inside it): malformed, salvaged and scanned.
        return False
    if at + 1 < len(tokens) and tokens[at + 1].kind == _LITERAL:
        return None if at + 2 == len(tokens) else False
    domain, end = _domain_at(tokens, at + 1)
    if domain is None or end != len(tokens):
        return False
    return domain


def _parse_mailbox(tokens: list[_Token]) -> _Mailbox | None:
    """One mailbox: name-addr or addr-spec (and the lenient ``phrase addr-spec``).

    Returns None when the tokens are not a mailbox at all."""
    opens = [i for i, t in enumerate(tokens) if _is(t, "<")]
    if opens:
        if len(opens) != 1:
            return None
        lt = opens[0]
        if not _is(tokens[-1], ">") or any(_is(t, ">") for t in tokens[lt + 1 : -1]):
            return None
        phrase = tokens[:lt]
        if not all(_is_word(t) or _is(t, ".") for t in phrase):
            return None
        inner = tokens[lt + 1 : -1]
        if not inner:
            return _Mailbox(None)  # "<>": the null address has no domain
        colon = [i for i, t in enumerate(inner) if _is(t, ":")]
        if colon:  # obs-route: "@a.example,@b.example:" before the addr-spec
            if len(colon) != 1 or not _valid_route(inner[: colon[0]]):
                return None
            inner = inner[colon[0] + 1 :]
        found = _addr_spec(inner)
        if found is False:
            return None
        return _mailbox_for(found)
    # addr-spec; _addr_spec also takes the lenient "phrase addr-spec" ("Joe joe@example.com"):
    # every word before the only "@" is accepted, the domain after it is unambiguous.
    found = _addr_spec(tokens)
    if found is False:
        return None
    return _mailbox_for(found)


def _mailbox_for(raw_domain: str | None) -> _Mailbox:
    """A well-formed mailbox's domain; one the reader sees but DNS cannot use (an invisible
    code point in it, a joiner out of context) makes the mailbox malformed, with the domain
    the reader is shown salvaged."""
    if raw_domain is None:
        return _Mailbox(None)
    domain = normalise_domain(raw_domain)
    if domain is not None:
        return _Mailbox(domain)
    shown = displayed_domain(raw_domain)
    return _Mailbox(None, (shown,) if shown is not None else ())


def _valid_route(tokens: list[_Token]) -> bool:
    """obs-domain-list: ``*(CFWS / ",") "@" domain *("," [CFWS] ["@" domain])``."""
    i = 0
    seen = False
    while i < len(tokens):
        if _is(tokens[i], ","):
            i += 1
            continue
        if not _is(tokens[i], "@"):
            return False
        _domain, end = _domain_at(tokens, i + 1)
        if end == i + 1:
            return False
        seen = True
        i = end
    return seen


def _salvage(tokens: list[_Token]) -> tuple[str, ...]:
    """Every ``@ domain`` in malformed text: each one could be what a reader is shown."""
    found: list[str] = []
    for i, token in enumerate(tokens):
        if _is(token, "@"):
            raw, _end = _domain_at(tokens, i + 1)
            domain = displayed_domain(raw) if raw is not None else None
            if domain is not None and domain not in found:
                found.append(domain)
    return tuple(found)


# The shapes nearly every From header has — ``Name Words <local@example.com>`` or
# ``local@example.com``: ASCII atoms, a dot-atom local part, a dot-separated domain, no quotes,
# comments, groups or lists. For these the full parse below always yields one well-formed
# mailbox whose domain is the text after "@" (tests/unit/test_addresses.py checks it on
# generated input); anything else, or a domain normalise_domain refuses, takes the full parse.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_MAILBOX = re.compile(
    rf"[ \t]*(?:(?:{_ATEXT}[ \t]+)*(?:{_ATEXT})?[ \t]*<{_ATEXT}(?:\.{_ATEXT})*"
    rf"@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)>|{_ATEXT}(?:\.{_ATEXT})*"
    rf"@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+))[ \t]*")


def _parse_simple(value: str) -> _Mailbox | None:
    if "=?" in value:
        return None  # an encoded-word: the full parse decides how a reader sees it
    match = _SIMPLE_MAILBOX.fullmatch(value)
    if match is None:
        return None
    domain = normalise_domain(match.group(1) or match.group(2))
    return _Mailbox(domain) if domain is not None else None


def _parse_header(value: str) -> tuple[list[_Mailbox], bool, tuple[str, ...]]:
    """All mailboxes of one From value, whether any part of it was malformed, and the domains
    found in text an unterminated quoted string or comment swallowed."""
    simple = _parse_simple(value)
    if simple is not None:
        return [simple], False, ()
    tokens, broken, swallowed = _tokenize(value)
    if "=?" in value and any(_STRUCTURAL & set(word.group(0))
                             for word in _ENCODED_WORD.finditer(value)):
        # An encoded-word that our tokens split apart (RFC 2047 §5 forbids specials in it):
        # readers decode it whole first, so the structure we see is not the one they show.
        broken = True
    extra: list[str] = []
    for text in swallowed:
        inner, _broken, _rest = _tokenize(text)  # one level only: no recursion on hostile input
        extra.extend(d for d in _salvage(inner) if d not in extra)
    items, structure_broken = _split_items(tokens)
    broken = broken or structure_broken
    mailboxes: list[_Mailbox] = []
    for item in items:
        parsed = _parse_mailbox(item)
        if parsed is None or broken:
            # malformed: keep every "@domain" a reader might be shown, flag the mailbox
            mailboxes.append(_Mailbox(None, _salvage(item)))
        else:
            mailboxes.append(parsed)
    if broken or not mailboxes or any(m.domain is None for m in mailboxes):
        # The structure could not be trusted (or named no usable domain): a lenient reader
        # may still show an address anywhere in the text — inside an unterminated domain
        # literal, a quoted string, a comment, an encoded-word. Every domain found after an
        # "@" there is evaluated too; the strictest result wins (docs/POLICY.md).
        extra.extend(d for d in _scan_raw(value) if d not in extra)
    return mailboxes, broken, tuple(extra)


# Characters that end the domain after an "@" in any reading (white space and comments are
# skipped between its parts, "(" opens a comment).
_DOMAIN_STOP = frozenset('<>[],;:"@\\)')
_TRAILING_PUNCTUATION = ".'!?*`~-_}"
_MAX_PARTS = 32


def _skip_comment(text: str, i: int) -> tuple[int, bool]:
    """The index after the (nested, quoted-pair aware) comment opening at ``text[i]``, and
    whether it was closed (an unterminated comment runs to the end of the text)."""
    depth = 0
    n = len(text)
    while i < n:
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return i + 1, True
        i += 1
    return n, False


def _read_after_at(text: str, at: int) -> tuple[str, ...]:
    """What a reader may take for the domain after the "@" at ``text[at]``: the first run of
    domain characters (a mail client's reading), the runs joined where a dot meets the white
    space or comment between them (Python's ``headerregistry``), and every run up to the next
    delimiter joined (Python's ``getaddresses``)."""
    parts: list[str] = []
    i = at + 1
    n = len(text)
    while i < n and len(parts) < _MAX_PARTS:
        char = text[i]
        if char.isspace():
            i += 1
        elif char == "(":
            i = _skip_comment(text, i)[0]
        elif char in _DOMAIN_STOP:
            break
        else:
            start = i
            while i < n and not text[i].isspace() and text[i] not in _DOMAIN_STOP \
                    and text[i] != "(":
                i += 1
            parts.append(text[start:i])
    if not parts:
        return ()
    dotted = parts[0]  # joined only where a dot meets the white space (obs-domain CFWS)
    for part in parts[1:]:
        if not (dotted.endswith(".") or part.startswith(".")):
            break
        dotted += part
    return tuple(dict.fromkeys((parts[0], dotted, "".join(parts))))


_STRUCTURAL = frozenset('()<>[]:;@\\,"')
# An RFC 2047 encoded-word, read as leniently as Python's header parser reads it (white space
# inside is tolerated): charset, encoding, text.
_ENCODED_WORD = re.compile(r"=\?([^?]{1,64})\?([QqBb])\?([^?]*)\?=")


def _decoded_word(match: re.Match[str]) -> str:
    """One encoded-word decoded as a reader would; left as written if it does not decode
    (the raw text is scanned too)."""
    charset, encoding, text = match.groups()
    try:
        if encoding in "Qq":
            data = email.quoprimime.header_decode(text).encode("latin-1")
        else:
            data = base64.b64decode(text + "=" * (-len(text) % 4))
    except ValueError:  # bad base64: the reader sees the raw word
        return match.group(0)
    try:
        return data.decode(charset.split("*", 1)[0].strip(), errors="replace")
    except LookupError:  # an unknown charset: readers fall back to showing the bytes
        return data.decode("utf-8", errors="replace")


def _scan_raw(value: str) -> list[str]:
    """Every domain written after an "@" anywhere in ``value``, in the raw text, the text
    with its quoted-pair backslashes removed, and the text with RFC 2047 encoded-words
    decoded (a reader decodes them; the structured parse must not, see the module notes)."""
    texts = [value]
    if "\\" in value:
        texts.append(value.replace("\\", ""))
    if "=?" in value:
        texts.append(_ENCODED_WORD.sub(_decoded_word, value))
    found: list[str] = []
    for text in texts:
        at = text.find("@")
        while at >= 0:
            for raw in _read_after_at(text, at):
                for candidate in (raw, raw.rstrip(_TRAILING_PUNCTUATION)):
                    domain = displayed_domain(candidate) if candidate else None
                    if domain is not None:
                        if domain not in found:
                            found.append(domain)
                        break
            at = text.find("@", at + 1)
    return found


def author_domains(from_headers: Sequence[str]) -> AuthorDomains:
    """Extract the author domains from every From header value (unfolded or not).

    Never raises: any input gives an AuthorDomains with its problems named."""
    try:
        return _author_domains(from_headers)
    except Exception:  # a parser bug must still give a defined, conservative outcome
        return AuthorDomains((), (AuthorProblem.NO_DOMAIN,), 0, len(from_headers))


def _author_domains(from_headers: Sequence[str]) -> AuthorDomains:
    if not from_headers:
        return AuthorDomains(problems=(AuthorProblem.NO_FROM,))
    problems: set[AuthorProblem] = set()
    if len(from_headers) > 1:
        problems.add(AuthorProblem.MULTIPLE_FROM_HEADERS)
    domains: dict[str, None] = {}
    salvaged: dict[str, None] = {}
    total = 0
    for value in from_headers:
        mailboxes, broken, extra = _parse_header(str(value))
        total += len(mailboxes)
        if len(mailboxes) > 1:
            problems.add(AuthorProblem.MULTIPLE_AUTHORS)
        if not mailboxes or broken:
            problems.add(AuthorProblem.NO_DOMAIN)
        for mailbox in mailboxes:
            if mailbox.domain is not None:
                domains.setdefault(mailbox.domain, None)
                continue
            problems.add(AuthorProblem.NO_DOMAIN)
            for domain in mailbox.salvaged:
                domains.setdefault(domain, None)
                salvaged.setdefault(domain, None)
        for domain in extra:
            domains.setdefault(domain, None)
            salvaged.setdefault(domain, None)
    ordered = tuple(p for p in _PROBLEM_ORDER if p in problems)
    return AuthorDomains(tuple(domains), ordered, total, len(from_headers), tuple(salvaged))
