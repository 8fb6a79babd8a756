"""The chroot recipe's Postfix side with a real Postfix: ``smtpd_milters =
unix:mailsec-milter/milter.sock`` is resolved against Postfix's queue directory (its daemons
work there, chrooted or not), so a socket at $queue_directory/mailsec-milter/milter.sock — where
systemd/mailsec-milter.socket.d/postfix-chroot.conf puts it — is reached and the message gets
our header. (tests/deploy/test_postfix_chroot.py runs the daemon side under the unit's sandbox.)
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from tests.support.milterproc import MilterProcess

from .harness import DnsServer, PostfixInstance
from .milters import AUTHSERV_ID

RELATIVE = "mailsec-milter/milter.sock"


def test_postfix_reaches_the_socket_through_the_relative_path(
        dns_server_factory: Callable[..., DnsServer],
        postfix_factory: Callable[..., PostfixInstance]) -> None:
    dns = dns_server_factory(['sender.example. 300 TXT "v=spf1 ip4:192.0.2.0/24 -all"'])
    postfix = postfix_factory(f"unix:{RELATIVE}", milter_default_action="tempfail")
    folder = postfix.queue_dir / "mailsec-milter"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    milter = MilterProcess({
        "milter": {"socket": f"unix:{postfix.queue_dir / RELATIVE}",
                   "authserv_id": AUTHSERV_ID},
        "dns": {"nameservers": [dns.address], "timeout": "1s"}})
    with milter:
        msg_id = f"<{uuid.uuid4().hex}@sender.example>"
        raw = (f"From: a@sender.example\r\nTo: bob@example.net\r\nSubject: chroot\r\n"
               f"Message-ID: {msg_id}\r\n\r\nHello.\r\n").encode()
        outcome = postfix.send(raw, "a@sender.example", ["bob@example.net"],
                               helo="mail.sender.example", xclient={"ADDR": "192.0.2.10"})
        assert outcome.accepted, outcome
        delivered = postfix.wait_for_message(message_id=msg_id, timeout=30)
        ours = [v for v in delivered.header("Authentication-Results")
                if v.strip().startswith(AUTHSERV_ID)]
        assert len(ours) == 1 and "spf=pass" in ours[0], delivered.header(
            "Authentication-Results")
        assert outcome.queue_id and f"{outcome.queue_id}: queue_id={outcome.queue_id}" in \
            milter.log()
