"""The marks a message carries of an indirect flow or a known sender (RFC 9989 §8 "other
knowledge and analysis"), read once per message for policy.py to weigh.

Owns: finding the mailing-list header fields (``List-Id``, RFC 2919; ``List-Post``, RFC 2369)
and ARC header fields (RFC 8617) among the headers, and asking the in-memory sending history
(history.py) whether the client's network is known for the author domain.
Must not: decide anything (policy.py turns marks into signs), do I/O, or keep a field's value:
only the names of the fields present leave here, so no hostile text reaches a header or a log.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from .model import Header, field_name_key

LIST_FIELDS = ("List-Id", "List-Post")
# lowercase field name -> the List-* name it marks, or "" for an ARC field
_MARKED = {"list-id": "List-Id", "list-post": "List-Post", "arc-seal": "",
           "arc-message-signature": "", "arc-authentication-results": ""}


class KnownSenders(Protocol):
    """What the policy needs of the sending history (history.SenderHistory)."""

    def known_network(self, domain: str, client_ip: str | None) -> str: ...


@dataclass(frozen=True)
class Marks:
    """``list_fields``: the List-* field names present with a non-blank value (canonical
    spelling, each once); ``arc_fields``: an ARC header field is present (whether or not the
    chain validates, or ARC validation is on); ``known_network``: the client network the
    history knows for the author domain, else ""; ``history``: False when no history was
    available to ask (then ``known_network`` says nothing)."""

    list_fields: tuple[str, ...] = ()
    arc_fields: bool = False
    known_network: str = ""
    history: bool = False


def header_marks(headers: Iterable[Header]) -> Marks:
    """The List-* and ARC marks; one pass, stops as soon as every mark is found, so thousands
    of List-* fields cost no more than one."""
    found: set[str] = set()
    arc = False
    for header in headers:
        # model.field_name_key: the one comparison of field names (cached), then one dict
        # look-up per field: this runs for every failing message
        key = field_name_key(header.name)
        marked = _MARKED.get(key) if key is not None else None
        if marked is None:
            continue
        if not marked:
            arc = True
        elif marked not in found and header.raw_value.strip():
            found.add(marked)
        if arc and len(found) == len(LIST_FIELDS):
            break
    ordered = tuple(name for name in LIST_FIELDS if name in found)
    return Marks(list_fields=ordered, arc_fields=arc)


def read_marks(headers: Iterable[Header], client_ip: str | None, author_domain: str,
               history: KnownSenders | None) -> Marks:
    """Every mark of one message: the header marks, and the history's answer for the client's
    network and the author domain (an in-memory look-up)."""
    marks = header_marks(headers)
    if history is None:
        return marks
    try:
        network = history.known_network(author_domain, client_ip) if author_domain else ""
    except Exception:  # the summary is in memory; a bug there must not cost the message
        return marks
    return Marks(marks.list_fields, marks.arc_fields, network, True)
