"""The site's own mail under its own p=reject: locally submitted mail is delivered, not bounced.

With the documented ``non_smtpd_milters = $smtpd_milters``, Postfix's cleanup hands mail from
sendmail(1) / pickup to the milter as client ``localhost[127.0.0.1]``; an application speaking
SMTP to 127.0.0.1 looks the same. Neither carries a DKIM signature yet (signing happens later or
not at all), so DMARC fails for the site's own ``p=reject`` domain. The milter's default
``[policy] trusted_networks`` (loopback) keeps that mail from being rejected; it is still checked
and delivered with our header recording the override. The control: the same message from a
client outside loopback (claimed with XCLIENT, which the harness allows from 127.0.0.0/8) is
rejected, so the reject path really is live in this setup.
"""

from __future__ import annotations

import email.utils
import re
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.support.milterproc import MilterProcess

from .harness import DnsServer, PostfixInstance
from .milters import AUTHSERV_ID, REJECT_REPLY, milter_for

OWN = "own.example"  # the site's own domain: p=reject, SPF for its MX only, no DKIM on the path
ZONE = [
    f'{OWN}. 300 TXT "v=spf1 ip4:192.0.2.0/24 -all"',
    f'{OWN}. 300 A 192.0.2.1',
    f'_dmarc.{OWN}. 300 TXT "v=DMARC1; p=reject"',
]
OUTSIDER = {"ADDR": "198.51.100.66"}


@pytest.fixture(scope="module")
def dns(dns_server_factory: Callable[..., DnsServer]) -> DnsServer:
    return dns_server_factory(ZONE)


@pytest.fixture(scope="module")
def milter(dns: DnsServer) -> Iterator[MilterProcess]:
    # No [policy] trusted_networks: the default is what is under test.
    process = milter_for(dns, policy={"reject_reply": REJECT_REPLY})
    with process:
        yield process


def message(subject: str) -> tuple[bytes, str]:
    msg_id = f"<{uuid.uuid4().hex}@{OWN}>"
    text = (f"From: Cron Daemon <root@{OWN}>\r\nTo: bob@example.net\r\nSubject: {subject}\r\n"
            f"Date: {email.utils.formatdate()}\r\nMessage-ID: {msg_id}\r\n\r\nreport\r\n")
    return text.encode(), msg_id


def our_header(postfix: PostfixInstance, msg_id: str) -> str:
    delivered = postfix.wait_for_message(message_id=msg_id, timeout=30)
    ours = [" ".join(v.split()) for v in delivered.header("Authentication-Results")
            if v.strip().startswith(AUTHSERV_ID)]
    assert len(ours) == 1, delivered.header("Authentication-Results")
    return ours[0]


def assert_checked_and_let_through(header: str) -> None:
    """Checked like any message, and the header says why p=reject was not applied."""
    assert re.search(rf"spf=fail \({OWN}: 127\.0\.0\.1 is not authorized\) "
                     rf"smtp\.mailfrom=root@{OWN}", header), header
    assert "dkim=none" in header, header
    assert re.search(r"dmarc=fail \(p=reject; dis=none; trusted network 127\.0\.0\.0/8;",
                     header), header
    assert f"header.from={OWN}" in header, header
    assert "policy.evaluated-disposition=reject" in header, header
    assert "policy.applied-disposition=none" in header, header
    assert "policy.override-reason=trusted_forwarder" in header, header


def test_sendmail_command_mail_of_the_own_p_reject_domain_is_delivered(
        postfix: PostfixInstance, milter: MilterProcess) -> None:
    assert postfix.main_cf()["non_smtpd_milters"] == "$smtpd_milters"
    raw, msg_id = message("cron output")
    postfix.submit_local(raw, f"root@{OWN}", ["bob@example.net"])
    header = our_header(postfix, msg_id)
    assert_checked_and_let_through(header)
    # Postfix's cleanup plays the client as localhost[127.0.0.1], HELO localhost.
    assert "smtp.helo=localhost" in header, header
    # It went through pickup/cleanup (non_smtpd_milters), not through smtpd.
    queue_id = postfix.wait_log(rf"postfix/pickup\[\d+\]: (\w+): uid=\d+ from=<root@{OWN}>")[1]
    assert not re.search(rf"postfix/smtpd\[\d+\]: {queue_id}:", postfix.maillog())
    assert re.search(rf"queue_id={queue_id}\b", milter.log()), milter.log()[-2000:]


def test_smtp_from_loopback_of_the_own_p_reject_domain_is_delivered(
        postfix: PostfixInstance) -> None:
    raw, msg_id = message("app notification")
    outcome = postfix.send(raw, f"root@{OWN}", ["bob@example.net"], helo="localhost")
    assert outcome.accepted, outcome
    assert_checked_and_let_through(our_header(postfix, msg_id))


def test_control_the_same_message_from_outside_loopback_is_rejected(
        postfix: PostfixInstance) -> None:
    raw, msg_id = message("forged from outside")
    outcome = postfix.send(raw, f"root@{OWN}", ["bob@example.net"], helo="mail.outside.example",
                           xclient=OUTSIDER)
    assert outcome.xclient is not None and outcome.xclient.code == 220, outcome
    assert outcome.data is not None and outcome.data.code == 550, outcome
    assert f"Rejected by the DMARC policy of {OWN}" in outcome.data.text
    assert f"spf=fail (mailfrom {OWN}" in outcome.data.text
    assert postfix.find_delivered(message_id=msg_id) is None
