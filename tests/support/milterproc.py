"""Run the real ``mailsec-milter run`` daemon as a subprocess for adapter and end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_on_first_connection(port: int, timeout: float = 20.0) -> threading.Thread:
    """Connect once to 127.0.0.1:PORT in the background: ``systemd-socket-activate``, like
    systemd, starts the service only when the first client arrives."""
    def connect() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)

    thread = threading.Thread(target=connect, name="first-connection")
    thread.start()
    return thread


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table, e.g. domain_overrides
        return "{ " + ", ".join(f"{_toml_value(str(k))} = {_toml_value(v)}"
                                for k, v in value.items()) + " }"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_toml(config: dict[str, dict[str, Any]]) -> str:
    lines: list[str] = []
    for section, table in config.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in table.items())
        lines.append("")
    return "\n".join(lines)


class MilterProcess:
    """The daemon on a loopback TCP port (or a unix socket), stopped with SIGTERM at close()."""

    def __init__(self, config: dict[str, dict[str, Any]] | None = None, *,
                 unix_socket: bool = False, env: dict[str, str] | None = None,
                 prefix: list[str] | None = None, extra_args: list[str] | None = None) -> None:
        self.env = env
        self.prefix = prefix or []
        self.extra_args = extra_args or []
        self.workdir = Path(tempfile.mkdtemp(prefix="mailsec-milter-"))
        os.chmod(self.workdir, 0o755)  # Postfix's smtpd (user postfix) must reach a unix socket
        self.config = {k: dict(v) for k, v in (config or {}).items()}
        milter = self.config.setdefault("milter", {})
        if "socket" not in milter:
            if unix_socket:
                path = self.workdir / "milter.sock"
                milter["socket"] = f"unix:{path}"
            else:
                milter["socket"] = f"inet:{free_tcp_port()}@127.0.0.1"
        milter.setdefault("authserv_id", "mx.test.example")
        if os.geteuid() == 0:  # the daemon refuses to stay root
            milter.setdefault("user", "nobody")
        milter.setdefault("workers", 1)  # tests that want more say so
        # Every test daemon gets its own metrics port (the default 9894 would collide).
        self.config.setdefault("metrics", {}).setdefault("listen",
                                                         f"127.0.0.1:{free_tcp_port()}")
        # The report store in a state directory of its own that the daemon's user can write.
        state = self.workdir / "state"
        state.mkdir()
        if os.geteuid() == 0:
            shutil.chown(state, str(milter.get("user") or "nobody"))
        self.config.setdefault("reports", {}).setdefault("store", str(state / "reports.sqlite"))
        self.config_path = self.workdir / "mailsec-milter.toml"
        self.config_path.write_text(render_toml(self.config))
        self.log_path = self.workdir / "milter.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def socket_spec(self) -> str:
        return str(self.config["milter"]["socket"])

    @property
    def metrics_url(self) -> str | None:
        listen = str(self.config["metrics"]["listen"])
        return f"http://{listen}/metrics" if listen else None

    @property
    def postfix_spec(self) -> str:
        """The same socket written the way Postfix's smtpd_milters wants it."""
        spec = self.socket_spec
        if spec.startswith("unix:"):
            return spec
        port, _, host = spec.split(":", 1)[1].partition("@")
        return f"inet:{host}:{port}"

    def write_config(self, config: dict[str, dict[str, Any]] | str) -> None:
        """Replace the configuration file (for reload tests); keeps the socket settings."""
        self.config_path.write_text(config if isinstance(config, str) else render_toml(config))

    def start(self, timeout: float = 20.0, *, widen_unix_socket: bool = True) -> MilterProcess:
        log = self.log_path.open("ab")
        env = None if self.env is None else {**os.environ, **self.env}
        self.process = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "mailsec_milter", "run", "--config",
             str(self.config_path), *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"milter exited early:\n{self.log()}")
            if "mailsec-milter" in self.log() and "listening on" in self.log() \
                    and self._reachable():
                if self.socket_spec.startswith("unix:") and widen_unix_socket:
                    os.chmod(self.socket_spec[5:], 0o666)
                return self
            time.sleep(0.05)
        self.stop()  # never leave a half-started daemon behind
        raise RuntimeError(f"milter did not start in {timeout}s:\n{self.log()}")

    def _reachable(self) -> bool:
        spec = self.socket_spec
        if spec.startswith("unix:"):
            return Path(spec[5:]).exists()
        port, _, host = spec.split(":", 1)[1].partition("@")
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return True
        except OSError:
            return False

    def worker_pids(self) -> list[int]:
        """PIDs of the worker processes (children of the supervisor)."""
        if self.process is None:
            return []
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except OSError:
            return []

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait for a clean exit; SIGKILL only if it hangs. Returns the exit status."""
        if self.process is None:
            return None
        workers = self.worker_pids()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        for pid in workers:  # never leave a worker behind, even after a SIGKILL above
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        code = self.process.returncode
        self.process = None
        return code

    def cleanup(self) -> None:
        """Remove the working directory (config, log, unix socket)."""
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> MilterProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.cleanup()
