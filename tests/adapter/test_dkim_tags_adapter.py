"""Issue 12, items 6-10, through the real daemon over the milter protocol: the key records come
from a real DNS server on loopback, the messages from our milter client, and the verdict is
read from the Authentication-Results header the daemon inserts. Each case has its control
(the one-change variant that was already handled). The same cases through check_dkim:
tests/unit/test_dkim_tags.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.support import dkimkeys
from tests.support import milterclient as mc
from tests.support.dnsserver import DnsTestServer
from tests.support.milterproc import MilterProcess

SENDER = "sender.example"
VICTIM = "victim.example"
KEY = dkimkeys.ed25519_key(b"\x0d" * 32)
# selector -> what its key record adds to "v=DKIM1; k=ed25519; p=..."
SELECTORS = {
    "plain": "",
    "services": "s=email:tlsrpt",  # item 6
    "mail": "s=email",  # item 6 control
    "tlsrpt": "s=tlsrpt",  # item 6: refused, with a reason
    "strict": "t=s; T=y",  # item 9
    "strictc": "t=s",  # item 9 control
    "hashes": "h=sha1; x-foo=bar",  # item 9 (h=)
}


@pytest.fixture(scope="module")
def dns_server() -> Iterator[str]:
    with DnsTestServer() as server:
        server.add(SENDER, "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
        for selector, extra in SELECTORS.items():
            server.add(dkimkeys.key_name(selector, SENDER), "TXT", KEY.record(extra))
        # the victim's selector holds the same key (shared through an ESP): item 10
        server.add(dkimkeys.key_name("plain", VICTIM), "TXT", KEY.record())
        yield server.nameserver


@pytest.fixture(scope="module")
def milter(dns_server: str) -> Iterator[MilterProcess]:
    process = MilterProcess({"milter": {"authserv_id": "mx.test.example"},
                             "dns": {"nameservers": [dns_server], "timeout": "1s"}})
    with process:
        yield process


MESSAGE = (f"From: a@{SENDER}\r\nTo: b@example.net\r\nSubject: tags\r\n"
           f"Message-ID: <tags@{SENDER}>\r\n\r\nbody\r\n").encode()


def signed(selector: str = "plain", *extra: tuple[str, str]) -> bytes:
    tags = [("v", "1"), ("a", "ed25519-sha256"), ("d", SENDER), ("s", selector), *extra]
    return dkimkeys.sign_with_tags(MESSAGE, KEY, tags, ["from", "subject"])


def dkim_results(milter: MilterProcess, raw: bytes) -> list[tuple[str, str]]:
    """(result, header.d or "") of every dkim= entry in the A-R header the daemon inserted."""
    with mc.MilterClient.connect(milter.socket_spec) as client:
        result = client.send_message(raw, client_ip="192.0.2.10", helo="client.test.example",
                                     mail_from=f"a@{SENDER}", rcpts=["b@example.net"])
    value = next(e for e in result.header_edits if e.kind == "insert").value
    found = []
    for result_word, rest in re.findall(r"dkim=(\w+)([^;]*)", value):
        domain = re.search(r"header\.d=([\w.-]+)", rest)
        found.append((result_word, domain.group(1) if domain else ""))
    return found


def test_control_plain_key_passes(milter: MilterProcess) -> None:
    assert dkim_results(milter, signed()) == [("pass", SENDER)]


def test_item6_key_for_email_and_tlsrpt_passes(milter: MilterProcess) -> None:
    assert dkim_results(milter, signed("services")) == [("pass", SENDER)]
    assert dkim_results(milter, signed("mail")) == [("pass", SENDER)]  # control


def test_item6_key_for_tlsrpt_only_is_permerror(milter: MilterProcess) -> None:
    assert dkim_results(milter, signed("tlsrpt")) == [("permerror", SENDER)]


def test_item7_unknown_query_method_beside_dns_txt_passes(milter: MilterProcess) -> None:
    assert dkim_results(milter, signed("plain", ("q", "dns/txt:x-other"))) == [("pass", SENDER)]
    assert dkim_results(milter, signed("plain", ("q", "dns/txt"))) == [("pass", SENDER)]
    assert dkim_results(milter, signed("plain", ("q", "x-other"))) == [("permerror", SENDER)]


def test_item8_upper_case_extension_tag_beside_d_passes(milter: MilterProcess) -> None:
    assert dkim_results(milter, signed("plain", ("D", "other.example"))) == [("pass", SENDER)]
    # control: a real duplicate is still a malformed tag list
    assert dkim_results(milter, signed("plain", ("d", SENDER))) == [("permerror", "")]


def test_item9_t_s_holds_beside_an_upper_case_tag(milter: MilterProcess) -> None:
    subdomain = ("i", f"a@sub.{SENDER}")
    assert dkim_results(milter, signed("strict", subdomain)) == [("permerror", SENDER)]
    assert dkim_results(milter, signed("strictc", subdomain)) == [("permerror", SENDER)]
    assert dkim_results(milter, signed("strict", ("i", f"a@{SENDER}"))) == [("pass", SENDER)]


def test_item9_h_holds_beside_a_hyphenated_tag(milter: MilterProcess) -> None:
    assert dkim_results(milter, signed("hashes")) == [("permerror", SENDER)]


def _with_field(name: bytes, raw: bytes) -> bytes:
    """``raw`` with a copy of its signature field, d= changed to the victim, put first under
    ``name``."""
    first, _, rest = raw.partition(b"\r\n")
    while rest[:1] in (b" ", b"\t"):
        line, _, rest = rest.partition(b"\r\n")
        first += b"\r\n" + line
    field = first.partition(b":")[2].replace(f"d={SENDER}".encode(), f"d={VICTIM}".encode())
    return name + b":" + field + b"\r\n" + raw


KELVIN_NAME = "D\u212aIM-Signature".encode()  # "\u212a".lower() == "k"


def test_item10_kelvin_sign_field_lends_no_domain(milter: MilterProcess,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Our client's splitter takes only ASCII field names; the milter protocol carries any
    bytes as a name, so the first field is renamed on its way to the wire."""
    split = mc.split_message

    def kelvin_first(raw: bytes, *, leading_space: bool = False) -> tuple[
            list[tuple[bytes, bytes]], bytes]:
        headers, body = split(raw, leading_space=leading_space)
        assert headers[0][0] == b"X-Renamed"
        return [(KELVIN_NAME, headers[0][1]), *headers[1:]], body

    monkeypatch.setattr(mc, "split_message", kelvin_first)
    raw = _with_field(b"X-Renamed", signed())
    # before the fix: [("pass", VICTIM), ("permerror", SENDER)] (the Kelvin field's d= and key
    # with the real field's signature)
    assert dkim_results(milter, raw) == [("pass", SENDER)]


def test_item10_control_ascii_named_copy_is_checked_as_its_own_signature(
        milter: MilterProcess) -> None:
    raw = _with_field(b"dkim-SIGNATURE", signed())
    assert dkim_results(milter, raw) == [("fail", VICTIM), ("pass", SENDER)]
