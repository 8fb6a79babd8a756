"""DMARC policy end to end: a real Postfix, a real DNS server, the real milter daemon.

- a p=reject forgery is refused at end of DATA with the configured 550 text;
- a p=quarantine forgery lands in Postfix's hold queue (seen with postqueue/postcat);
- a DNS outage for the sender's DMARC record gives a 4xx, and the retry after DNS returns
  is delivered;
- an authenticated submission of a p=reject domain's own mail is delivered.
"""

from __future__ import annotations

import email.utils
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.support.milterproc import MilterProcess

from .harness import DnsServer, PostfixInstance
from .harness import _bin as harness_bin  # postqueue may be in /usr/sbin only
from .milters import AUTHSERV_ID, REJECT_REPLY, milter_for

FORGER = {"ADDR": "198.51.100.66"}  # not in any sender's SPF record
ZONE = [
    'reject.example. 300 TXT "v=spf1 ip4:192.0.2.0/24 -all"',
    'reject.example. 300 A 192.0.2.1',
    '_dmarc.reject.example. 300 TXT "v=DMARC1; p=reject"',
    'quarantine.example. 300 TXT "v=spf1 ip4:192.0.2.0/24 -all"',
    'quarantine.example. 300 A 192.0.2.1',
    '_dmarc.quarantine.example. 300 TXT "v=DMARC1; p=quarantine"',
    'outage.example. 300 TXT "v=spf1 ip4:192.0.2.0/24 -all"',
    'outage.example. 300 A 192.0.2.1',
    '_dmarc.outage.example. 300 TXT "v=DMARC1; p=reject"',
    'forger.example. 300 TXT "v=spf1 ip4:198.51.100.0/24 -all"',
    'forger.example. 300 A 198.51.100.1',
]
# During the outage nothing under outage.example answers (Unbound answers local-data even in a
# deny zone, so the records are taken out as well).
OUTAGE_ZONE = [r for r in ZONE if "outage.example" not in r]
OUTAGE = ["outage.example"]


@pytest.fixture(scope="module")
def dns(dns_server_factory: Callable[..., DnsServer]) -> DnsServer:
    return dns_server_factory(ZONE)


@pytest.fixture(scope="module")
def milter(dns: DnsServer) -> Iterator[MilterProcess]:
    process = milter_for(dns, policy={"reject_reply": REJECT_REPLY})
    with process:
        yield process


def message(author: str, subject: str) -> tuple[bytes, str]:
    msg_id = f"<{uuid.uuid4().hex}@{author.split('@')[1]}>"
    text = (f"From: {author}\r\nTo: bob@example.net\r\nSubject: {subject}\r\n"
            f"Date: {email.utils.formatdate()}\r\nMessage-ID: {msg_id}\r\n\r\nHello.\r\n")
    return text.encode(), msg_id


def test_p_reject_forgery_is_refused_at_end_of_data(postfix: PostfixInstance) -> None:
    raw, _ = message("ceo@reject.example", "wire the money")
    outcome = postfix.send(raw, "bounce@forger.example", ["bob@example.net"],
                           helo="mail.forger.example", xclient=FORGER)
    assert outcome.data is not None
    assert outcome.data.code == 550, outcome
    assert "5.7.1" in outcome.data.text
    assert "Rejected by the DMARC policy of reject.example" in outcome.data.text
    assert "spf=pass (mailfrom forger.example, not aligned)" in outcome.data.text
    assert "dkim=none" in outcome.data.text


def test_p_quarantine_forgery_lands_in_the_hold_queue(postfix: PostfixInstance,
                                                      milter: MilterProcess) -> None:
    """And the review the docs describe works: postqueue -p shows it held, postcat -q reads
    it, postsuper -H releases it and it is delivered; our log line starts with its queue id."""
    raw, msg_id = message("billing@quarantine.example", "invoice")
    outcome = postfix.send(raw, "bounce@forger.example", ["bob@example.net"],
                           helo="mail.forger.example", xclient=FORGER)
    assert outcome.accepted, outcome
    queue_id = outcome.queue_id
    assert queue_id
    deadline = time.monotonic() + 20
    while queue_id not in postfix.hold_queue() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert queue_id in postfix.hold_queue(), postfix.maillog()[-2000:]
    content = postfix.postcat(queue_id)
    assert msg_id in content
    assert "dmarc=fail" in content and "policy.applied-disposition=quarantine" in content
    assert postfix.find_delivered(message_id=msg_id) is None
    listing = subprocess.run([harness_bin("postqueue"), "-c", str(postfix.config_dir), "-p"],
                             capture_output=True, text=True, timeout=15, check=True).stdout
    assert re.search(rf"^{queue_id}!", listing, re.M), listing  # "!": on hold
    assert re.search(rf"^\S+ \S+ INFO mailsec-milter\[\d+\]: {queue_id}: queue_id={queue_id} .*"
                     r"verdict=quarantine reason=dmarc_policy", milter.log(), re.M), milter.log()
    postfix.postsuper("-H", queue_id)
    postfix.flush()
    delivered = postfix.wait_for_message(message_id=msg_id, timeout=30)
    assert any("policy.applied-disposition=quarantine" in v
               for v in delivered.header("Authentication-Results"))


def test_dns_outage_tempfails_and_the_retry_is_delivered(dns: DnsServer,
                                                         postfix: PostfixInstance) -> None:
    raw, msg_id = message("news@outage.example", "during an outage")
    dns.set_records(OUTAGE_ZONE, timeout_names=OUTAGE)
    try:
        first = postfix.send(raw, "news@outage.example", ["bob@example.net"],
                             helo="mail.outage.example", xclient={"ADDR": "192.0.2.20"})
        assert first.data is not None and first.data.code == 451, first
        assert "4.7.0" in first.data.text
    finally:
        dns.set_records(ZONE, timeout_names=[])
    retry = postfix.send(raw, "news@outage.example", ["bob@example.net"],
                         helo="mail.outage.example", xclient={"ADDR": "192.0.2.20"})
    assert retry.accepted, retry
    delivered = postfix.wait_for_message(message_id=msg_id, timeout=30)
    ours = [v for v in delivered.header("Authentication-Results")
            if v.strip().startswith(AUTHSERV_ID)]
    assert len(ours) == 1 and "dmarc=pass" in ours[0]


def test_authenticated_submission_of_own_p_reject_mail_is_delivered(
        postfix: PostfixInstance) -> None:
    raw, msg_id = message("ceo@reject.example", "from the road")
    outcome = postfix.send(raw, "ceo@reject.example", ["bob@example.net"],
                           helo="laptop.example", xclient={**FORGER, "LOGIN": "ceo"})
    assert outcome.accepted, outcome
    delivered = postfix.wait_for_message(message_id=msg_id, timeout=30)
    ours = [v for v in delivered.header("Authentication-Results")
            if v.strip().startswith(AUTHSERV_ID)]
    assert len(ours) == 1
    assert "dmarc=fail" in ours[0]
    assert "policy.applied-disposition=none" in ours[0]
    assert "policy.override-reason=local_policy" in ours[0]
