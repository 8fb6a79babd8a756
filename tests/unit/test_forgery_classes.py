"""Issue 12's bypass classes through ``mailsec-milter check`` (the engine, policy and renderer
the daemon uses), each with its control; the same cases run through the daemon in
tests/adapter/test_forgery_daemon.py."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from mailsec_milter.cli import main
from tests.support.forgery_cases import CASES, Case, zone_text
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
