"""ARC (RFC 8617) end to end: a real Postfix, a real DNS server, the real milter daemon.

A mailing list re-sends mail from bank.example (``p=reject``). The list's IP is not in
bank.example's SPF and the list leaves no bank.example DKIM signature, so DMARC fails here.
Only a passing ARC chain whose newest seal is by a trusted sealer that recorded
``dmarc=pass`` for the same From domain may override the policy:

- sealed by the trusted lists.example, dmarc=pass recorded -> delivered, our header says why;
- sealed by other.example (valid chain, but not trusted) -> 550;
- sealed by lists.example but it recorded dmarc=fail -> 550;
- sealed by lists.example, body changed after sealing (chain fails) -> 550.

The daemon runs with ``dmarc_reject = "always"``: under the default ("evidence", RFC 9989 §8)
an ARC set from any sealer is a sign of an intermediary and turns each 550 into a quarantine
(tests/e2e/test_evidence_e2e.py runs that).
"""

from __future__ import annotations

import email.utils
import re
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.support import dkimkeys
from tests.support.milterproc import MilterProcess

from .harness import DnsServer, PostfixInstance
from .milters import AUTHSERV_ID, REJECT_REPLY, milter_for

TRUSTED = "lists.example"
UNTRUSTED = "other.example"
SELECTOR = "arc"
KEY = dkimkeys.rsa_key(2048)
FORWARDER = {"ADDR": "192.0.2.25"}  # the list's relay: in its own SPF, not in bank.example's
PASS_RESULTS = ("spf=pass smtp.mailfrom=bank.example; dkim=pass header.d=bank.example; "
                "dmarc=pass header.from=bank.example")
FAIL_RESULTS = ("spf=fail smtp.mailfrom=bank.example; dkim=none; "
                "dmarc=fail header.from=bank.example")
ZONE = [
    'bank.example. 300 TXT "v=spf1 ip4:198.51.100.0/24 -all"',
    "bank.example. 300 A 198.51.100.1",
    '_dmarc.bank.example. 300 TXT "v=DMARC1; p=reject"',
    f'{TRUSTED}. 300 TXT "v=spf1 ip4:192.0.2.0/24 -all"',
    f"{TRUSTED}. 300 A 192.0.2.25",
    f'{UNTRUSTED}. 300 TXT "v=spf1 ip4:192.0.2.0/24 -all"',
    f"{UNTRUSTED}. 300 A 192.0.2.26",
    # The harness splits long TXT text into 255-byte character-strings itself.
    f'{dkimkeys.key_name(SELECTOR, TRUSTED)}. 300 TXT "{KEY.record()}"',
    f'{dkimkeys.key_name(SELECTOR, UNTRUSTED)}. 300 TXT "{KEY.record()}"',
]


@pytest.fixture(scope="module")
def dns(dns_server_factory: Callable[..., DnsServer]) -> DnsServer:
    return dns_server_factory(ZONE)


@pytest.fixture(scope="module")
def milter(dns: DnsServer) -> Iterator[MilterProcess]:
    process = milter_for(dns, deadline="5s", policy={"trusted_arc_sealers": [TRUSTED],
                                                     "reject_reply": REJECT_REPLY,
                                                     "dmarc_reject": "always"})
    with process:
        yield process


def original(subject: str) -> tuple[bytes, str]:
    """A message as bank.example wrote it (unsigned: the list would break a signature anyway)."""
    msg_id = f"<{uuid.uuid4().hex}@bank.example>"
    text = (f"From: Bank <alerts@bank.example>\r\nTo: members@{TRUSTED}\r\n"
            f"Subject: {subject}\r\nDate: {email.utils.formatdate()}\r\n"
            f"Message-ID: {msg_id}\r\n\r\nYour statement is ready.\r\n")
    return text.encode(), msg_id


def sealed(subject: str, sealer: str, results: str) -> tuple[bytes, str]:
    raw, msg_id = original(subject)
    return dkimkeys.arc_seal(raw, KEY, SELECTOR, sealer, results), msg_id


def envelope_sender(sealer: str) -> str:
    """A unique list bounce address (lists rewrite the envelope), to find the milter's log line."""
    return f"bounce+{uuid.uuid4().hex[:12]}@{sealer}"


def milter_log_line(milter: MilterProcess, mail_from: str) -> str:
    lines = [ln for ln in milter.log().splitlines() if f"mail_from=<{mail_from}>" in ln]
    assert len(lines) == 1, milter.log()[-3000:]
    return lines[0]


def test_trusted_sealer_vouching_for_dmarc_pass_is_delivered(postfix: PostfixInstance,
                                                             milter: MilterProcess) -> None:
    """The whole point of trusted_arc_sealers: a list's re-send of p=reject mail gets through,
    and the header tells the reader the DMARC fail was overridden and by what."""
    raw, msg_id = sealed("statement via the list", TRUSTED, PASS_RESULTS)
    mail_from = envelope_sender(TRUSTED)
    outcome = postfix.send(raw, mail_from, ["bob@example.net"], helo=f"mail.{TRUSTED}",
                           xclient=FORWARDER)
    assert outcome.accepted, outcome
    delivered = postfix.wait_for_message(message_id=msg_id, timeout=30)
    ours = [v for v in delivered.header("Authentication-Results")
            if v.strip().lower().startswith(AUTHSERV_ID)]
    assert len(ours) == 1, delivered.header("Authentication-Results")
    header = " ".join(ours[0].split())
    assert "dmarc=fail" in header, header  # DMARC itself still fails here
    assert re.search(r"\barc=pass\b", header), header
    assert f"sealed by {TRUSTED}" in header and "header.oldest-pass=0" in header, header
    assert "policy.override-reason=trusted_forwarder" in header, header
    assert "policy.applied-disposition=none" in header, header
    # The list's own A-R travels on untouched; it is not ours and must not be removed.
    assert any(v.strip().startswith(f"{TRUSTED};")
               for v in delivered.header("Authentication-Results"))
    line = milter_log_line(milter, mail_from)
    assert f"arc=pass:{TRUSTED}" in line and "verdict=accept" in line, line


@pytest.mark.parametrize(
    ("case", "sealer", "results", "tamper", "arc_logged"),
    [
        ("untrusted_sealer", UNTRUSTED, PASS_RESULTS, False, f"arc=pass:{UNTRUSTED}"),
        ("trusted_sealer_saw_dmarc_fail", TRUSTED, FAIL_RESULTS, False, f"arc=pass:{TRUSTED}"),
        ("body_changed_after_sealing", TRUSTED, PASS_RESULTS, True, f"arc=fail:{TRUSTED}"),
    ],
    ids=["untrusted_sealer", "trusted_sealer_saw_dmarc_fail", "body_changed_after_sealing"],
)
def test_dmarc_policy_applies_without_a_trusted_vouch(
        postfix: PostfixInstance, milter: MilterProcess, case: str, sealer: str, results: str,
        tamper: bool, arc_logged: str) -> None:
    """A passing chain alone proves nothing about the author: without a trusted sealer that
    saw dmarc=pass on an unmodified message, p=reject is applied as published."""
    raw, msg_id = sealed(f"statement ({case})", sealer, results)
    if tamper:
        assert raw.count(b"Your statement is ready.") == 1
        raw = raw.replace(b"Your statement is ready.", b"Your statement is READY!")
    mail_from = envelope_sender(sealer)
    outcome = postfix.send(raw, mail_from, ["bob@example.net"], helo=f"mail.{sealer}",
                           xclient=FORWARDER)
    assert outcome.data is not None, outcome
    assert outcome.data.code == 550, outcome
    assert "5.7.1" in outcome.data.text
    assert "Rejected by the DMARC policy of bank.example" in outcome.data.text, outcome
    # The chain was judged as this case intends (pass for the first two, fail when tampered),
    # so the rejection is for the reason under test, not a broken seal or DNS.
    line = milter_log_line(milter, mail_from)
    assert re.search(rf"{re.escape(arc_logged)}\s", line), line
    assert "verdict=reject" in line and "reason=dmarc_policy" in line, line
    assert "override=" not in line, line
    assert postfix.find_delivered(message_id=msg_id) is None
