"""systemd/: the units are valid, well rated, and their command line runs the real daemon.

There is no systemd as PID 1 here, so nothing is started through systemctl. Instead:

* ``systemd-analyze verify`` checks the units. It insists that ExecStart's program exists, and
  /opt/mailsec-milter is not installed on a test machine, so the service is verified from a
  temporary copy whose ExecStart program path (only that) points at this checkout's venv; the
  test asserts that this is the one line that differs. The socket unit is verified as it is.
* ``systemd-analyze security --offline=yes`` rates the unit file itself, unchanged.
* The daemon is run with ExecStart's exact argv (install paths mapped onto the checkout), under
  ``systemd-socket-activate`` (LISTEN_FDS, like the socket unit), a $NOTIFY_SOCKET like
  Type=notify, and the unit's own seccomp settings (SystemCallFilter=, MemoryDenyWriteExecute=,
  RestrictAddressFamilies=) rebuilt by sandbox_exec.py, while it verifies rsa-sha256 and
  ed25519-sha256 (PyNaCl, cffi) DKIM signatures.
"""

from __future__ import annotations

import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsec_milter import daemon
from mailsec_milter.config import Settings
from tests.support import dkimkeys
from tests.support import milterclient as mc
from tests.support.dnsserver import DnsTestServer
from tests.support.milterproc import free_tcp_port, start_on_first_connection

from .units import (
    CHECKOUT_VENV,
    INSTALL_CONFIG,
    SERVICE,
    SOCKET,
    SYSTEMD_DIR,
    CommandProcess,
    NotifyReceiver,
    checkout_argv,
    exec_start_argv,
    need,
    parse_unit,
    runs_as,
    sandbox_prefix,
    unit_value,
)

SYSUSERS = SYSTEMD_DIR / "mailsec-milter.sysusers.conf"
TMPFILES = SYSTEMD_DIR / "mailsec-milter.tmpfiles.conf"
# systemd-analyze security's bands: 0.0 PERFECT, 0.1-0.9 SAFE, 1.0-4.9 OK, 5.0 MEDIUM, ...
OK_THRESHOLD = 4.9


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                          **kwargs)  # type: ignore[call-overload, no-any-return]


# --------------------------------------------------------------------------------------------
# static checks


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    analyze = need("systemd-analyze")
    program = CHECKOUT_VENV / "bin" / "mailsec-milter"
    assert program.exists(), "the checkout's venv has no mailsec-milter (pip install -e .)"
    original = SERVICE.read_text().splitlines(keepends=True)
    copy = [line.replace("ExecStart=/opt/mailsec-milter/.venv/bin/mailsec-milter",
                         f"ExecStart={program}") for line in original]
    changed = [(a, b) for a, b in zip(original, copy, strict=True) if a != b]
    assert len(changed) == 1 and changed[0][0].startswith("ExecStart="), changed
    (tmp_path / SERVICE.name).write_text("".join(copy))
    shutil.copy(SOCKET, tmp_path / SOCKET.name)
    # --man=no: the mailsec-milter(8) page named in Documentation= is installed with the
    # package, not on a test machine.
    result = run([analyze, "verify", "--man=no", str(tmp_path / SERVICE.name),
                  str(tmp_path / SOCKET.name)])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "mailsec-milter" not in output, output


def test_systemd_analyze_security_rates_the_service_ok_or_better() -> None:
    analyze = need("systemd-analyze")
    result = run([analyze, "security", "--offline=yes", "--man=no", str(SERVICE)])
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for mailsec-milter\.service: "
                      r"(\d+\.\d) (\w+)", output)
    assert match, output
    score, label = float(match.group(1)), match.group(2)
    assert score <= OK_THRESHOLD and label in {"OK", "SAFE", "PERFECT"}, output
    # The same threshold through systemd-analyze's own switch (exposure in tenths).
    gate = run([analyze, "security", "--offline=yes", "--man=no",
                f"--threshold={int(OK_THRESHOLD * 10)}", str(SERVICE)])
    assert gate.returncode == 0, gate.stdout + gate.stderr


def test_the_service_is_set_up_as_the_issue_asks() -> None:
    service = parse_unit(SERVICE)["Service"]

    def value(key: str) -> str:
        return service[key][-1]

    assert value("Type") == "notify"
    assert value("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert value("User") == value("Group") == "mailsec-milter"
    assert value("Restart") == "on-failure"
    assert value("CapabilityBoundingSet") == "" and value("AmbientCapabilities") == ""
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices",
                "MemoryDenyWriteExecute", "LockPersonality", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
                "ProtectClock", "ProtectHostname", "RestrictNamespaces", "RestrictRealtime",
                "RestrictSUIDSGID"):
        assert value(key) == "yes", key
    assert value("ProtectSystem") == "strict"
    assert value("SystemCallArchitectures") == "native"
    assert service["SystemCallFilter"][0] == "@system-service"
    assert set(value("RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert value("RuntimeDirectory") == "mailsec-milter"
    assert re.fullmatch(r"0[0-7]{3}", value("UMask"))
    # The supervisor stops its workers itself (KillMode=mixed), and systemd gives it longer
    # than the daemon's own limits, which cover a message's DNS wait.
    assert value("KillMode") == "mixed"
    stop, start = value("TimeoutStopSec"), value("TimeoutStartSec")
    assert stop.endswith("s") and start.endswith("s")
    assert float(stop[:-1]) > daemon.WORKER_STOP_TIMEOUT > Settings.defaults().message_deadline
    assert float(start[:-1]) > daemon.WORKER_START_TIMEOUT
    # The program and the configuration path are the documented ones.
    assert exec_start_argv() == ["/opt/mailsec-milter/.venv/bin/mailsec-milter", "run",
                                 "--config", INSTALL_CONFIG]


def test_the_socket_unit_hands_one_socket_to_the_service_on_the_default_address() -> None:
    sock = parse_unit(SOCKET)["Socket"]
    assert sock["Accept"][-1] == "no"
    assert sock["Service"][-1] == SERVICE.name
    assert len(sock["ListenStream"]) == 1
    # Same address as the daemon's default socket, so MTA configuration does not change
    # between socket activation and the daemon opening the socket itself.
    port, _, host = Settings.defaults().socket.split(":", 1)[1].partition("@")
    assert sock["ListenStream"][0] == f"{host}:{port}"


def test_sysusers_and_tmpfiles_snippets_apply_to_a_scratch_root(tmp_path: Path) -> None:
    sysusers, tmpfiles = need("systemd-sysusers"), need("systemd-tmpfiles")
    (tmp_path / "etc").mkdir()
    for name in ("passwd", "group"):
        shutil.copy(f"/etc/{name}", tmp_path / "etc" / name)
    result = run([sysusers, f"--root={tmp_path}", str(SYSUSERS)])
    assert result.returncode == 0, result.stdout + result.stderr
    entry = next(line for line in (tmp_path / "etc/passwd").read_text().splitlines()
                 if line.startswith("mailsec-milter:"))
    uid = int(entry.split(":")[2])
    assert 0 < uid < 1000, entry  # a system account
    assert entry.split(":")[6] == "/usr/sbin/nologin"
    service = parse_unit(SERVICE)
    assert unit_value(service, "Service", "User") == entry.split(":")[0]
    result = run([tmpfiles, f"--root={tmp_path}", "--create", str(TMPFILES)])
    assert result.returncode == 0, result.stdout + result.stderr
    folder = tmp_path / "etc/mailsec-milter"
    stat = folder.stat()
    assert oct(stat.st_mode & 0o777) == "0o750"
    gid = int(next(line for line in (tmp_path / "etc/group").read_text().splitlines()
                   if line.startswith("mailsec-milter:")).split(":")[2])
    assert stat.st_uid == 0 and stat.st_gid == gid
    assert str(Path(INSTALL_CONFIG).parent) == "/etc/mailsec-milter"


# --------------------------------------------------------------------------------------------
# the unit's command line, run for real

MESSAGE = (b"From: Alice <alice@signed.test>\r\nTo: bob@example.net\r\nSubject: units\r\n"
           b"Message-ID: <units@signed.test>\r\nDate: Thu, 27 Nov 2025 10:00:00 +0000\r\n"
           b"\r\nHello from the unit test.\r\n")


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsTestServer]:
    with DnsTestServer() as server:
        yield server


def test_exec_start_runs_socket_activated_notifying_and_under_the_units_seccomp(
        dns: DnsTestServer) -> None:
    activate = need("systemd-socket-activate")
    rsa, ed = dkimkeys.rsa_key(2048), dkimkeys.ed25519_key()
    for selector, key in (("rsa", rsa), ("ed", ed)):
        record = key.record().encode()
        dns.add(dkimkeys.key_name(selector, "signed.test"), "TXT",
                [record[i:i + 255] for i in range(0, len(record), 255)])
    dns.add("signed.test", "TXT", "v=spf1 ip4:192.0.2.10 -all")
    message = dkimkeys.sign(dkimkeys.sign(MESSAGE, rsa, "rsa", "signed.test"), ed, "ed",
                            "signed.test")

    port = free_tcp_port()
    folder = Path(tempfile.mkdtemp(prefix="notify-"))
    notify = NotifyReceiver(folder)
    # The socket unit's ListenStream on a free port; the daemon's own [milter] socket must
    # not be used (port 1 would fail loudly if it were).
    # systemd-socket-activate passes a bare environment: NOTIFY_SOCKET goes in with -E. The
    # sandbox switches to an unprivileged user first, as User= does, so the daemon starts
    # unprivileged with [milter] user empty, as docs and unit recommend. (If that user cannot
    # read this checkout, the daemon starts as root and drops to it itself.)
    argv = checkout_argv(exec_start_argv(), Path("{config}"))
    as_user = runs_as("nobody", Path(argv[0]))
    sandbox = (sandbox_prefix(user="nobody") if as_user
               else sandbox_prefix(also_allow=("setgroups", "setuid")))
    prefix = [activate, "-l", f"127.0.0.1:{port}", "-E", f"NOTIFY_SOCKET={notify.path}",
              *sandbox]
    process = CommandProcess(
        argv,
        {"milter": {"socket": "inet:1@127.0.0.1", "authserv_id": "mx.units.test",
                    "user": "" if as_user else "nobody"},
         "dns": {"nameservers": [dns.nameserver], "timeout": "2s"}},
        prefix=prefix)
    assert process.command[1:] == ["run", "--config", str(process.config_path)]
    process.config["milter"]["socket"] = f"inet:{port}@127.0.0.1"  # where clients connect

    trigger = start_on_first_connection(port)  # systemd starts services on demand too
    try:
        process.start(timeout=30)
        trigger.join()
        assert process.process is not None
        assert notify.next().startswith("READY=1"), process.log()
        assert "listening on fd:3" in process.log()
        # Supervisor and workers: unprivileged, no new privileges, under the seccomp filters.
        pid = process.process.pid
        workers = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        assert workers, "no worker processes"
        for each in [str(pid), *workers]:
            status = dict(line.split(":\t", 1) for line in
                          Path(f"/proc/{each}/status").read_text().splitlines() if ":\t" in line)
            assert status["Uid"].split()[1] == str(pwd.getpwnam("nobody").pw_uid), status["Uid"]
            assert status["NoNewPrivs"].strip() == "1"
            assert status["Seccomp"].strip() == "2"  # filter mode
            assert int(status["Seccomp_filters"]) >= 2
        with mc.MilterClient.connect(f"inet:{port}@127.0.0.1") as client:
            result = client.send_message(message, client_ip="192.0.2.10",
                                         helo="mail.signed.test",
                                         mail_from="alice@signed.test",
                                         rcpts=["bob@example.net"])
        header = next(e.value for e in result.header_edits if e.kind == "insert")
        flat = " ".join(header.split())
        assert flat.startswith("mx.units.test;"), header
        assert "spf=pass" in flat, header
        assert re.search(r"dkim=pass[^;]*header\.a=rsa-sha256", flat), header
        assert re.search(r"dkim=pass[^;]*header\.a=ed25519-sha256", flat), header
        # systemctl reload = ExecReload's SIGHUP
        process.process.send_signal(signal.SIGHUP)
        assert notify.next().startswith("RELOADING=1")
        assert notify.next().startswith("READY=1")
        assert process.stop() == 0, process.log()
        assert notify.next().startswith("STOPPING=1"), process.log()
    finally:
        trigger.join()
        process.stop()
        notify.close()
        shutil.rmtree(folder, ignore_errors=True)
    # The seccomp rules were in force: nothing was refused that the daemon needed.
    assert "Operation not permitted" not in process.log(), process.log()
    assert "Traceback" not in process.log(), process.log()


def test_a_socket_activated_unix_socket_ignores_the_configured_path(dns: DnsTestServer) -> None:
    """The socket unit's unix-socket variant: systemd owns the path, mode and group."""
    activate = need("systemd-socket-activate")
    folder = Path(tempfile.mkdtemp(prefix="activate-"))
    folder.chmod(0o755)
    path = folder / "milter.sock"
    argv = checkout_argv(exec_start_argv(), Path("{config}"))
    as_user = runs_as("nobody", Path(argv[0]))
    sandbox = (sandbox_prefix(user="nobody") if as_user
               else sandbox_prefix(also_allow=("setgroups", "setuid")))
    process = CommandProcess(
        argv,
        {"milter": {"socket": "unix:/run/mailsec-milter/milter.sock",
                    "user": "" if as_user else "nobody"},
         "dns": {"nameservers": [dns.nameserver], "timeout": "2s"}},
        prefix=[activate, "-l", str(path), *sandbox])
    process.config["milter"]["socket"] = f"unix:{path}"  # where clients connect

    def first_connection() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.connect(str(path))
                return
            except OSError:
                time.sleep(0.1)

    trigger = threading.Thread(target=first_connection)
    trigger.start()
    try:
        process.start(timeout=30, widen_unix_socket=False)
        assert "listening on fd:3" in process.log()
        with mc.MilterClient.connect(f"unix:{path}") as client:
            result = client.send_message(MESSAGE, client_ip="192.0.2.10", helo="h.test",
                                         mail_from="a@signed.test", rcpts=["b@example.net"])
        assert any(e.kind == "insert" for e in result.header_edits)
    finally:
        trigger.join()
        process.stop()
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# the daily posture audit (issue 16): mailsec-milter-audit.service + .timer

AUDIT_SERVICE = SYSTEMD_DIR / "mailsec-milter-audit.service"
AUDIT_TIMER = SYSTEMD_DIR / "mailsec-milter-audit.timer"


def test_systemd_analyze_verify_accepts_the_audit_units(tmp_path: Path) -> None:
    analyze = need("systemd-analyze")
    program = CHECKOUT_VENV / "bin" / "mailsec-milter"
    assert program.exists(), "the checkout's venv has no mailsec-milter (pip install -e .)"
    text = AUDIT_SERVICE.read_text()
    assert text.count("ExecStart=/opt/mailsec-milter/.venv/bin/mailsec-milter ") == 1
    (tmp_path / AUDIT_SERVICE.name).write_text(text.replace(
        "ExecStart=/opt/mailsec-milter/.venv/bin/mailsec-milter", f"ExecStart={program}"))
    shutil.copy(AUDIT_TIMER, tmp_path / AUDIT_TIMER.name)
    result = run([analyze, "verify", "--man=no", str(tmp_path / AUDIT_TIMER.name),
                  str(tmp_path / AUDIT_SERVICE.name)])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "mailsec-milter" not in output, output


def test_systemd_analyze_security_rates_the_audit_service_ok_or_better() -> None:
    analyze = need("systemd-analyze")
    gate = run([analyze, "security", "--offline=yes", "--man=no",
                f"--threshold={int(OK_THRESHOLD * 10)}", str(AUDIT_SERVICE)])
    assert gate.returncode == 0, gate.stdout + gate.stderr


def test_the_timer_runs_audit_own_daily_into_the_daemons_state_directory() -> None:
    service = parse_unit(AUDIT_SERVICE)["Service"]
    daemon_service = parse_unit(SERVICE)["Service"]
    timer = parse_unit(AUDIT_TIMER)["Timer"]
    assert service["Type"] == ["oneshot"]
    assert service["ExecStart"][-1].split() == [
        "/opt/mailsec-milter/.venv/bin/mailsec-milter", "audit", "--own", "--write-metrics",
        "--config", INSTALL_CONFIG]
    # the same account and state directory as the daemon: [audit] result_file = "" is
    # $STATE_DIRECTORY/audit.json for both
    for key in ("User", "Group", "StateDirectory"):
        assert service[key] == daemon_service[key], key
    assert service["SuccessExitStatus"] == ["1"]  # below baseline: the alert's business
    assert timer["OnCalendar"] == ["daily"] and timer["Persistent"] == ["yes"]
    assert parse_unit(AUDIT_TIMER)["Install"]["WantedBy"] == ["timers.target"]
