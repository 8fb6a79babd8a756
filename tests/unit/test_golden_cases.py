"""Golden cases: message + envelope + zone in, exact A-R header and verdict out.

Each case runs through ``mailsec-milter check --zone … --json`` in-process — the operator's
"why?" tool, which shares the engine, policy and renderer with the daemon. The expected files
were produced with ``UPDATE_GOLDEN=1`` and reviewed by hand; see tests/golden/make_cases.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

from mailsec_milter.cli import CHECK_EXIT, main
from mailsec_milter.policy import Action
from tests.support.milterproc import render_toml

CASES = Path(__file__).resolve().parents[1] / "golden" / "cases"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def case_dirs() -> list[Path]:
    return sorted(p for p in CASES.iterdir() if p.is_dir())


def run_check(case: Path, tmp_path: Path) -> dict[str, Any]:
    envelope = tomllib.loads((case / "envelope.toml").read_text())
    config: dict[str, Any] = {"milter": {"authserv_id": "mx.test.example"}}
    for section, table in envelope.get("config", {}).items():
        config.setdefault(section, {}).update(table)
    config_path = tmp_path / "config.toml"
    config_path.write_text(render_toml(config))
    argv = ["check", "--config", str(config_path), "--zone", str(case / "zone.txt"),
            "--client-ip", envelope["client_ip"], "--helo", envelope["helo"],
            "--mail-from", envelope["mail_from"], "--json", str(case / "message.eml")]
    if envelope.get("tls"):
        argv += ["--tls", envelope["tls"]]
    if envelope.get("sasl_user"):
        argv += ["--sasl-user", envelope["sasl_user"]]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(argv)
    result: dict[str, Any] = json.loads(out.getvalue())
    # the exit status names the verdict (0 accept, 3 quarantine, 4 reject, 5 tempfail)
    assert status == result["exit_status"] == CHECK_EXIT[Action(result["verdict"]["action"])]
    return result


def verdict_line(result: dict[str, Any]) -> str:
    verdict = result["verdict"]
    line = f"{verdict['action']} reason={verdict['reason']}"
    if verdict["reply"]:
        reply = verdict["reply"]
        line += f" reply={reply['code']} {reply['status']} {reply['text']}"
    if verdict["dry_run_action"]:
        line += f" dry_run_would={verdict['dry_run_action']}"
    return line + "\n"


@pytest.mark.parametrize("case", case_dirs(), ids=lambda p: p.name)
def test_golden_case(case: Path, tmp_path: Path) -> None:
    result = run_check(case, tmp_path)
    header = "Authentication-Results: " + result["authentication_results"] + "\n"
    verdict = verdict_line(result)
    if UPDATE:
        (case / "expected-header.txt").write_text(header)
        (case / "expected-verdict.txt").write_text(verdict)
    assert header == (case / "expected-header.txt").read_text()
    assert verdict == (case / "expected-verdict.txt").read_text()


def test_there_are_golden_cases() -> None:
    assert len(case_dirs()) >= 12
