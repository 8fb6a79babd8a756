"""A bounded soak: many messages through the real daemon; memory and threads must not grow.

CI runs a few thousand messages (seconds, not hours). The long version is the same test with
``MAILSEC_SOAK_MESSAGES=200000`` (documented in tests/robustness/README.md and bench/README.md).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import dkimkeys
from tests.support import milterclient as mc
from tests.support.dnsserver import DnsTestServer
from tests.support.milterproc import MilterProcess

MESSAGES = int(os.environ.get("MAILSEC_SOAK_MESSAGES", "3000"))
SESSIONS = 4
ED = dkimkeys.ed25519_key(b"\x05" * 32)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


@pytest.fixture(scope="module")
def milter() -> Iterator[MilterProcess]:
    with DnsTestServer() as dns:
        dns.add("soak.example", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
        dns.add("_dmarc.soak.example", "TXT", "v=DMARC1; p=reject")
        dns.add("ed._domainkey.soak.example", "TXT", ED.record())
        with MilterProcess({"milter": {"workers": 1},
                            "dns": {"nameservers": [dns.nameserver]}}) as process:
            yield process


def run(milter: MilterProcess, count: int) -> list[str]:
    """Send ``count`` messages on SESSIONS connections (several messages per connection)."""
    actions: list[str] = []
    lock = threading.Lock()
    per_session = count // SESSIONS

    def session(number: int) -> None:
        with mc.MilterClient.connect(milter.socket_spec) as client:
            for index in range(per_session):
                raw = (f"From: a@soak.example\r\nTo: b@example.net\r\nSubject: {index}\r\n"
                       f"Message-ID: <{number}.{index}@soak.example>\r\n\r\n"
                       f"{'x' * (index % 3000)}\r\n").encode()
                if index % 2:
                    raw = dkimkeys.sign(raw, ED, "ed", "soak.example")
                if index == 0:
                    result = client.send_message(raw, client_ip="192.0.2.10",
                                                 helo="mail.soak.example",
                                                 mail_from="a@soak.example",
                                                 rcpts=["b@example.net"], quit=False)
                else:
                    result = client.send_transaction(raw, mail_from="a@soak.example",
                                                     rcpts=["b@example.net"])
                with lock:
                    actions.append(result.action)

    workers = [threading.Thread(target=session, args=(n,)) for n in range(SESSIONS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(600)
    return actions


def test_no_growth_in_memory_or_threads_per_message(milter: MilterProcess) -> None:
    (worker,) = milter.worker_pids()
    warm = run(milter, MESSAGES // 3)  # caches, pools and allocator reach their working size
    rss_warm, threads_warm = rss_kib(worker), threads(worker)
    rest = run(milter, MESSAGES - MESSAGES // 3)
    rss_end, threads_end = rss_kib(worker), threads(worker)
    actions = warm + rest
    assert len(actions) >= MESSAGES - SESSIONS
    assert set(actions) == {"accept"}
    growth_per_message = (rss_end - rss_warm) * 1024 / max(1, len(rest))
    print(f"\nsoak: {len(actions)} messages, worker RSS {rss_warm} -> {rss_end} KiB "
          f"({growth_per_message:.1f} bytes/message), threads {threads_warm} -> {threads_end}")
    # A leak of even 1 KiB per message would show as megabytes here; allow allocator noise.
    assert rss_end - rss_warm < 8 * 1024
    assert threads_end <= threads_warm + 2
