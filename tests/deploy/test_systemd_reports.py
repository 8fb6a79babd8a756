"""systemd/mailsec-milter-reports.{service,timer}: valid, well rated, daily after 00:00 UTC,
hardened as the daemon's unit, and ExecStart's command really sends a report under the unit's
own seccomp rules (to a loopback SMTP sink)."""

from __future__ import annotations

import email
import email.policy
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mailsec_milter.reports.store import open_store
from tests.reports.test_sending import domain_record
from tests.support.milterproc import REPO
from tests.support.smtpsink import SmtpSink

from .units import (
    CHECKOUT_VENV,
    INSTALL_CONFIG,
    SERVICE,
    SYSTEMD_DIR,
    checkout_argv,
    exec_start_argv,
    need,
    parse_unit,
    sandbox_prefix,
    unit_value,
)

REPORTS_SERVICE = SYSTEMD_DIR / "mailsec-milter-reports.service"
REPORTS_TIMER = SYSTEMD_DIR / "mailsec-milter-reports.timer"
OK_THRESHOLD = 4.9


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                          **kwargs)  # type: ignore[call-overload, no-any-return]


def test_systemd_analyze_verify_accepts_the_report_units(tmp_path: Path) -> None:
    analyze = need("systemd-analyze")
    program = CHECKOUT_VENV / "bin" / "mailsec-milter"
    assert program.exists(), "the checkout's venv has no mailsec-milter (pip install -e .)"
    original = REPORTS_SERVICE.read_text()
    copy = original.replace("ExecStart=/opt/mailsec-milter/.venv/bin/mailsec-milter",
                            f"ExecStart={program}")
    assert sum(a != b for a, b in zip(original.splitlines(), copy.splitlines(),
                                      strict=True)) == 1
    (tmp_path / REPORTS_SERVICE.name).write_text(copy)
    shutil.copy(REPORTS_TIMER, tmp_path / REPORTS_TIMER.name)
    result = run([analyze, "verify", "--man=no", str(tmp_path / REPORTS_SERVICE.name),
                  str(tmp_path / REPORTS_TIMER.name)])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "mailsec-milter" not in output, output


def test_systemd_analyze_security_rates_the_report_service_ok_or_better() -> None:
    analyze = need("systemd-analyze")
    result = run([analyze, "security", "--offline=yes", "--man=no",
                  f"--threshold={int(OK_THRESHOLD * 10)}", str(REPORTS_SERVICE)])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    match = re.search(r"Overall exposure level for mailsec-milter-reports\.service: "
                      r"(\d+\.\d) (\w+)", output)
    assert match and float(match.group(1)) <= OK_THRESHOLD, output


def test_the_timer_runs_daily_after_midnight_utc_and_catches_up() -> None:
    analyze = need("systemd-analyze")
    timer = parse_unit(REPORTS_TIMER)["Timer"]
    calendar = timer["OnCalendar"][-1]
    assert timer["Persistent"][-1] == "yes" and timer["RandomizedDelaySec"]
    result = run([analyze, "calendar", "--iterations=2", calendar])
    assert result.returncode == 0, result.stderr
    # "Next elapse:" / "Iter. #2:" lines (and "(in UTC):" ones when local time is not UTC)
    elapses = re.findall(r"(?:Next elapse|Iter\. #2|\(in UTC\)): \w+ "
                         r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", result.stdout)
    elapses = sorted(set(elapses))
    assert len(elapses) == 2, result.stdout
    first, second = (datetime.strptime(e, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
                     for e in elapses)
    assert second - first == timedelta(days=1)
    assert first.time() > datetime.min.time()  # after 00:00 UTC: yesterday is complete


def test_the_report_service_is_hardened_as_the_daemon_and_has_its_state_directory() -> None:
    reports = parse_unit(REPORTS_SERVICE)["Service"]
    daemon = parse_unit(SERVICE)["Service"]
    assert unit_value(parse_unit(REPORTS_SERVICE), "Service", "Type") == "oneshot"
    assert reports["StateDirectory"] == ["mailsec-milter"]
    assert reports["User"] == daemon["User"] and reports["Group"] == daemon["Group"]
    shared = ["NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
              "PrivateUsers", "RestrictAddressFamilies", "SystemCallFilter",
              "MemoryDenyWriteExecute", "CapabilityBoundingSet", "RestrictNamespaces",
              "LockPersonality"]
    for key in shared:
        assert reports.get(key) == daemon.get(key), key
    argv = exec_start_argv(REPORTS_SERVICE)
    assert argv[1:] == ["reports", "send", "--config", INSTALL_CONFIG]


def test_exec_start_sends_a_report_under_the_units_seccomp_rules(tmp_path: Path) -> None:
    """The unit's exact command (install paths mapped onto the checkout) under its own
    SystemCallFilter=/MemoryDenyWriteExecute=/RestrictAddressFamilies= (lxml, sqlite3, smtplib)."""
    need("systemd-analyze")  # the same machine requirements as the daemon's sandbox test
    day = datetime.now(UTC).date() - timedelta(days=1)
    store_path = tmp_path / "reports.sqlite"
    store = open_store(str(store_path))
    store.write([domain_record("victim.example", "mailto:d@victim.example", day=day)] * 3)
    store.close()
    with SmtpSink() as sink:
        config = tmp_path / "mailsec-milter.toml"
        config.write_text(f'[reports]\nstore = "{store_path}"\norg_name = "Example"\n'
                          f'from = "dmarc@receiver.example"\nsubmit = "{sink.address}"\n')
        argv = checkout_argv(exec_start_argv(REPORTS_SERVICE), config)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        result = run([*sandbox_prefix(REPORTS_SERVICE), *argv], env=env, cwd="/")
        assert result.returncode == 0, result.stdout + result.stderr
        (received,) = sink.state.messages
    message = email.message_from_bytes(received.data, policy=email.policy.default)
    assert str(message["Subject"]).startswith("Report Domain: victim.example Submitter: "
                                              "receiver.example Report-ID: ")
    assert (tmp_path / "reports-status.json").exists()
