"""Helpers for the deployment tests: unit-file parsing, the ExecStart command, tool lookup.

The deployment files (systemd/, docker/, docs/SENDMAIL.md) are read as an operator's machine
would read them; these helpers only map the documented install paths onto this checkout.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.milterproc import REPO, MilterProcess

SYSTEMD_DIR = REPO / "systemd"
DOCKER_DIR = REPO / "docker"
SERVICE = SYSTEMD_DIR / "mailsec-milter.service"
SOCKET = SYSTEMD_DIR / "mailsec-milter.socket"

# Where the units expect things on an installed system (systemd/README.md).
INSTALL_VENV = "/opt/mailsec-milter/.venv"
INSTALL_CONFIG = "/etc/mailsec-milter/mailsec-milter.toml"
# ... and where they are in this checkout.
CHECKOUT_VENV = REPO / ".venv"


def need(tool: str) -> str:
    """The path of ``tool``; skip without it, but fail under CI=true."""
    path = shutil.which(tool) or shutil.which(tool, path=str(CHECKOUT_VENV / "bin"))
    if path:
        return path
    reason = f"{tool} is not installed (scripts/install-deps.sh --test installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true, so this fails instead of skipping", pytrace=False)
    pytest.skip(reason)


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values in order]}} (repeated keys kept, no drop-ins)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: {line!r} outside a section"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit_value(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    """The effective (last) value of ``key``."""
    values = unit.get(section, {}).get(key)
    assert values, f"[{section}] {key}= is not set"
    return values[-1]


def exec_start_argv(service: Path = SERVICE) -> list[str]:
    """The service's ExecStart= as an argv (one plain command, no systemd prefixes)."""
    value = unit_value(parse_unit(service), "Service", "ExecStart")
    assert value[:1] not in "@-:+!", f"ExecStart has a prefix the tests do not model: {value}"
    return shlex.split(value)


def checkout_argv(argv: list[str], config: Path) -> list[str]:
    """ExecStart's argv with the documented install paths mapped onto this checkout: the
    program from the checkout's venv, the configuration file from ``config``. Every other
    argument stays as it is."""
    program = argv[0]
    assert program.startswith(INSTALL_VENV + "/"), program
    local = CHECKOUT_VENV / program[len(INSTALL_VENV) + 1:]
    return [str(local), *(str(config) if arg == INSTALL_CONFIG else arg for arg in argv[1:])]


def command_modulo_paths(argv: list[str]) -> list[str]:
    """An argv with the program reduced to its name (for comparing systemd and Docker)."""
    return [Path(argv[0]).name, *argv[1:]]


class CommandProcess(MilterProcess):
    """MilterProcess (same config handling, log, stop) running an explicit command line.

    ``command`` is the full argv; ``{config}`` in it is replaced by the config path that
    MilterProcess wrote. Used to run the daemon exactly as a unit or a Dockerfile starts it.
    """

    def __init__(self, command: list[str], config: dict[str, dict[str, Any]] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.command = [str(self.config_path) if arg == "{config}" else arg for arg in command]

    def start(self, timeout: float = 20.0, *, widen_unix_socket: bool = True) -> CommandProcess:
        log = self.log_path.open("ab")
        env = None if self.env is None else {**os.environ, **self.env}
        self.process = subprocess.Popen(
            [*self.prefix, *self.command], stdout=log, stderr=subprocess.STDOUT, cwd="/",
            start_new_session=True, env=env, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"milter exited early:\n{self.log()}")
            if "listening on" in self.log() and self._reachable():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"milter did not start in {timeout}s:\n{self.log()}")


def sandbox_prefix(service: Path = SERVICE, *, user: str | None = None,
                   also_allow: tuple[str, ...] = ()) -> list[str]:
    """A command prefix that applies the unit's seccomp settings (SystemCallFilter=,
    MemoryDenyWriteExecute=, RestrictAddressFamilies=, via sandbox_exec.py) before exec,
    as ``user`` (standing in for the unit's User=) when given."""
    unit = parse_unit(service)["Service"]
    prefix = [sys.executable, str(Path(__file__).with_name("sandbox_exec.py"))]
    if user:
        prefix.append(f"--user={user}")
    prefix.extend(f"--also-allow={name}" for name in also_allow)
    for spec in unit.get("SystemCallFilter", []):
        prefix.append(f"--syscall-filter={spec}")
    if unit.get("MemoryDenyWriteExecute", ["no"])[-1] == "yes":
        prefix.append("--mdwe")
    families = " ".join(unit.get("RestrictAddressFamilies", []))
    if families:
        prefix.append(f"--address-families={families}")
    return [*prefix, "--"]


def runs_as(user: str, program: Path) -> bool:
    """Whether ``user`` can start ``program`` (this checkout's venv may sit below a folder
    only root can enter)."""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        return False
    result = subprocess.run(["runuser", "-u", user, "--", str(program), "version"],
                            capture_output=True, timeout=60, check=False)
    return result.returncode == 0


class NotifyReceiver:
    """A $NOTIFY_SOCKET datagram socket, reachable by the daemon after it drops root."""

    def __init__(self, folder: Path) -> None:
        os.chmod(folder, 0o755)
        self.path = folder / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        os.chmod(self.path, 0o777)
        self.sock.settimeout(20)

    def next(self) -> str:
        """The next message, or "" when none came within 20 s."""
        try:
            return self.sock.recv(4096).decode()
        except TimeoutError:
            return ""

    def close(self) -> None:
        self.sock.close()
