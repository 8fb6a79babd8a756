"""Issue 12's bypass classes through ``mailsec-milter check`` (the engine, policy and renderer
the daemon uses), each with its control; the same cases run through the daemon in
tests/adapter/test_forgery_daemon.py."""

from __future__ import annotations

import contextlib
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from mailsec_milter.cli import main
from mailsec_milter.config import settings_from_mapping
from mailsec_milter.dns import StaticResolver
from mailsec_milter.engine import Engine
from mailsec_milter.model import Envelope, Header, MessageSnapshot, field_name_is
from mailsec_milter.policy import Action, decide
from tests.support.forgery_cases import CASES, FORGER_IP, Case, zone_text
from tests.support.milterproc import render_toml


def run_check(case: Case, tmp_path: Path) -> dict[str, Any]:
    config: dict[str, dict[str, Any]] = {"milter": {"authserv_id": "mx.test.example"}}
    for section, table in case.config.items():
        config.setdefault(section, {}).update(table)
    (tmp_path / "config.toml").write_text(render_toml(config))
    (tmp_path / "zone.txt").write_text(zone_text())
    (tmp_path / "message.eml").write_bytes(case.message())
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["check", "--config", str(tmp_path / "config.toml"),
              "--zone", str(tmp_path / "zone.txt"), "--client-ip", case.client_ip,
              "--helo", "mail.sender.example", "--mail-from", case.mail_from, "--json",
              str(tmp_path / "message.eml")])
    result: dict[str, Any] = json.loads(out.getvalue())
    return result


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bypass_class_through_check(case: Case, tmp_path: Path) -> None:
    result = run_check(case, tmp_path)
    verdict = result["verdict"]
    assert (verdict["action"], verdict["reason"]) == (case.action, case.reason), (
        verdict, result["results"]["dmarc"]["reason"])
    if case.header_from is not None:
        assert result["results"]["dmarc"]["header_from"] == case.header_from
        if case.action == "accept":
            assert f"header.from={case.header_from}" in result["authentication_results"]


def test_reject_replies_name_the_problem(tmp_path: Path) -> None:
    cap = next(c for c in CASES if c.id == "cap-victim-eleventh")
    reply = run_check(cap, tmp_path)["verdict"]["reply"]
    assert (reply["code"], reply["status"]) == ("550", "5.7.1")
    assert "too many author domains" in reply["text"]


@pytest.mark.parametrize(("name", "matches"), [
    ("From", True), ("FROM", True), ("from", True), ("From ", True), ("From\t", True),
    ("Fro m", False), ("Frm", False), ("From-X", False),
    ("\u212arom", False),  # a non-ASCII look-alike never matches (Kelvin sign)
])
def test_field_names_compare_ascii_case_insensitively_without_obs_wsp(
        name: str, matches: bool) -> None:
    assert field_name_is(name, "from") is matches


def test_a_from_field_written_with_space_before_the_colon_is_evaluated() -> None:
    """Sendmail (unlike Postfix) can hand the name on as written: ``From : x`` is a From
    field to a lenient reader, so the victim's domain beside the attacker's is evaluated."""
    settings = settings_from_mapping({"milter": {"authserv_id": "mx.test.example"}})
    envelope = Envelope(client_ip=FORGER_IP, helo="mail.attacker.example",
                        mail_from="x@attacker.example")
    headers = (Header("From", b" x@attacker.example"),
               Header("From ", b" CEO <ceo@victim.example>"), Header("Subject", b" hi"))
    with ThreadPoolExecutor(max_workers=2) as pool:
        engine = Engine(settings, StaticResolver.from_zone_text(zone_text()), pool)
        analysis = engine.analyse(MessageSnapshot(envelope, headers, b"body\r\n"))
    assert analysis.dmarc is not None
    assert "victim.example" in analysis.dmarc.evaluated_domains
    assert decide(analysis, envelope, settings).action is Action.REJECT
