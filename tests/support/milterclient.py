"""Milter protocol client: the MTA side of the Sendmail milter protocol (version 6), in pure Python.

Owns: packet framing and decoding, option negotiation (including the per-stage macro lists a milter
requests), an event API that behaves like Postfix's milter8 client (it skips events the milter
declined with SMFIP_NO*, reads no reply where SMFIP_NR_* was negotiated, sends macros before their
event even when the event itself is skipped), splitting a raw message into headers and body the way
Postfix hands them to a milter, and per-event timing for benchmarks.

Used by adapter tests, protocol-abuse tests and the benchmark driver. It must not import anything
from the daemon (nor ``Milter``), and it makes no decisions about mail: it only reports what the
milter answered.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import struct
import time
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Self

__all__ = [
    "ACTIONS_ALL",
    "MILTER_CHUNK_SIZE",
    "PROTOCOL_POSTFIX",
    "ConnectionClosed",
    "EndOfMessage",
    "EventRecord",
    "HeaderEdit",
    "MilterClient",
    "MilterProtocolError",
    "MilterTimeoutError",
    "Reply",
    "SessionResult",
    "chunk_body",
    "decode_reply",
    "describe_actions",
    "describe_protocol",
    "encode_packet",
    "parse_address",
    "postfix_reply_text",
    "split_message",
]

# --------------------------------------------------------------------------------------------
# Protocol constants (libmilter mfdef.h / mfapi.h, Postfix milter8.c)
# --------------------------------------------------------------------------------------------

SMFI_PROT_VERSION = 6
MILTER_CHUNK_SIZE = 65535
"""Largest body chunk an MTA sends (and libmilter's default limit for any command's data)."""

# Commands, MTA -> milter.
SMFIC_ABORT = b"A"
SMFIC_BODY = b"B"
SMFIC_CONNECT = b"C"
SMFIC_MACRO = b"D"
SMFIC_BODYEOB = b"E"
SMFIC_HELO = b"H"
SMFIC_QUIT_NC = b"K"
SMFIC_HEADER = b"L"
SMFIC_MAIL = b"M"
SMFIC_EOH = b"N"
SMFIC_OPTNEG = b"O"
SMFIC_QUIT = b"Q"
SMFIC_RCPT = b"R"
SMFIC_DATA = b"T"
SMFIC_UNKNOWN = b"U"

# Replies, milter -> MTA.
SMFIR_ADDRCPT = b"+"
SMFIR_DELRCPT = b"-"
SMFIR_ADDRCPT_PAR = b"2"
SMFIR_SHUTDOWN = b"4"
SMFIR_ACCEPT = b"a"
SMFIR_REPLBODY = b"b"
SMFIR_CONTINUE = b"c"
SMFIR_DISCARD = b"d"
SMFIR_CHGFROM = b"e"
SMFIR_CONN_FAIL = b"f"
SMFIR_ADDHEADER = b"h"
SMFIR_INSHEADER = b"i"
SMFIR_SETSYMLIST = b"l"
SMFIR_CHGHEADER = b"m"
SMFIR_PROGRESS = b"p"
SMFIR_QUARANTINE = b"q"
SMFIR_REJECT = b"r"
SMFIR_SKIP = b"s"
SMFIR_TEMPFAIL = b"t"
SMFIR_REPLYCODE = b"y"
SMFIR_OPTNEG = b"O"

# Address families in SMFIC_CONNECT.
SMFIA_UNKNOWN = "U"
SMFIA_UNIX = "L"
SMFIA_INET = "4"
SMFIA_INET6 = "6"

# Actions (SMFIF_*).
SMFIF_ADDHDRS = 0x001
SMFIF_CHGBODY = 0x002
SMFIF_ADDRCPT = 0x004
SMFIF_DELRCPT = 0x008
SMFIF_CHGHDRS = 0x010
SMFIF_QUARANTINE = 0x020
SMFIF_CHGFROM = 0x040
SMFIF_ADDRCPT_PAR = 0x080
SMFIF_SETSYMLIST = 0x100
ACTIONS_ALL = 0x1FF
"""Every action defined by protocol version 6; what Postfix offers."""

# Protocol flags (SMFIP_*).
SMFIP_NOCONNECT = 0x00000001
SMFIP_NOHELO = 0x00000002
SMFIP_NOMAIL = 0x00000004
SMFIP_NORCPT = 0x00000008
SMFIP_NOBODY = 0x00000010
SMFIP_NOHDRS = 0x00000020
SMFIP_NOEOH = 0x00000040
SMFIP_NR_HDR = 0x00000080
SMFIP_NOUNKNOWN = 0x00000100
SMFIP_NODATA = 0x00000200
SMFIP_SKIP = 0x00000400
SMFIP_RCPT_REJ = 0x00000800
SMFIP_NR_CONN = 0x00001000
SMFIP_NR_HELO = 0x00002000
SMFIP_NR_MAIL = 0x00004000
SMFIP_NR_RCPT = 0x00008000
SMFIP_NR_DATA = 0x00010000
SMFIP_NR_UNKN = 0x00020000
SMFIP_NR_EOH = 0x00040000
SMFIP_NR_BODY = 0x00080000
SMFIP_HDR_LEADSPC = 0x00100000
SMFIP_MDS_256K = 0x10000000
SMFIP_MDS_1M = 0x20000000

SMFIP_NOSEND_MASK = (
    SMFIP_NOCONNECT
    | SMFIP_NOHELO
    | SMFIP_NOMAIL
    | SMFIP_NORCPT
    | SMFIP_NOBODY
    | SMFIP_NOHDRS
    | SMFIP_NOEOH
    | SMFIP_NOUNKNOWN
    | SMFIP_NODATA
)
SMFIP_NOREPLY_MASK = (
    SMFIP_NR_CONN
    | SMFIP_NR_HELO
    | SMFIP_NR_MAIL
    | SMFIP_NR_RCPT
    | SMFIP_NR_DATA
    | SMFIP_NR_UNKN
    | SMFIP_NR_HDR
    | SMFIP_NR_EOH
    | SMFIP_NR_BODY
)
PROTOCOL_POSTFIX = 0x001FFFFF
"""What Postfix 3.x offers with ``milter_protocol = 6``: every NO*, NR*, SKIP, RCPT_REJ and
HDR_LEADSPC bit (no MDS bits)."""

_PROTOCOL_NAMES: tuple[tuple[int, str], ...] = (
    (SMFIP_NOCONNECT, "NOCONNECT"),
    (SMFIP_NOHELO, "NOHELO"),
    (SMFIP_NOMAIL, "NOMAIL"),
    (SMFIP_NORCPT, "NORCPT"),
    (SMFIP_NOBODY, "NOBODY"),
    (SMFIP_NOHDRS, "NOHDRS"),
    (SMFIP_NOEOH, "NOEOH"),
    (SMFIP_NR_HDR, "NR_HDR"),
    (SMFIP_NOUNKNOWN, "NOUNKNOWN"),
    (SMFIP_NODATA, "NODATA"),
    (SMFIP_SKIP, "SKIP"),
    (SMFIP_RCPT_REJ, "RCPT_REJ"),
    (SMFIP_NR_CONN, "NR_CONN"),
    (SMFIP_NR_HELO, "NR_HELO"),
    (SMFIP_NR_MAIL, "NR_MAIL"),
    (SMFIP_NR_RCPT, "NR_RCPT"),
    (SMFIP_NR_DATA, "NR_DATA"),
    (SMFIP_NR_UNKN, "NR_UNKN"),
    (SMFIP_NR_EOH, "NR_EOH"),
    (SMFIP_NR_BODY, "NR_BODY"),
    (SMFIP_HDR_LEADSPC, "HDR_LEADSPC"),
    (SMFIP_MDS_256K, "MDS_256K"),
    (SMFIP_MDS_1M, "MDS_1M"),
)
_ACTION_NAMES: tuple[tuple[int, str], ...] = (
    (SMFIF_ADDHDRS, "ADDHDRS"),
    (SMFIF_CHGBODY, "CHGBODY"),
    (SMFIF_ADDRCPT, "ADDRCPT"),
    (SMFIF_DELRCPT, "DELRCPT"),
    (SMFIF_CHGHDRS, "CHGHDRS"),
    (SMFIF_QUARANTINE, "QUARANTINE"),
    (SMFIF_CHGFROM, "CHGFROM"),
    (SMFIF_ADDRCPT_PAR, "ADDRCPT_PAR"),
    (SMFIF_SETSYMLIST, "SETSYMLIST"),
)

# Macro stages: name -> (command byte the MACRO packet names, SMFIM_* index in the OPTNEG list).
STAGES: Mapping[str, tuple[bytes, int]] = types.MappingProxyType(
    {
        "connect": (SMFIC_CONNECT, 0),
        "helo": (SMFIC_HELO, 1),
        "mail": (SMFIC_MAIL, 2),
        "rcpt": (SMFIC_RCPT, 3),
        "data": (SMFIC_DATA, 4),
        "eom": (SMFIC_BODYEOB, 5),
        "eoh": (SMFIC_EOH, 6),
    }
)
_STAGE_BY_INDEX: Mapping[int, str] = types.MappingProxyType(
    {index: name for name, (_cmd, index) in STAGES.items()}
)

_REPLY_NAMES: Mapping[bytes, str] = types.MappingProxyType(
    {
        SMFIR_ADDRCPT: "addrcpt",
        SMFIR_DELRCPT: "delrcpt",
        SMFIR_ADDRCPT_PAR: "addrcpt_par",
        SMFIR_SHUTDOWN: "shutdown",
        SMFIR_ACCEPT: "accept",
        SMFIR_REPLBODY: "replbody",
        SMFIR_CONTINUE: "continue",
        SMFIR_DISCARD: "discard",
        SMFIR_CHGFROM: "chgfrom",
        SMFIR_CONN_FAIL: "connfail",
        SMFIR_ADDHEADER: "addheader",
        SMFIR_INSHEADER: "insheader",
        SMFIR_SETSYMLIST: "setsymlist",
        SMFIR_CHGHEADER: "chgheader",
        SMFIR_PROGRESS: "progress",
        SMFIR_QUARANTINE: "quarantine",
        SMFIR_REJECT: "reject",
        SMFIR_SKIP: "skip",
        SMFIR_TEMPFAIL: "tempfail",
        SMFIR_REPLYCODE: "replycode",
        SMFIR_OPTNEG: "optneg",
    }
)
_EMPTY_REPLIES = frozenset(
    {
        SMFIR_ACCEPT,
        SMFIR_CONTINUE,
        SMFIR_DISCARD,
        SMFIR_REJECT,
        SMFIR_TEMPFAIL,
        SMFIR_SKIP,
        SMFIR_PROGRESS,
        SMFIR_CONN_FAIL,
        SMFIR_SHUTDOWN,
    }
)
_FINAL_REPLIES = frozenset(
    {
        SMFIR_ACCEPT,
        SMFIR_CONTINUE,
        SMFIR_DISCARD,
        SMFIR_REJECT,
        SMFIR_TEMPFAIL,
        SMFIR_REPLYCODE,
        SMFIR_CONN_FAIL,
        SMFIR_SHUTDOWN,
    }
)
_MODIFICATIONS = frozenset(
    {
        SMFIR_ADDRCPT,
        SMFIR_DELRCPT,
        SMFIR_ADDRCPT_PAR,
        SMFIR_REPLBODY,
        SMFIR_CHGFROM,
        SMFIR_ADDHEADER,
        SMFIR_INSHEADER,
        SMFIR_CHGHEADER,
        SMFIR_QUARANTINE,
    }
)

DEFAULT_MAX_REPLY = 16 * 1024 * 1024
_LEN = struct.Struct(">I")
_OPTNEG = struct.Struct(">III")
_PORT = struct.Struct(">H")


def describe_protocol(mask: int) -> list[str]:
    """Names of the SMFIP_* bits in ``mask`` (unknown bits as hex), for readable assertions."""
    return _describe(mask, _PROTOCOL_NAMES)


def describe_actions(mask: int) -> list[str]:
    """Names of the SMFIF_* bits in ``mask`` (unknown bits as hex)."""
    return _describe(mask, _ACTION_NAMES)


def _describe(mask: int, table: Iterable[tuple[int, str]]) -> list[str]:
    names = []
    rest = mask
    for bit, name in table:
        if mask & bit:
            names.append(name)
            rest &= ~bit
    if rest:
        names.append(hex(rest))
    return names


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class MilterProtocolError(Exception):
    """The milter sent something a real MTA would treat as a protocol/communication error."""


class ConnectionClosed(MilterProtocolError):  # noqa: N818 (name fixed by the test API)
    """The milter closed (or reset) the connection at a packet boundary."""


class MilterTimeoutError(MilterProtocolError, TimeoutError):
    """No (complete) reply arrived within the read timeout."""


# --------------------------------------------------------------------------------------------
# Packets and replies
# --------------------------------------------------------------------------------------------


def encode_packet(cmd: bytes, payload: bytes = b"") -> bytes:
    """Frame one packet: uint32 length (command byte + payload), command byte, payload."""
    if len(cmd) != 1:
        raise ValueError(f"command must be exactly one byte, got {cmd!r}")
    size = 1 + len(payload)
    if size > 0xFFFFFFFF:
        raise ValueError("packet too large for a 32-bit length")
    return _LEN.pack(size) + cmd + payload


def _to_bytes(value: str | bytes, what: str) -> bytes:
    data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)
    if b"\0" in data:
        raise ValueError(f"{what} must not contain NUL (use send_packet for raw abuse): {data!r}")
    return data


def _cstrings(*values: str | bytes) -> bytes:
    return b"".join(_to_bytes(v, "string argument") + b"\0" for v in values)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _split_cstrings(cmd: bytes, payload: bytes, count: int | None) -> list[bytes]:
    """Split NUL-terminated strings; ``count`` None means one or more."""
    name = _REPLY_NAMES.get(cmd, repr(cmd))
    if not payload.endswith(b"\0"):
        raise MilterProtocolError(f"{name} reply: string not NUL-terminated: {payload!r}")
    parts = payload[:-1].split(b"\0")
    if count is not None and len(parts) != count:
        raise MilterProtocolError(
            f"{name} reply: expected {count} NUL-terminated strings, got {len(parts)}: {payload!r}"
        )
    return parts


@dataclass(frozen=True, slots=True)
class Reply:
    """One packet from the milter, with the fields of the common replies decoded.

    Always set: ``command`` (one byte), ``payload`` (raw bytes), ``action`` (a readable name such
    as ``"continue"`` or ``"addheader"``). The other fields are set only for the replies they
    belong to and are None (or empty) otherwise.
    """

    command: bytes
    payload: bytes = b""
    action: str = ""
    # 'y' replycode: smtp_code "550", text "5.7.1 Rejected" (after the code and separator).
    smtp_code: str | None = None
    text: str | None = None
    # 'q' quarantine.
    reason: str | None = None
    # 'h' add header, 'i' insert header (index), 'm' change header (index; empty value deletes).
    index: int | None = None
    name: str | None = None
    value: str | None = None
    # '+', '-', '2', 'e': address (first) then ESMTP arguments.
    args: tuple[str, ...] = ()
    # 'b' replace body chunk.
    body: bytes | None = None
    # 'O' negotiation.
    version: int | None = None
    actions: int | None = None
    protocol: int | None = None
    macros: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: types.MappingProxyType({}), hash=False
    )

    @property
    def smtp_reply(self) -> str | None:
        """The whole SMTP reply of a 'y' reply, e.g. ``"550 5.7.1 Rejected"``."""
        if self.command != SMFIR_REPLYCODE:
            return None
        return _text(self.payload.rstrip(b"\0"))

    @property
    def is_final(self) -> bool:
        """An accept/reject-type answer that ends the wait for this event."""
        return self.command in _FINAL_REPLIES

    @property
    def is_modification(self) -> bool:
        """A message modification (only valid in reply to end-of-message)."""
        return self.command in _MODIFICATIONS

    @property
    def disposition(self) -> str:
        """accept/continue/reject/tempfail/discard/...; a 'y' maps by its code (4xx/5xx)."""
        if self.command == SMFIR_REPLYCODE:
            return "tempfail" if (self.smtp_code or "").startswith("4") else "reject"
        return self.action


def decode_reply(cmd: bytes, payload: bytes) -> Reply:
    """Decode one milter reply packet; raise MilterProtocolError where Postfix would refuse it."""
    if len(cmd) != 1:
        raise ValueError("cmd must be one byte")
    action = _REPLY_NAMES.get(cmd)
    if action is None:
        raise MilterProtocolError(f"unknown reply command {cmd!r} (payload {payload[:64]!r})")
    if cmd in _EMPTY_REPLIES:
        if payload:
            raise MilterProtocolError(f"{action} reply followed by {len(payload)} data bytes")
        return Reply(cmd, payload, action)
    if cmd == SMFIR_REPLYCODE:
        (line,) = _split_cstrings(cmd, payload, 1)
        text = _text(line)
        # Postfix milter8.c: [45]dd[ -][same digit] or it is a configuration error.
        if (
            len(text) < 5
            or text[0] not in "45"
            or not text[1:3].isdigit()
            or text[3] not in " -"
            or text[4] != text[0]
        ):
            raise MilterProtocolError(f"malformed replycode (Postfix rejects it): {text!r}")
        return Reply(cmd, payload, action, smtp_code=text[:3], text=text[4:])
    if cmd == SMFIR_QUARANTINE:
        (reason,) = _split_cstrings(cmd, payload, 1)
        return Reply(cmd, payload, action, reason=_text(reason))
    if cmd == SMFIR_ADDHEADER:
        hname, hvalue = _split_cstrings(cmd, payload, 2)
        return Reply(cmd, payload, action, name=_text(hname), value=_text(hvalue))
    if cmd in (SMFIR_INSHEADER, SMFIR_CHGHEADER):
        if len(payload) < 4:
            raise MilterProtocolError(f"{action} reply too short for an index: {payload!r}")
        (index,) = _LEN.unpack_from(payload)
        hname, hvalue = _split_cstrings(cmd, payload[4:], 2)
        if cmd == SMFIR_CHGHEADER and not hname:
            raise MilterProtocolError("chgheader reply with an empty header name")
        return Reply(cmd, payload, action, index=index, name=_text(hname), value=_text(hvalue))
    if cmd in (SMFIR_ADDRCPT, SMFIR_DELRCPT):
        (rcpt,) = _split_cstrings(cmd, payload, 1)
        return Reply(cmd, payload, action, args=(_text(rcpt),))
    if cmd in (SMFIR_ADDRCPT_PAR, SMFIR_CHGFROM):
        parts = _split_cstrings(cmd, payload, None)
        return Reply(cmd, payload, action, args=tuple(_text(p) for p in parts))
    if cmd == SMFIR_REPLBODY:
        return Reply(cmd, payload, action, body=payload)
    if cmd == SMFIR_OPTNEG:
        return _decode_optneg(payload)
    # SMFIR_SETSYMLIST: defined but used by no implementation; keep it raw.
    return Reply(cmd, payload, action)


def _decode_optneg(payload: bytes) -> Reply:
    if len(payload) < _OPTNEG.size:
        raise MilterProtocolError(f"option negotiation reply too short: {payload!r}")
    version, actions, protocol = _OPTNEG.unpack_from(payload)
    macros: dict[str, tuple[str, ...]] = {}
    rest = payload[_OPTNEG.size :]
    while rest:
        if len(rest) < 5:
            raise MilterProtocolError(f"truncated macro list in negotiation reply: {rest!r}")
        (stage,) = _LEN.unpack_from(rest)
        end = rest.find(b"\0", 4)
        if end < 0:
            raise MilterProtocolError(f"macro list not NUL-terminated: {rest!r}")
        names = _text(rest[4:end]).split()
        macros[_STAGE_BY_INDEX.get(stage, str(stage))] = tuple(names)
        rest = rest[end + 1 :]
    return Reply(
        SMFIR_OPTNEG,
        payload,
        "optneg",
        version=version,
        actions=actions,
        protocol=protocol,
        macros=types.MappingProxyType(macros),
    )


# --------------------------------------------------------------------------------------------
# Message splitting (as Postfix presents a message to a milter)
# --------------------------------------------------------------------------------------------

_HEADER_LABEL = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")


def split_message(
    raw: bytes, *, leading_space: bool = False
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Split a raw RFC 5322 message into ``([(name, value), ...], body)`` as Postfix sends them.

    - Lines may end in LF or CRLF.
    - A folded header is one header: its lines are joined with a bare ``\\n`` and each
      continuation keeps its leading whitespace.
    - The name ends at the colon (whitespace before the colon is dropped); the value is
      everything after it, minus one leading space (not tab) unless ``leading_space``
      (SMFIP_HDR_LEADSPC was negotiated).
    - The header section ends at the first empty line (which is consumed) or at the first line
      that is neither a header nor a continuation (which becomes the first body line).
    - The body gets CRLF line endings; a last line without a newline gets one, as over SMTP.
    """
    lines = raw.split(b"\n")
    headers: list[tuple[bytes, bytes]] = []
    i = 0
    while i < len(lines):
        line = lines[i].removesuffix(b"\r")
        if not line:
            i += 1
            break
        if line[:1] in (b" ", b"\t"):
            if not headers:
                break
            hname, hvalue = headers[-1]
            headers[-1] = (hname, hvalue + b"\n" + line)
            i += 1
            continue
        match = _HEADER_LABEL.match(line)
        if match is None:
            break
        headers.append((match.group(1), line[match.end() :]))
        i += 1
    if not leading_space:
        headers = [(n, v[1:] if v.startswith(b" ") else v) for n, v in headers]
    body_lines = lines[i:]
    if body_lines and body_lines[-1] == b"":
        body_lines.pop()
    body = b"".join(line.removesuffix(b"\r") + b"\r\n" for line in body_lines)
    return headers, body


def chunk_body(body: bytes, size: int = MILTER_CHUNK_SIZE) -> list[bytes]:
    """Cut a body into chunks of ``size`` bytes (Postfix fills each chunk to 65535 bytes)."""
    if size < 1:
        raise ValueError("chunk size must be positive")
    return [body[i : i + size] for i in range(0, len(body), size)]


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One event the client handled: whether it went out, whether a reply was awaited, timing.

    ``seconds`` is the round trip (send + wait for the final reply) for replied events and just
    the (buffered) send for events without a reply; 0.0 for skipped events.
    """

    event: str
    sent: bool
    replied: bool
    seconds: float
    reply: Reply | None = None


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    """The milter's answer to end-of-message: modifications in order, then the final reply."""

    modifications: tuple[Reply, ...]
    reply: Reply


@dataclass(frozen=True, slots=True)
class HeaderEdit:
    """A header modification requested at end of message.

    ``index``: for "insert" the 0-based position libmilter sends (0 = top), for "change" the
    1-based occurrence of that name (an empty value deletes it), None for "add".
    """

    kind: Literal["add", "insert", "change"]
    name: str
    value: str
    index: int | None = None

    @property
    def is_delete(self) -> bool:
        return self.kind == "change" and self.value == ""


@dataclass(frozen=True, slots=True)
class SessionResult:
    """What the milter decided for one message and how long each event took.

    ``action`` is one of accept, continue, reject, tempfail, discard, quarantine, connfail,
    shutdown: a 'y' reply maps to reject/tempfail by its code, and a quarantine request turns an
    accept/continue into "quarantine". ``stage`` names the event whose reply decided it ("eom"
    for a normal run). ``smtp_reply`` is a 'y' reply as Postfix would send it to the SMTP client
    (``%%`` undoubled); ``reply.smtp_reply`` keeps the wire form.
    """

    action: str
    stage: str
    reply: Reply | None
    smtp_reply: str | None = None
    quarantine_reason: str | None = None
    header_edits: tuple[HeaderEdit, ...] = ()
    modifications: tuple[Reply, ...] = ()
    rcpt_replies: tuple[tuple[str, Reply | None], ...] = ()
    events: tuple[EventRecord, ...] = ()
    negotiated: Reply | None = None
    warnings: tuple[str, ...] = ()

    @property
    def timings(self) -> tuple[tuple[str, float], ...]:
        """(event, seconds) for every event that was sent, in order."""
        return tuple((e.event, e.seconds) for e in self.events if e.sent)

    @property
    def total_seconds(self) -> float:
        return sum(e.seconds for e in self.events)


def header_edits(modifications: Iterable[Reply]) -> tuple[HeaderEdit, ...]:
    """The header additions/insertions/changes among ``modifications``, in order."""
    edits: list[HeaderEdit] = []
    for mod in modifications:
        name = mod.name or ""
        value = mod.value or ""
        if mod.command == SMFIR_ADDHEADER:
            edits.append(HeaderEdit("add", name, value))
        elif mod.command == SMFIR_INSHEADER:
            edits.append(HeaderEdit("insert", name, value, mod.index))
        elif mod.command == SMFIR_CHGHEADER:
            edits.append(HeaderEdit("change", name, value, mod.index))
    return tuple(edits)


# --------------------------------------------------------------------------------------------
# Addresses
# --------------------------------------------------------------------------------------------


def parse_address(address: str) -> tuple[socket.AddressFamily, str, int]:
    """Parse a milter address into ``(family, host_or_path, port)``.

    Accepts libmilter syntax ``inet:PORT@HOST``, ``inet6:PORT@HOST``, ``unix:/path``,
    ``local:/path``, a bare ``/path``, and Postfix's ``inet:HOST:PORT``. ``inet:PORT`` without a
    host means 127.0.0.1 (``::1`` for inet6). Port is 0 for unix sockets.
    """
    if address.startswith("/"):
        return socket.AF_UNIX, address, 0
    scheme, sep, rest = address.partition(":")
    if not sep or not rest:
        raise ValueError(f"bad milter address {address!r}: want inet:PORT@HOST or unix:/path")
    scheme = scheme.lower()
    if scheme in ("unix", "local"):
        return socket.AF_UNIX, rest, 0
    if scheme not in ("inet", "inet6"):
        raise ValueError(f"bad milter address {address!r}: unknown transport {scheme!r}")
    family = socket.AF_INET if scheme == "inet" else socket.AF_INET6
    if "@" in rest:
        port_text, _, host = rest.partition("@")
    elif scheme == "inet" and ":" in rest:
        host, _, port_text = rest.rpartition(":")
    else:
        port_text, host = rest, ""
    host = host.strip("[]") or ("127.0.0.1" if family == socket.AF_INET else "::1")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad milter address {address!r}: bad port {port_text!r}")
    return family, host, int(port_text)


# --------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------

MacroArg = Mapping[str, str] | None


class MilterClient:
    """MTA side of one milter connection.

    Low level: :meth:`send_packet`, :meth:`send_raw`, :meth:`read_packet`, :meth:`read_reply`.
    High level (behaves like Postfix): :meth:`negotiate`, :meth:`macro`, :meth:`smtp_connect`,
    :meth:`helo`, :meth:`mail_from`, :meth:`rcpt`, :meth:`data`, :meth:`unknown`,
    :meth:`header`, :meth:`eoh`, :meth:`body`, :meth:`eom`, :meth:`abort`, :meth:`quit`,
    :meth:`quit_nc`; :meth:`send_message` runs a whole session and :meth:`send_transaction` one
    more message on an open session. Every event is logged in :attr:`events` with its timing.

    Event methods return the milter's reply, or None when no reply was read: the event was
    skipped (SMFIP_NO* negotiated, or not part of the offered protocol) or the milter asked for
    no reply (SMFIP_NR_*). ``force=True`` sends a skipped event anyway; ``expect_reply``
    overrides whether a reply is read. Progress replies are consumed while waiting.

    Like Postfix's buffered stream, high-level writes are coalesced (``coalesce=True``): packets
    of events without a reply, and macros, are written together with the next packet that needs
    an answer (or on :meth:`flush`, :meth:`abort`, :meth:`quit`, :meth:`close`). Low-level
    :meth:`send_packet`/:meth:`send_raw` always write at once.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        timeout: float = 10.0,
        coalesce: bool = True,
        max_reply_size: int = DEFAULT_MAX_REPLY,
    ) -> None:
        self.sock = sock
        self.timeout = timeout
        self.coalesce = coalesce
        self.max_reply_size = max_reply_size
        sock.settimeout(timeout)
        self._rbuf = bytearray()
        self._wbuf = bytearray()
        self._closed = False
        self.negotiated: Reply | None = None
        self.offered_version = SMFI_PROT_VERSION
        self.offered_actions = ACTIONS_ALL
        self.offered_protocol = PROTOCOL_POSTFIX
        self.events: list[EventRecord] = []
        self.quarantine_reason: str | None = None
        self.progress_count = 0

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        address: str,
        *,
        timeout: float = 10.0,
        nodelay: bool = True,
        coalesce: bool = True,
        max_reply_size: int = DEFAULT_MAX_REPLY,
    ) -> Self:
        """Open a connection to a milter at ``address`` (see :func:`parse_address`)."""
        family, host, port = parse_address(address)
        if family == socket.AF_UNIX:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(host)
            except BaseException:
                sock.close()
                raise
        else:
            infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
            if not infos:
                raise OSError(f"cannot resolve {host!r}")
            af, socktype, proto, _canon, sockaddr = infos[0]
            sock = socket.socket(af, socktype, proto)
            sock.settimeout(timeout)
            try:
                sock.connect(sockaddr)
                if nodelay:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except BaseException:
                sock.close()
                raise
        return cls(sock, timeout=timeout, coalesce=coalesce, max_reply_size=max_reply_size)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Flush pending packets (best effort) and close the socket."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._wbuf:
                self.sock.sendall(bytes(self._wbuf))
        except OSError:
            pass
        finally:
            self._wbuf.clear()
            self.sock.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- negotiated state ---------------------------------------------------------------------

    @property
    def protocol(self) -> int:
        """The protocol bits the milter answered (0 before negotiation: send all, await all)."""
        return (self.negotiated.protocol or 0) if self.negotiated else 0

    @property
    def actions(self) -> int:
        return (self.negotiated.actions or 0) if self.negotiated else 0

    @property
    def requested_macros(self) -> Mapping[str, tuple[str, ...]]:
        """Per-stage macro lists the milter asked for in negotiation (empty if none)."""
        return self.negotiated.macros if self.negotiated else types.MappingProxyType({})

    @property
    def leading_space(self) -> bool:
        return bool(self.protocol & SMFIP_HDR_LEADSPC)

    # -- low level ----------------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        """Write arbitrary bytes now (after any coalesced packets). For abuse tests."""
        self._wbuf += data
        self.flush()

    def send_packet(self, cmd: bytes, payload: bytes = b"") -> None:
        """Frame and write one packet now. No NR/NO logic; the caller reads any reply."""
        self.send_raw(encode_packet(cmd, payload))

    def flush(self) -> None:
        """Write coalesced packets."""
        if not self._wbuf:
            return
        data = bytes(self._wbuf)
        self._wbuf.clear()
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as exc:
            raise ConnectionClosed(f"milter closed the connection while we wrote: {exc}") from exc
        except TimeoutError as exc:
            raise MilterTimeoutError(f"write timed out after {self.sock.gettimeout()} s") from exc

    def _queue(self, packet: bytes) -> None:
        self._wbuf += packet
        if not self.coalesce or len(self._wbuf) >= MILTER_CHUNK_SIZE:
            self.flush()

    def _recv_exact(self, n: int, *, at_boundary: bool, deadline_timeout: float | None) -> bytes:
        if deadline_timeout is not None:
            self.sock.settimeout(deadline_timeout)
        try:
            while len(self._rbuf) < n:
                try:
                    chunk = self.sock.recv(max(65536, n - len(self._rbuf)))
                except TimeoutError as exc:
                    raise MilterTimeoutError(
                        f"no complete reply within {self.sock.gettimeout()} s "
                        f"({len(self._rbuf)} of {n} bytes buffered)"
                    ) from exc
                except (ConnectionResetError, ConnectionAbortedError) as exc:
                    raise ConnectionClosed(f"milter reset the connection: {exc}") from exc
                if not chunk:
                    if at_boundary and not self._rbuf:
                        raise ConnectionClosed("milter closed the connection")
                    raise MilterProtocolError(
                        f"EOF inside a reply packet ({len(self._rbuf)} of {n} bytes)"
                    )
                self._rbuf += chunk
        finally:
            if deadline_timeout is not None:
                self.sock.settimeout(self.timeout)
        data = bytes(self._rbuf[:n])
        del self._rbuf[:n]
        return data

    def read_packet(self, *, timeout: float | None = None) -> tuple[bytes, bytes]:
        """Read one framed packet ``(cmd, payload)`` without decoding it."""
        self.flush()
        (size,) = _LEN.unpack(self._recv_exact(4, at_boundary=True, deadline_timeout=timeout))
        if size < 1:
            raise MilterProtocolError(f"bad reply packet length {size}")
        if size > self.max_reply_size:
            raise MilterProtocolError(
                f"unreasonable reply packet length {size} > {self.max_reply_size}"
            )
        body = self._recv_exact(size, at_boundary=False, deadline_timeout=timeout)
        return body[:1], body[1:]

    def read_reply(self, *, timeout: float | None = None) -> Reply:
        """Read and decode one reply packet (progress replies included)."""
        cmd, payload = self.read_packet(timeout=timeout)
        return decode_reply(cmd, payload)

    # -- negotiation ---------------------------------------------------------------------------

    def negotiate(
        self,
        version: int = SMFI_PROT_VERSION,
        actions: int = ACTIONS_ALL,
        protocol: int = PROTOCOL_POSTFIX,
    ) -> Reply:
        """Send SMFIC_OPTNEG and return the milter's 'O' reply.

        Fails like Postfix does when the reply is not 'O', names a higher version, or requests
        actions that were not offered. Protocol bits outside the offer are kept (Postfix only
        logs them) and then drive which events are sent and answered.
        """
        start = time.perf_counter()
        self._queue(encode_packet(SMFIC_OPTNEG, _OPTNEG.pack(version, actions, protocol)))
        reply = self.read_reply()
        seconds = time.perf_counter() - start
        if reply.command != SMFIR_OPTNEG:
            raise MilterProtocolError(f"unexpected reply {reply.action!r} to option negotiation")
        got_version, got_actions = reply.version or 0, reply.actions or 0
        if got_version > version:
            raise MilterProtocolError(
                f"milter protocol version {got_version} conflicts with offered {version}"
            )
        if got_actions & ~actions:
            raise MilterProtocolError(
                f"milter requests actions {got_actions:#x} outside the offered {actions:#x}"
            )
        self.offered_version, self.offered_actions = version, actions
        self.offered_protocol = protocol
        self.negotiated = reply
        self.events.append(EventRecord("negotiate", True, True, seconds, reply))
        return reply

    # -- events --------------------------------------------------------------------------------

    def macro(self, stage: str | bytes, macros: Mapping[str, str]) -> None:
        """Send SMFIC_MACRO for a stage ('connect', 'helo', ... or a command byte like b'C').

        Names and values are sent verbatim (include the braces: ``{tls_version}``). No reply.
        """
        self._queue(encode_packet(SMFIC_MACRO, self._macro_payload(stage, macros)))

    @staticmethod
    def _macro_payload(stage: str | bytes, macros: Mapping[str, str]) -> bytes:
        if isinstance(stage, bytes):
            cmd = stage
        elif stage in STAGES:
            cmd = STAGES[stage][0]
        else:
            cmd = stage.encode("ascii")
        if len(cmd) != 1:
            raise ValueError(f"bad macro stage {stage!r}")
        payload = bytearray(cmd)
        for name, value in macros.items():
            payload += _cstrings(name, value)
        return bytes(payload)

    def _event(
        self,
        event: str,
        cmd: bytes,
        payload: bytes,
        *,
        no_flag: int,
        nr_flag: int,
        macros: MacroArg,
        force: bool,
        expect_reply: bool | None,
    ) -> Reply | None:
        start = time.perf_counter()
        if not force and no_flag and self.negotiated and not (no_flag & self.offered_protocol):
            # Outside the protocol we offered: Postfix sends neither macros nor the event.
            self.events.append(EventRecord(event, False, False, 0.0))
            return None
        if macros is not None:
            self._queue(encode_packet(SMFIC_MACRO, self._macro_payload(cmd, macros)))
        if not force and no_flag & self.protocol:
            self.events.append(EventRecord(event, False, False, time.perf_counter() - start))
            return None
        self._queue(encode_packet(cmd, payload))
        want = expect_reply if expect_reply is not None else not (nr_flag & self.protocol)
        if not want:
            self.events.append(EventRecord(event, True, False, time.perf_counter() - start))
            return None
        reply = self._await_reply(event)
        self.events.append(EventRecord(event, True, True, time.perf_counter() - start, reply))
        return reply

    def _await_reply(self, event: str) -> Reply:
        while True:
            reply = self.read_reply()
            if reply.command == SMFIR_PROGRESS:
                self.progress_count += 1
                continue
            if reply.command == SMFIR_QUARANTINE:
                # Postfix accepts a quarantine request at any stage and keeps reading.
                self.quarantine_reason = reply.reason
                continue
            if reply.is_final or reply.command == SMFIR_SKIP:
                return reply
            raise MilterProtocolError(f"unexpected reply {reply.action!r} to event {event!r}")

    def smtp_connect(
        self,
        hostname: str,
        family: str = SMFIA_INET,
        port: int = 0,
        address: str = "",
        *,
        macros: MacroArg = None,
        force: bool = False,
        expect_reply: bool | None = None,
    ) -> Reply | None:
        """SMFIC_CONNECT (named so because :meth:`connect` opens the socket).

        ``family`` is '4', '6', 'L' (unix; port 0) or 'U' (unknown: port and address omitted).
        ``hostname`` is what Postfix sends: the client's name, or ``[ip]`` when unknown.
        """
        if family not in (SMFIA_INET, SMFIA_INET6, SMFIA_UNIX, SMFIA_UNKNOWN):
            raise ValueError(f"bad address family {family!r}")
        payload = _cstrings(hostname) + family.encode("ascii")
        if family != SMFIA_UNKNOWN:
            payload += _PORT.pack(port) + _cstrings(address)
        return self._event(
            "connect",
            SMFIC_CONNECT,
            payload,
            no_flag=SMFIP_NOCONNECT,
            nr_flag=SMFIP_NR_CONN,
            macros=macros,
            force=force,
            expect_reply=expect_reply,
        )

    def helo(
        self,
        name: str,
        *,
        macros: MacroArg = None,
        force: bool = False,
        expect_reply: bool | None = None,
    ) -> Reply | None:
        return self._event(
            "helo",
            SMFIC_HELO,
            _cstrings(name),
            no_flag=SMFIP_NOHELO,
            nr_flag=SMFIP_NR_HELO,
            macros=macros,
            force=force,
            expect_reply=expect_reply,
        )

    def mail_from(
        self,
        addr: str,
        *esmtp_args: str,
        macros: MacroArg = None,
        force: bool = False,
        expect_reply: bool | None = None,
    ) -> Reply | None:
        """SMFIC_MAIL. ``addr`` gets angle brackets unless it has them ("" becomes "<>")."""
        self.quarantine_reason = None
        return self._event(
            "mail",
            SMFIC_MAIL,
            _cstrings(_bracket(addr), *esmtp_args),
            no_flag=SMFIP_NOMAIL,
            nr_flag=SMFIP_NR_MAIL,
            macros=macros,
            force=force,
            expect_reply=expect_reply,
        )

    def rcpt(
        self,
        addr: str,
        *esmtp_args: str,
        macros: MacroArg = None,
        force: bool = False,
        expect_reply: bool | None = None,
    ) -> Reply | None:
        """SMFIC_RCPT. ``addr`` gets angle brackets unless it has them."""
        return self._event(
            "rcpt",
            SMFIC_RCPT,
            _cstrings(_bracket(addr), *esmtp_args),
            no_flag=SMFIP_NORCPT,
            nr_flag=SMFIP_NR_RCPT,
            macros=macros,
            force=force,
            expect_reply=expect_reply,
        )

    def data(
        self, *, macros: MacroArg = None, force: bool = False, expect_reply: bool | None = None
    ) -> Reply | None:
        return self._event(
            "data",
            SMFIC_DATA,
            b"",
            no_flag=SMFIP_NODATA,
            nr_flag=SMFIP_NR_DATA,
            macros=macros,
            force=force,
            expect_reply=expect_reply,
        )

    def unknown(
        self,
        command: str,
        *,
        macros: MacroArg = None,
        force: bool = False,
        expect_reply: bool | None = None,
    ) -> Reply | None:
        """SMFIC_UNKNOWN: an SMTP command the MTA did not recognise."""
        return self._event(
            "unknown",
            SMFIC_UNKNOWN,
            _cstrings(command),
            no_flag=SMFIP_NOUNKNOWN,
            nr_flag=SMFIP_NR_UNKN,
            macros=macros,
            force=force,
            expect_reply=expect_reply,
        )

    def header(
        self,
        name: str | bytes,
        value: str | bytes,
        *,
        macros: MacroArg = None,
        force: bool = False,
        expect_reply: bool | None = None,
    ) -> Reply | None:
        """SMFIC_HEADER with name and value sent verbatim (str as UTF-8).

        Postfix sends its end-of-header macros with every header (libmilter ignores macros for
        this command); pass them as ``macros`` to do the same.
        """
        return self._event(
            "header",
            SMFIC_HEADER,
            _cstrings(name, value),
            no_flag=SMFIP_NOHDRS,
            nr_flag=SMFIP_NR_HDR,
            macros=macros,
            force=force,
            expect_reply=expect_reply,
        )

    def eoh(
        self, *, macros: MacroArg = None, force: bool = False, expect_reply: bool | None = None
    ) -> Reply | None:
        return self._event(
            "eoh",
            SMFIC_EOH,
            b"",
            no_flag=SMFIP_NOEOH,
            nr_flag=SMFIP_NR_EOH,
            macros=macros,
            force=force,
            expect_reply=expect_reply,
        )

    def body(
        self,
        chunk: bytes,
        *,
        macros: MacroArg = None,
        force: bool = False,
        expect_reply: bool | None = None,
    ) -> Reply | None:
        """One SMFIC_BODY chunk, sent as given (see :func:`chunk_body` for the 65535 limit)."""
        return self._event(
            "body",
            SMFIC_BODY,
            bytes(chunk),
            no_flag=SMFIP_NOBODY,
            nr_flag=SMFIP_NR_BODY,
            macros=macros,
            force=force,
            expect_reply=expect_reply,
        )

    def eom(self, chunk: bytes = b"", *, macros: MacroArg = None) -> EndOfMessage:
        """SMFIC_BODYEOB; collect modifications until the final reply (always awaited)."""
        start = time.perf_counter()
        if macros is not None:
            self._queue(encode_packet(SMFIC_MACRO, self._macro_payload(SMFIC_BODYEOB, macros)))
        self._queue(encode_packet(SMFIC_BODYEOB, bytes(chunk)))
        modifications: list[Reply] = []
        while True:
            reply = self.read_reply()
            if reply.command == SMFIR_PROGRESS:
                self.progress_count += 1
                continue
            if reply.is_modification:
                if reply.command == SMFIR_QUARANTINE:
                    self.quarantine_reason = reply.reason
                modifications.append(reply)
                continue
            if reply.is_final:
                break
            raise MilterProtocolError(f"unexpected reply {reply.action!r} to end-of-message")
        self.events.append(EventRecord("eom", True, True, time.perf_counter() - start, reply))
        return EndOfMessage(tuple(modifications), reply)

    def abort(self) -> None:
        """SMFIC_ABORT (no reply): end the current transaction."""
        self.quarantine_reason = None
        self._queue(encode_packet(SMFIC_ABORT))
        self.flush()
        self.events.append(EventRecord("abort", True, False, 0.0))

    def quit(self) -> None:
        """SMFIC_QUIT (no reply). The milter then closes; call :meth:`close` afterwards."""
        self._queue(encode_packet(SMFIC_QUIT))
        self.flush()
        self.events.append(EventRecord("quit", True, False, 0.0))

    def quit_nc(self) -> None:
        """SMFIC_QUIT_NC: quit, but a new session (starting with negotiation) follows."""
        self._queue(encode_packet(SMFIC_QUIT_NC))
        self.flush()
        self.negotiated = None
        self.events.append(EventRecord("quit_nc", True, False, 0.0))

    # -- whole sessions ------------------------------------------------------------------------

    def _stage_macros(
        self, stage: str, macros: Mapping[str, Mapping[str, str]] | None, filter_macros: bool
    ) -> dict[str, str] | None:
        if macros is None or stage not in macros:
            return None
        given = macros[stage]
        wanted = self.requested_macros.get(stage) if filter_macros else None
        if wanted is None:
            return dict(given)
        # Like Postfix: the milter's list replaces the default list; send the defined ones.
        return {name: given[name] for name in wanted if name in given}

    def send_message(
        self,
        raw_message: bytes,
        *,
        client_ip: str,
        helo: str,
        mail_from: str,
        rcpts: Sequence[str],
        macros: Mapping[str, Mapping[str, str]] | None = None,
        client_name: str | None = None,
        client_port: int = 0,
        mail_args: Sequence[str] = (),
        filter_macros: bool = True,
        quit: bool = True,
    ) -> SessionResult:
        """Run a whole session like Postfix: negotiate (if not yet), connect, helo, one
        transaction (:meth:`send_transaction`), then ABORT + QUIT and close (if ``quit``).

        ``macros`` maps stage names ('connect', 'helo', 'mail', 'rcpt', 'data', 'eoh', 'eom')
        to ``{name: value}``; each stage's macros go out right before its event (eoh macros
        also before every header, eom macros also before every body chunk, as Postfix does),
        even when the milter declined the event itself. With ``filter_macros`` only the macros a
        milter asked for in negotiation are sent, for stages where it asked.

        A reject/tempfail/accept at connect or helo ends the session there: the socket is closed
        without QUIT, as Postfix does.
        """
        first_event = len(self.events)
        if self.negotiated is None:
            self.negotiate()
        warnings: list[str] = []
        if client_name is None:
            client_name = f"[{client_ip}]"
        family = SMFIA_INET6 if ipaddress.ip_address(client_ip).version == 6 else SMFIA_INET
        for stage in ("connect", "helo"):
            if stage == "connect":
                reply = self.smtp_connect(
                    client_name,
                    family,
                    client_port,
                    client_ip,
                    macros=self._stage_macros("connect", macros, filter_macros),
                )
            else:
                reply = self.helo(helo, macros=self._stage_macros("helo", macros, filter_macros))
            if reply is None or reply.command in (SMFIR_CONTINUE, SMFIR_SKIP):
                continue
            if reply.command == SMFIR_DISCARD:
                warnings.append(f"DISCARD is not allowed at {stage}; treated as continue")
                continue
            self.close()
            return SessionResult(
                action=reply.disposition,
                stage=stage,
                reply=reply,
                smtp_reply=postfix_reply_text(reply),
                events=tuple(self.events[first_event:]),
                negotiated=self.negotiated,
                warnings=tuple(warnings),
            )
        result = self.send_transaction(
            raw_message,
            mail_from=mail_from,
            rcpts=rcpts,
            macros=macros,
            mail_args=mail_args,
            filter_macros=filter_macros,
        )
        if quit:
            self.abort()
            self.quit()
            self.close()
        return SessionResult(
            action=result.action,
            stage=result.stage,
            reply=result.reply,
            smtp_reply=result.smtp_reply,
            quarantine_reason=result.quarantine_reason,
            header_edits=result.header_edits,
            modifications=result.modifications,
            rcpt_replies=result.rcpt_replies,
            events=tuple(self.events[first_event:]),
            negotiated=self.negotiated,
            warnings=tuple(warnings) + result.warnings,
        )

    def send_transaction(
        self,
        raw_message: bytes,
        *,
        mail_from: str,
        rcpts: Sequence[str],
        macros: Mapping[str, Mapping[str, str]] | None = None,
        mail_args: Sequence[str] = (),
        filter_macros: bool = True,
    ) -> SessionResult:
        """One mail transaction (MAIL .. end-of-message) on an open session, ending with
        SMFIC_ABORT as Postfix does at the end of every transaction.

        Early answers are handled like Postfix: reject/tempfail/discard/accept at MAIL, DATA,
        a header, EOH or a body chunk ends the message there; a rejected recipient is dropped
        and the message goes on if any recipient is left; SKIP stops further events of its kind
        (e.g. body chunks).
        """
        first_event = len(self.events)

        def stage_macros(stage: str) -> dict[str, str] | None:
            return self._stage_macros(stage, macros, filter_macros)

        def finish(
            stage: str,
            reply: Reply | None,
            mods: tuple[Reply, ...] = (),
            rcpt_replies: Sequence[tuple[str, Reply | None]] = (),
        ) -> SessionResult:
            quarantine = self.quarantine_reason
            action = reply.disposition if reply is not None else "continue"
            if quarantine is not None and action in ("accept", "continue"):
                action = "quarantine"
            result = SessionResult(
                action=action,
                stage=stage,
                reply=reply,
                smtp_reply=postfix_reply_text(reply),
                quarantine_reason=quarantine,
                header_edits=header_edits(mods),
                modifications=mods,
                rcpt_replies=tuple(rcpt_replies),
                events=tuple(self.events[first_event:]),
                negotiated=self.negotiated,
            )
            self.abort()
            return result

        def decisive(reply: Reply | None) -> bool:
            return reply is not None and reply.command not in (SMFIR_CONTINUE, SMFIR_SKIP)

        reply = self.mail_from(mail_from, *mail_args, macros=stage_macros("mail"))
        if decisive(reply):
            return finish("mail", reply)

        rcpt_replies: list[tuple[str, Reply | None]] = []
        accepted = 0
        last_rejection: Reply | None = None
        for rcpt in rcpts:
            reply = self.rcpt(rcpt, macros=stage_macros("rcpt"))
            rcpt_replies.append((rcpt, reply))
            if reply is not None and reply.disposition in ("reject", "tempfail"):
                last_rejection = reply
                continue
            if reply is not None and reply.command in (SMFIR_ACCEPT, SMFIR_DISCARD):
                return finish("rcpt", reply, rcpt_replies=rcpt_replies)
            accepted += 1
        if accepted == 0:
            return finish("rcpt", last_rejection, rcpt_replies=rcpt_replies)

        reply = self.data(macros=stage_macros("data"))
        if decisive(reply):
            return finish("data", reply, rcpt_replies=rcpt_replies)

        headers, body = split_message(raw_message, leading_space=self.leading_space)
        eoh_macros = stage_macros("eoh")
        eom_macros = stage_macros("eom")
        skip_headers = False
        for hname, hvalue in headers:
            if skip_headers:
                break
            reply = self.header(hname, hvalue, macros=eoh_macros)
            if reply is not None and reply.command == SMFIR_SKIP:
                skip_headers = True
            elif decisive(reply):
                return finish("header", reply, rcpt_replies=rcpt_replies)
        reply = self.eoh(macros=eoh_macros)
        if decisive(reply):
            return finish("eoh", reply, rcpt_replies=rcpt_replies)
        for chunk in chunk_body(body):
            reply = self.body(chunk, macros=eom_macros)
            if reply is not None and reply.command == SMFIR_SKIP:
                break
            if decisive(reply):
                return finish("body", reply, rcpt_replies=rcpt_replies)
        end = self.eom(macros=eom_macros)
        return finish("eom", end.reply, end.modifications, rcpt_replies)


def _bracket(addr: str) -> str:
    return addr if addr.startswith("<") else f"<{addr}>"


def postfix_reply_text(reply: Reply | None) -> str | None:
    """A 'y' reply as Postfix sends it to the SMTP client: ``%%`` becomes ``%`` and a single
    ``%`` is dropped (libmilter sends the doubled form on the wire)."""
    wire = reply.smtp_reply if reply is not None else None
    if wire is None:
        return None
    return re.sub(r"%(.?)", r"\1", wire, flags=re.DOTALL)
