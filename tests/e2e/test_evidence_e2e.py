"""RFC 9989 §8 end to end: a real Postfix, a real DNS server, the real milter daemon with a
report store (issue 15).

bank.example publishes ``p=reject`` and signs its mail. Under the default
``dmarc_reject = "evidence"``:

- its message re-sent by a mailing list (a footer added, ``List-Id`` present, its DKIM
  signature now broken) lands in Postfix's hold queue with
  ``policy.override-reason=mailing_list``;
- the same From forged from an unknown host with no marks gets 550 with DMARC in the text;
- after bank.example's real host has delivered passing mail (rows in the report store), a
  failing message from that host's /24 is quarantined (``local_policy``) and one from an
  unseen network is rejected.

With ``dmarc_reject = "always"`` all three are rejected. The client addresses are set with
XCLIENT, as in the other e2e modules (Postfix itself submits from loopback).
"""

from __future__ import annotations

import email.utils
import os
import pwd
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailsec_milter.reports.record import PublishedPolicy, ReportRecord
from mailsec_milter.reports.store import open_store
from tests.support import dkimkeys
from tests.support.milterproc import MilterProcess

from .harness import DnsServer, PostfixInstance, SmtpOutcome
from .milters import REJECT_REPLY, milter_for

AUTHOR = "bank.example"
SELECTOR = "s1"
KEY = dkimkeys.rsa_key(2048)
LIST_HOST = {"ADDR": "192.0.2.25"}  # lists.example's relay
BANK_HOST = "198.51.100.10"  # bank.example's own outbound host, seen passing before
BANK_NEIGHBOUR = {"ADDR": "198.51.100.77"}  # the same /24
UNKNOWN_HOST = {"ADDR": "203.0.113.66"}  # never seen
ZONE = [
    f'{AUTHOR}. 300 TXT "v=spf1 ip4:{BANK_HOST} -all"',
    f"{AUTHOR}. 300 A {BANK_HOST}",
    f'_dmarc.{AUTHOR}. 300 TXT "v=DMARC1; p=reject"',
    f'{dkimkeys.key_name(SELECTOR, AUTHOR)}. 300 TXT "{KEY.record()}"',
    'lists.example. 300 TXT "v=spf1 ip4:192.0.2.0/24 -all"',
    "lists.example. 300 A 192.0.2.25",
    'forger.example. 300 TXT "v=spf1 ip4:203.0.113.0/24 ip4:198.51.100.0/24 -all"',
    "forger.example. 300 A 203.0.113.1",
]


@pytest.fixture(scope="module")
def dns(dns_server_factory: Callable[..., DnsServer]) -> DnsServer:
    return dns_server_factory(ZONE)


def for_the_daemon(path: Path) -> None:
    """The daemon runs as nobody when the tests run as root: it must open the store."""
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(path, nobody.pw_uid, nobody.pw_gid)


@pytest.fixture(scope="module")
def store_path() -> Iterator[str]:
    """A report store in which bank.example's host delivered DMARC-passing mail today."""
    directory = Path(tempfile.mkdtemp(prefix="mailsec-reports-"))
    path = directory / "reports.sqlite"
    store = open_store(str(path))
    policy = PublishedPolicy(AUTHOR, "treewalk", "reject", "reject", "reject", "r", "r", "n")
    store.write([ReportRecord(
        day=datetime.now(UTC).date(), policy_domain=AUTHOR, rua="", published=policy,
        source_ip=BANK_HOST, header_from=AUTHOR, envelope_from=AUTHOR, disposition="pass",
        dmarc_dkim="pass", dmarc_spf="pass", dkim=((AUTHOR, SELECTOR, "pass"),),
        spf=(AUTHOR, "mfrom", "pass"))] * 3)
    store.close()
    for item in (directory, *directory.iterdir()):
        for_the_daemon(item)
    yield str(path)
    shutil.rmtree(directory, ignore_errors=True)


def start(dns: DnsServer, store_path: str, mode: str) -> MilterProcess:
    process = milter_for(dns, deadline="5s",
                         policy={"reject_reply": REJECT_REPLY, "dmarc_reject": mode,
                                 "history_refresh": "1s"},
                         sections={"reports": {"store": store_path}})
    process.start()
    if mode != "evidence":
        return process  # no sending history is kept
    # the sending history is read in the background: wait until the worker has it
    deadline = time.monotonic() + 20
    while "sending history ready" not in process.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "sending history ready: 1 " in process.log(), process.log()[-3000:]
    return process


@pytest.fixture(scope="module")
def milter(dns: DnsServer, store_path: str) -> Iterator[MilterProcess]:
    process = start(dns, store_path, "evidence")
    try:
        yield process
    finally:
        process.stop()
        process.cleanup()


@pytest.fixture(scope="module")
def always_postfix(dns: DnsServer, store_path: str,
                   postfix_factory: Callable[..., PostfixInstance]
                   ) -> Iterator[PostfixInstance]:
    """A second daemon with ``dmarc_reject = "always"`` and its own Postfix."""
    process = start(dns, store_path, "always")
    try:
        yield postfix_factory(process.postfix_spec, milter_default_action="tempfail")
    finally:
        process.stop()
        process.cleanup()


def original(subject: str) -> tuple[bytes, str]:
    """A message as bank.example sends it: signed by d=bank.example."""
    msg_id = f"<{uuid.uuid4().hex}@{AUTHOR}>"
    text = (f"From: Bank <news@{AUTHOR}>\r\nTo: members@lists.example\r\n"
            f"Subject: {subject}\r\nDate: {email.utils.formatdate()}\r\n"
            f"Message-ID: {msg_id}\r\n\r\nOur rates change next month.\r\n")
    return dkimkeys.sign(text.encode(), KEY, SELECTOR, AUTHOR), msg_id


def list_modified(subject: str) -> tuple[bytes, str]:
    """What the list re-sends: List-Id added, a footer appended (the body hash breaks)."""
    raw, msg_id = original(subject)
    head, _, body = raw.partition(b"\r\n\r\n")
    head += b"\r\nList-Id: Bank customers <customers.lists.example>"
    body += b"--\r\nYou are subscribed to customers@lists.example.\r\n"
    return head + b"\r\n\r\n" + body, msg_id


def forged(subject: str) -> tuple[bytes, str]:
    """The From of bank.example, no signature, no marks."""
    msg_id = f"<{uuid.uuid4().hex}@forger.example>"
    text = (f"From: Bank <news@{AUTHOR}>\r\nTo: bob@example.net\r\nSubject: {subject}\r\n"
            f"Date: {email.utils.formatdate()}\r\nMessage-ID: {msg_id}\r\n\r\nPay now.\r\n")
    return text.encode(), msg_id


def send_list(postfix: PostfixInstance) -> tuple[SmtpOutcome, str]:
    raw, msg_id = list_modified("rates")
    return postfix.send(raw, "customers-bounces@lists.example", ["bob@example.net"],
                        helo="mail.lists.example", xclient=LIST_HOST), msg_id


def send_forged(postfix: PostfixInstance, client: dict[str, str]) -> tuple[SmtpOutcome, str]:
    raw, msg_id = forged("invoice")
    return postfix.send(raw, "bounce@forger.example", ["bob@example.net"],
                        helo="mail.forger.example", xclient=client), msg_id


def held(postfix: PostfixInstance, outcome: SmtpOutcome, msg_id: str) -> str:
    """The queue file text of a message that must be in the hold queue."""
    assert outcome.accepted, outcome
    queue_id = outcome.queue_id
    assert queue_id
    deadline = time.monotonic() + 20
    while queue_id not in postfix.hold_queue() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert queue_id in postfix.hold_queue(), postfix.maillog()[-2000:]
    content = postfix.postcat(queue_id)
    assert msg_id in content
    assert postfix.find_delivered(message_id=msg_id) is None
    return content


def assert_dmarc_reject(outcome: SmtpOutcome) -> None:
    assert outcome.data is not None, outcome
    assert outcome.data.code == 550, outcome
    assert "5.7.1" in outcome.data.text and "DMARC" in outcome.data.text
    assert f"DMARC policy of {AUTHOR}" in outcome.data.text


def test_list_modified_message_is_held_as_mailing_list(postfix: PostfixInstance) -> None:
    outcome, msg_id = send_list(postfix)
    content = held(postfix, outcome, msg_id)
    unfolded = content.replace("\n\t", " ").replace("\n ", " ")
    assert "dmarc=fail" in unfolded and "dkim=fail" in unfolded
    assert "policy.evaluated-disposition=reject" in unfolded
    assert "policy.applied-disposition=quarantine" in unfolded
    assert "policy.override-reason=mailing_list" in unfolded
    assert "list_fields" in unfolded and "broken_signature" in unfolded


def test_the_same_domain_forged_from_an_unknown_host_is_rejected(
        postfix: PostfixInstance) -> None:
    outcome, _ = send_forged(postfix, UNKNOWN_HOST)
    assert_dmarc_reject(outcome)


def test_a_failing_message_from_the_known_senders_network_is_held(
        postfix: PostfixInstance, milter: MilterProcess) -> None:
    outcome, msg_id = send_forged(postfix, BANK_NEIGHBOUR)
    content = held(postfix, outcome, msg_id)
    unfolded = content.replace("\n\t", " ").replace("\n ", " ")
    assert "policy.override-reason=local_policy" in unfolded
    assert "known_sender" in unfolded and "198.51.100.0/24" in unfolded
    assert "reason=mitigating_evidence" in milter.log()


def test_dmarc_reject_always_rejects_all_three(always_postfix: PostfixInstance) -> None:
    assert_dmarc_reject(send_list(always_postfix)[0])
    assert_dmarc_reject(send_forged(always_postfix, UNKNOWN_HOST)[0])
    assert_dmarc_reject(send_forged(always_postfix, BANK_NEIGHBOUR)[0])


def test_a_store_that_is_down_leaves_the_other_signs(
        dns: DnsServer, postfix_factory: Callable[..., PostfixInstance],
        tmp_path: Path) -> None:
    """A store that cannot be read (not a database): the history sign is gone, the daemon
    serves, the list sign still quarantines and the neighbour's forgery is rejected."""
    broken = tmp_path / "reports.sqlite"
    broken.write_bytes(b"not a database " * 200)
    for item in (tmp_path, broken):
        for_the_daemon(item)
    process = milter_for(dns, deadline="5s",
                         policy={"reject_reply": REJECT_REPLY, "history_refresh": "1s"},
                         sections={"reports": {"store": str(broken)}})
    with process:
        postfix = postfix_factory(process.postfix_spec, milter_default_action="tempfail")
        deadline = time.monotonic() + 20
        while "sending history not refreshed" not in process.log() \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "sending history not refreshed" in process.log(), process.log()[-3000:]
        outcome, msg_id = send_list(postfix)
        held(postfix, outcome, msg_id)
        assert_dmarc_reject(send_forged(postfix, BANK_NEIGHBOUR)[0])
