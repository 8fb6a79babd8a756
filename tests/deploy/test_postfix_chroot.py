"""The one recipe for a unix socket inside Postfix's chroot, with the shipped, hardened unit.

systemd/mailsec-milter.socket.d/postfix-chroot.conf puts the socket unit's ListenStream= at
/var/spool/postfix/mailsec-milter/milter.sock (owner, group and mode set by systemd); the
service is unchanged and accepts on the socket it is handed. Checked here as far as a machine
without systemd as PID 1 allows:

* ``systemd-analyze verify`` loads the drop-in with the units (and provably reads it);
* docs/MILTER_README.md and systemd/README.md show exactly this drop-in and Postfix line;
* the unit's command line runs socket-activated on such a socket under the unit's seccomp
  rules, as an unprivileged user, with the "queue directory" read-only (what
  ``ProtectSystem=strict`` makes of /var/spool/postfix) and a configuration whose own
  socket path and ``socket_group`` could not work: the daemon touches neither;
* a daemon told to create its socket in a missing directory names the directory and the fix.

tests/e2e/test_chroot_socket_e2e.py shows a real Postfix reaching the socket through the
relative ``unix:mailsec-milter/milter.sock``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.support import milterclient as mc
from tests.support.dnsserver import DnsTestServer
from tests.support.milterproc import REPO, MilterProcess

from .units import (
    CHECKOUT_VENV,
    SERVICE,
    SOCKET,
    SYSTEMD_DIR,
    CommandProcess,
    checkout_argv,
    exec_start_argv,
    need,
    parse_unit,
    runs_as,
    sandbox_prefix,
)

DROP_IN = SYSTEMD_DIR / "mailsec-milter.socket.d" / "postfix-chroot.conf"
SPOOL = "/var/spool/postfix"
POSTFIX_LINE = "smtpd_milters = unix:mailsec-milter/milter.sock"


def drop_in() -> dict[str, list[str]]:
    return parse_unit(DROP_IN)["Socket"]


def socket_path() -> str:
    """The socket path the drop-in sets (the last ListenStream=, after the reset)."""
    return drop_in()["ListenStream"][-1]


def test_the_drop_in_puts_the_socket_in_postfixs_queue_directory() -> None:
    sock = drop_in()
    assert sock["ListenStream"] == ["", f"{SPOOL}/mailsec-milter/milter.sock"]
    assert sock["SocketUser"] == ["mailsec-milter"]
    assert sock["SocketGroup"] == ["postfix"]
    assert sock["SocketMode"] == ["0660"]
    # Postfix's own relative milter path is relative to its queue directory, chroot or not.
    relative = socket_path().removeprefix(SPOOL + "/")
    assert f"smtpd_milters = unix:{relative}" == POSTFIX_LINE


def test_the_docs_show_this_recipe_and_no_other() -> None:
    guide = (REPO / "docs" / "MILTER_README.md").read_text()
    body = [line for line in DROP_IN.read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    for line in body:
        assert line in guide, line
    assert POSTFIX_LINE in guide
    assert "systemd/mailsec-milter.socket.d/postfix-chroot.conf" in guide
    # The recipe that contradicted the unit (the daemon creating the socket in the spool
    # with socket_group) is gone.
    assert 'socket_group = "postfix"' not in guide
    assert "unix:/var/spool/postfix" not in guide
    units = (SYSTEMD_DIR / "README.md").read_text()
    assert "postfix-chroot.conf" in units
    assert "Until a daemon bug is fixed" not in units


def test_systemd_analyze_verify_loads_the_socket_with_the_drop_in(tmp_path: Path) -> None:
    analyze = need("systemd-analyze")
    program = CHECKOUT_VENV / "bin" / "mailsec-milter"
    assert program.exists(), "the checkout's venv has no mailsec-milter (pip install -e .)"
    (tmp_path / SERVICE.name).write_text(SERVICE.read_text().replace(
        "ExecStart=/opt/mailsec-milter/.venv/bin/mailsec-milter", f"ExecStart={program}"))
    shutil.copy(SOCKET, tmp_path / SOCKET.name)
    drop_ins = tmp_path / f"{SOCKET.name}.d"
    drop_ins.mkdir()
    shutil.copy(DROP_IN, drop_ins / DROP_IN.name)

    def verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run([analyze, "verify", "--man=no", str(tmp_path / SERVICE.name),
                               str(tmp_path / SOCKET.name)], capture_output=True, text=True,
                              timeout=120, check=False)

    result = verify()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mailsec-milter" not in result.stdout + result.stderr
    # The drop-in directory is really read: a second drop-in that empties ListenStream= makes
    # the same verify refuse the unit.
    (drop_ins / "zz-empty.conf").write_text("[Socket]\nListenStream=\n")
    refused = verify()
    assert refused.returncode != 0 and "no Listen setting" in refused.stdout + refused.stderr


MESSAGE = (b"From: a@sender.example\r\nTo: b@example.net\r\nSubject: chroot\r\n"
           b"Message-ID: <chroot@sender.example>\r\n\r\nbody\r\n")


def read_only(folder: Path) -> list[str]:
    """A prefix that runs the command in a mount namespace where ``folder`` is read-only,
    as ProtectSystem=strict makes /var (and so /var/spool/postfix) for the service."""
    need("unshare")
    script = (f'mount --bind "{folder}" "{folder}" && '
              f'mount -o remount,bind,ro "{folder}" "{folder}" && exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]


def test_the_recipe_runs_with_the_units_sandbox_on_a_read_only_spool() -> None:
    activate = need("systemd-socket-activate")
    probe = subprocess.run([*read_only(Path("/tmp")), "true"], capture_output=True, timeout=30,
                           check=False)
    if probe.returncode != 0:
        pytest.skip(f"no mount namespaces here: {probe.stderr.decode(errors='replace')}")
    root = Path(tempfile.mkdtemp(prefix="chroot-"))
    root.chmod(0o755)
    # systemd creates the socket's directory (DirectoryMode=); systemd-socket-activate does not.
    spool = root / SPOOL.lstrip("/")
    path = spool / socket_path().removeprefix(SPOOL + "/")
    path.parent.mkdir(parents=True, mode=0o755)
    for folder in (root / "var", root / "var" / "spool", spool):
        folder.chmod(0o755)
    argv = checkout_argv(exec_start_argv(), Path("{config}"))
    as_user = runs_as("nobody", Path(argv[0]))
    sandbox = (sandbox_prefix(user="nobody") if as_user
               else sandbox_prefix(also_allow=("setgroups", "setuid")))
    with DnsTestServer() as dns:
        process = CommandProcess(
            argv,
            # A socket path and group the daemon could not use: with socket activation it must
            # not try (the old bug: it chmod/chowned its configured path anyway).
            {"milter": {"socket": f"unix:{spool}/missing/milter.sock",
                        "socket_group": "no-such-group", "authserv_id": "mx.chroot.test",
                        "user": "" if as_user else "nobody"},
             "dns": {"nameservers": [dns.nameserver], "timeout": "1s"}},
            prefix=[activate, "-l", str(path), *read_only(spool), *sandbox])
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
                                             mail_from="a@sender.example",
                                             rcpts=["b@example.net"])
            inserted = [e.value for e in result.header_edits if e.kind == "insert"]
            assert inserted and inserted[0].strip().startswith("mx.chroot.test;"), inserted
            assert process.stop() == 0, process.log()
        finally:
            trigger.join()
            process.stop()
            shutil.rmtree(root, ignore_errors=True)
    log = process.log()
    assert "Operation not permitted" not in log and "Read-only file system" not in log, log
    assert "Traceback" not in log and "no-such-group" not in log, log


def test_a_missing_socket_directory_is_named_with_the_fix(tmp_path: Path) -> None:
    folder = tmp_path / "spool" / "mailsec-milter"
    process = MilterProcess({"milter": {"socket": f"unix:{folder}/milter.sock"}})
    with pytest.raises(RuntimeError, match="exited early"):
        process.start(timeout=20)
    log = process.log()
    assert f"The directory {folder} does not exist" in log, log
    assert f"install -d -o mailsec-milter -g postfix -m 0750 {folder}" in log, log
    assert f"ListenStream={folder}/milter.sock" in log, log


def test_a_read_only_socket_directory_is_named_with_the_fix(tmp_path: Path) -> None:
    """What ProtectSystem=strict does to a daemon creating its own socket in the spool."""
    folder = tmp_path / "mailsec-milter"
    folder.mkdir()
    probe = subprocess.run([*read_only(folder), "true"], capture_output=True, timeout=30,
                           check=False)
    if probe.returncode != 0:
        pytest.skip(f"no mount namespaces here: {probe.stderr.decode(errors='replace')}")
    process = MilterProcess({"milter": {"socket": f"unix:{folder}/milter.sock"}},
                            prefix=read_only(folder))
    with pytest.raises(RuntimeError, match="exited early"):
        process.start(timeout=20)
    log = process.log()
    assert f"{folder} is read-only here" in log, log
    assert f"ReadWritePaths={folder}" in log and f"ListenStream={folder}/milter.sock" in log
