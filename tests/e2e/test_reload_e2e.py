"""Reload through a real Postfix: which configuration decides a message that is in an SMTP
transaction while the milter reloads (docs/OPERATIONS.md, "Reload").

A worker swaps its configuration in place; a message keeps the one that was current when the
milter received its MAIL FROM event. Postfix does not send that event when the client says
MAIL FROM: the events we do not answer (MAIL, RCPT) reach the milter together with DATA. So a
message whose SMTP DATA came before the reload is decided with the old configuration, and one
that has passed MAIL FROM and RCPT TO but not DATA is decided with the new one.
"""

from __future__ import annotations

import signal
import smtplib
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.support.milterproc import MilterProcess, render_toml

from .harness import DnsServer, PostfixInstance
from .milters import milter_for

FIRST, SECOND, THIRD = "first.reload.example", "second.reload.example", "third.reload.example"


@pytest.fixture(scope="module")
def dns(dns_server_factory: Callable[..., DnsServer]) -> DnsServer:
    return dns_server_factory(['sender.example. 300 TXT "v=spf1 ip4:127.0.0.0/8 -all"'])


@pytest.fixture(scope="module")
def milter(dns: DnsServer) -> Iterator[MilterProcess]:
    process = milter_for(dns)
    process.config["milter"]["authserv_id"] = FIRST
    process.write_config(process.config)
    with process:
        yield process


def message() -> tuple[str, str]:
    msg_id = f"<{uuid.uuid4().hex}@sender.example>"
    return msg_id, (f"From: a@sender.example\r\nTo: bob@example.net\r\nSubject: reload\r\n"
                    f"Message-ID: {msg_id}\r\n\r\nHello.\r\n")


def our_authserv_id(postfix: PostfixInstance, msg_id: str) -> str:
    delivered = postfix.wait_for_message(message_id=msg_id, timeout=30)
    ids = [v.strip().split(";")[0] for v in delivered.header("Authentication-Results")]
    ours = [i for i in ids if i in (FIRST, SECOND, THIRD)]
    assert len(ours) == 1, ids
    return ours[0]


def reload(milter: MilterProcess, authserv_id: str) -> None:
    """Write a configuration with ``authserv_id``, SIGHUP, wait until the reload is logged."""
    assert milter.process is not None
    config = {k: dict(v) for k, v in milter.config.items()}
    config["milter"]["authserv_id"] = authserv_id
    milter.write_config(render_toml(config))
    marker = milter.log().count("configuration reloaded")
    milter.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while milter.log().count("configuration reloaded") == marker:
        assert time.monotonic() < deadline, milter.log()
        time.sleep(0.05)


def test_the_configuration_is_chosen_when_postfix_sends_data(
        milter: MilterProcess, postfix: PostfixInstance) -> None:
    in_data_id, in_data = message()
    before_data_id, before_data = message()
    headers, body = in_data.split("\r\n\r\n", 1)
    with smtplib.SMTP(postfix.host, postfix.smtp_port, timeout=30) as smtp:
        smtp.ehlo("mail.sender.example")
        # 1. A reload while the message is being transferred (after DATA's 354).
        assert smtp.mail("a@sender.example")[0] == 250
        assert smtp.rcpt("bob@example.net")[0] == 250
        smtp.putcmd("data")
        assert smtp.getreply()[0] == 354
        smtp.send(headers.encode() + b"\r\n\r\n")
        reload(milter, SECOND)
        smtp.send(body.encode() + b"\r\n.\r\n")
        assert smtp.getreply()[0] == 250
        # 2. A reload between RCPT TO and DATA: the milter has not seen MAIL FROM yet.
        assert smtp.mail("a@sender.example")[0] == 250
        assert smtp.rcpt("bob@example.net")[0] == 250
        reload(milter, THIRD)
        assert smtp.data(before_data)[0] == 250
    assert our_authserv_id(postfix, in_data_id) == FIRST
    assert our_authserv_id(postfix, before_data_id) == THIRD
