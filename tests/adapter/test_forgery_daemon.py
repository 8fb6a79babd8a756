"""Issue 12's bypass classes through the real daemon over the milter protocol, against a real
DNS server on loopback: the same cases and verdicts as the offline ``check`` test
(tests/unit/test_forgery_classes.py), so the adapter cannot lose what the engine decides."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import milterclient as mc
from tests.support.dnsserver import DnsTestServer
from tests.support.forgery_cases import CASES, FIELD_NAME_CASES, ZONE, Case
from tests.support.milterproc import MilterProcess

# What the daemon's reply looks like for each verdict (Postfix's view of the milter's answer).
_ACTIONS = {"accept": ("accept", "continue"), "quarantine": ("quarantine",),
            "reject": ("reject",), "tempfail": ("tempfail",)}


@pytest.fixture(scope="module")
def nameserver() -> Iterator[str]:
    with DnsTestServer() as server:
        for name, rdtype, value in ZONE:
            server.add(name, rdtype, value)
        yield server.nameserver


@pytest.fixture(scope="module")
def daemons(nameserver: str) -> Iterator[dict[str, MilterProcess]]:
    """One daemon per distinct extra configuration among the cases, started on first use."""
    started: dict[str, MilterProcess] = {}
    yield started
    for process in started.values():
        process.stop()


def daemon_for(case: Case, daemons: dict[str, MilterProcess], nameserver: str
               ) -> MilterProcess:
    key = json.dumps(case.config, sort_keys=True)
    if key not in daemons:
        config: dict[str, dict[str, Any]] = {
            "milter": {"authserv_id": "mx.test.example"},
            "dns": {"nameservers": [nameserver], "timeout": "1s"}}
        for section, table in case.config.items():
            config.setdefault(section, {}).update(table)
        daemons[key] = MilterProcess(config).start()
    return daemons[key]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bypass_class_through_the_daemon(case: Case, daemons: dict[str, MilterProcess],
                                         nameserver: str) -> None:
    milter = daemon_for(case, daemons, nameserver)
    with mc.MilterClient.connect(milter.socket_spec) as client:
        result = client.send_message(
            case.message(), client_ip=case.client_ip, helo="mail.sender.example",
            mail_from=case.mail_from, rcpts=["bob@example.net"],
            macros={"mail": {"i": queue_id(case)}})
    assert result.action in _ACTIONS[case.action], (case.id, result.action, result.smtp_reply)
    if case.action == "reject":
        assert result.smtp_reply is not None and result.smtp_reply.startswith("550 5.7.")
    inserted = [e.value for e in result.header_edits if e.kind == "insert"]
    if case.action in ("accept", "quarantine"):
        assert len(inserted) == 1  # stamped, not lost
        if case.header_from is not None:
            assert f"header.from={case.header_from}" in inserted[0]
    line = next(line for line in milter.log().splitlines() if queue_id(case) in line)
    assert f"verdict={case.action}" in line and f"reason={case.reason}" in line, line


def queue_id(case: Case) -> str:
    """A queue id per case, to find the case's log line."""
    return f"4F{CASES.index(case):04d}"


@pytest.mark.parametrize(("name", "fields", "action"), FIELD_NAME_CASES,
                         ids=[c[0] for c in FIELD_NAME_CASES])
def test_from_field_names_as_a_lenient_reader_sees_them(
        name: str, fields: str, action: str, daemons: dict[str, MilterProcess],
        nameserver: str) -> None:
    milter = daemon_for(CASES[0], daemons, nameserver)
    raw = (fields + "To: bob@example.net\r\nSubject: hi\r\n\r\nbody\r\n").encode()
    with mc.MilterClient.connect(milter.socket_spec) as client:
        result = client.send_message(raw, client_ip=CASES[0].client_ip,
                                     helo="mail.attacker.example",
                                     mail_from="x@attacker.example", rcpts=["bob@example.net"])
    assert result.action in _ACTIONS[action], (name, result.action, result.smtp_reply)
