"""The immutable snapshot of one message and the closed vocabularies every layer shares.

Owns: what a message *is* once the MTA has handed it over (client, envelope, TLS, headers, body)
and the RFC 8601 result words. Must not: talk to the network, the MTA or the configuration.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum


class AuthResult(StrEnum):
    """RFC 8601 result words, shared by every check."""

    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"
    POLICY = "policy"


class SpfIdentity(StrEnum):
    """The SPF identity checked (RFC 7208 §2.3, §2.4): it names A-R's ``smtp.helo`` or
    ``smtp.mailfrom`` property, and DMARC uses only MAIL FROM's."""

    MAILFROM = "mailfrom"
    HELO = "helo"


@functools.lru_cache(maxsize=4096)
def normalise_ip(address: str) -> str:
    """Return the canonical text of an IP address; IPv4-mapped IPv6 becomes plain IPv4.

    Cached: the same client address is normalised at connect and for each check of each of
    its messages (``ipaddress`` parsing is slow).

    Postfix reports an IPv4 client on a dual-stack socket as ``::ffff:a.b.c.d``; SPF and trusted
    network checks must see ``a.b.c.d`` (RFC 7208 §5: the IP is compared in its own family).
    Raises ValueError for text that is not an IP address.
    """
    text = address.strip()
    if text.lower().startswith("ipv6:"):
        text = text[5:]
    text = text.strip("[]")
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


@dataclass(frozen=True)
class TlsInfo:
    """TLS state of the SMTP session as the MTA reported it in macros (read at MAIL FROM)."""

    version: str | None = None
    cipher: str | None = None
    cipher_bits: int | None = None
    verify: str | None = None
    cert_subject: str | None = None
    cert_issuer: str | None = None

    @property
    def encrypted(self) -> bool:
        """True when the MTA told us the session ran over TLS."""
        return bool(self.version or self.cipher)


@dataclass(frozen=True)
class Envelope:
    """What the SMTP dialogue established before the message content."""

    client_ip: str | None
    client_name: str = ""
    helo: str = ""
    mail_from: str = ""
    rcpt_to: tuple[str, ...] = ()
    queue_id: str | None = None
    sasl_user: str | None = None
    tls: TlsInfo = field(default_factory=TlsInfo)


@functools.lru_cache(maxsize=1024)
def field_name_key(name: str) -> str | None:
    """The form in which header field names are compared, everywhere: the name as received,
    SP/HTAB around it removed (RFC 5322 §4.5.8 obs-optional allows white space before the
    colon), ASCII letters in lower case; None for a name with any non-ASCII character, which
    therefore equals no name we look for.

    Never ``str.lower()`` alone: U+212A KELVIN SIGN lower-cases to ``k``, so a field named
    ``D\u212aIM-Signature`` counted as a DKIM-Signature in one place and not in another, and one
    field's key was paired with another field's signature (issue 12). Cached: the same few
    names are looked up for every message.
    """
    stripped = name.strip(" \t")
    return stripped.lower() if stripped.isascii() else None


def field_name_is(name: str, wanted: str) -> bool:
    """Whether header field ``name`` is the field ``wanted`` (an ASCII name), compared as
    ``field_name_key`` says: the one comparison of field names, as the MTA and DKIM make it."""
    return field_name_key(name) == wanted.lower()


@dataclass(frozen=True)
class Header:
    """One header field as received: the name, and the raw value bytes after the colon.

    ``raw_value`` keeps leading white space and folding (``\\r\\n`` + WSP) so that DKIM
    ``c=simple`` can see the field byte-exactly.
    """

    name: str
    raw_value: bytes

    @property
    def value(self) -> str:
        """The unfolded value as text (undecodable bytes replaced), for parsing, not signing."""
        text = self.raw_value.decode("utf-8", errors="replace")
        return " ".join(text.replace("\r\n", "\n").split("\n")).strip()

    def is_named(self, wanted: str) -> bool:
        """``field_name_is(self.name, wanted)``."""
        return field_name_is(self.name, wanted)

    def to_bytes(self) -> bytes:
        return self.name.encode("ascii", errors="replace") + b":" + self.raw_value + b"\r\n"


@dataclass(frozen=True)
class MessageSnapshot:
    """Everything the checks may look at for one message; never mutated after creation."""

    envelope: Envelope
    headers: tuple[Header, ...] = ()
    body: bytes = b""

    def headers_named(self, name: str) -> tuple[Header, ...]:
        """The fields called ``name`` (``field_name_is``), in message order."""
        return tuple(h for h in self.headers if field_name_is(h.name, name))

    def raw_message(self) -> bytes:
        """The message as RFC 5322 bytes with CRLF line ends, as DKIM verification needs."""
        head = b"".join(h.to_bytes() for h in self.headers)
        return head + b"\r\n" + self.body


def parse_message(raw: bytes) -> tuple[tuple[Header, ...], bytes]:
    """Split raw message bytes into header fields and body, tolerating bare LF line ends.

    Used by the offline ``check`` command and tests; the milter gets headers one by one.
    A line without a colon in the header block ends the header block (RFC 5322 §2.2 gives it no
    meaning; treating it as the start of the body is what MTAs do).
    """
    data = raw.replace(b"\r\n", b"\n")
    headers: list[tuple[str, list[bytes]]] = []
    lines = data.split(b"\n")
    index = 0
    while index < len(lines):
        line = lines[index]
        if line == b"":
            index += 1
            break
        if line[:1] in (b" ", b"\t") and headers:
            headers[-1][1].append(line)
        elif b":" in line:
            name, _, rest = line.partition(b":")
            headers.append((name.decode("ascii", errors="replace").strip(), [rest]))
        else:
            break
        index += 1
    body = b"\r\n".join(lines[index:])
    result = tuple(Header(name, b"\r\n".join(parts)) for name, parts in headers)
    return result, body
