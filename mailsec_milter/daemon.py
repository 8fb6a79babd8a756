"""Composition root and supervisor: the listening socket, privileges, workers, signals, reload.

Owns: the process tree. The supervisor opens the MTA-facing socket itself (TCP_NODELAY, unix
socket mode/group, or the one systemd passes), drops privileges, and runs ``workers`` worker
processes (worker.py) that each run libmilter on that inherited socket. It alone handles
signals: SIGHUP validates the new configuration and sends it to every worker, which swaps it
in place (worker.follow_control; a message keeps the configuration that was current at its
MAIL FROM event); a broken configuration is refused and the workers keep the old one.
SIGTERM/SIGINT retire all workers gracefully. /metrics sums the metrics the workers push over
their status pipes, with the last numbers of workers that ended kept (WorkerTotals), so
counters never go backwards.
Must not: contain mail logic, start threads (workers are forked from it), or run libmilter:
a process running libmilter has libmilter's signal thread, which treats SIGHUP as "stop" —
keeping it out of the supervisor is what makes reload safe.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import http.server
import logging
import os
import pwd
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from prometheus_client import disable_created_metrics, generate_latest

from . import __version__
from .config import (
    ConfigError,
    Settings,
    config_warnings,
    dotted_name,
    load_settings,
    read_config_file,
)
from .logsetup import log_fds
from .metrics import SupervisorMetrics, WorkerTotals
from .posture import PostureCollector, default_result_path
from .reports.status import StatusCollector, status_path

# Imported here, before privileges are dropped: workers are forked from this process and run
# this code without reading it again (the service user may not be able to).
from .worker import run_worker

log = logging.getLogger("mailsec_milter.daemon")

SUPERVISOR_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}
WORKER_START_TIMEOUT = 30.0
WORKER_STOP_TIMEOUT = 60.0  # kept for the unit's TimeoutStopSec check (drain + grace + kill)
SESSION_GRACE = 10.0  # seconds beyond the message deadline for an MTA to finish a session

# prometheus_client would export a *_created series beside every counter and histogram,
# doubling the series count for a timestamp nobody graphs. Its switch is process-global, so it
# is flipped here, in the composition root, once.
disable_created_metrics()  # type: ignore[no-untyped-call]


def set_nodelay(sock: socket.socket) -> None:
    """TCP_NODELAY on the listener (accepted sockets inherit it on Linux).

    libmilter never sets it, and at end of message writes the header edit and the reply
    separately, so Nagle would hold the reply until the MTA's delayed ACK (~40 ms per message).
    """
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def share_nonblocking(sock: socket.socket) -> None:
    """O_NONBLOCK on the listener every worker accepts on.

    Every worker's libmilter polls this one socket; a new connection wakes them all, one
    accept() wins and, on a blocking socket, the others block in accept() until the next
    connection, holding libmilter's listener lock: libmilter's stop (a flag checked between
    polls) and SIGTERM cannot end such a worker. Non-blocking, the losers get EAGAIN, which
    libmilter's listener treats as "poll again". Accepted connections do not inherit the flag
    (Linux), so sessions stay blocking as libmilter expects.
    """
    sock.setblocking(False)


def open_listener(spec: str, backlog: int = 512) -> socket.socket:
    """Open the MTA-facing socket from a libmilter-syntax spec (inet:, inet6:, unix:/local:)."""
    kind, _, rest = spec.partition(":")
    if kind in ("unix", "local"):
        path = Path(rest)
        if path.is_socket():
            path.unlink()  # a stale socket from an earlier run, as libmilter's rmsocket does
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
    else:
        port, _, host = rest.partition("@")
        family = socket.AF_INET6 if kind == "inet6" else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), int(port)))
    sock.listen(backlog)
    set_nodelay(sock)
    share_nonblocking(sock)
    return sock


def socket_error_hint(spec: str, exc: OSError) -> str:
    """For a unix socket the daemon cannot create: which directory is the problem and how to
    fix it (the usual cause is a socket inside Postfix's queue directory for its chroot)."""
    kind, _, rest = spec.partition(":")
    if kind not in ("unix", "local"):
        return ""
    folder = Path(rest).parent
    socket_unit = (f"; or let systemd create it: mailsec-milter.socket with "
                   f"ListenStream={rest} (docs/MILTER_README.md; for Postfix's chroot the "
                   "drop-in systemd/mailsec-milter.socket.d/postfix-chroot.conf)")
    if isinstance(exc, FileNotFoundError) and not folder.is_dir():
        return (f". The directory {folder} does not exist: create it for the milter's user "
                f"(install -d -o mailsec-milter -g postfix -m 0750 {folder}; under the "
                f"systemd unit also ReadWritePaths={folder} in a drop-in)" + socket_unit)
    if exc.errno == errno.EROFS:
        return (f". {folder} is read-only here (the unit's ProtectSystem=strict): add "
                f"ReadWritePaths={folder} in a drop-in" + socket_unit)
    if isinstance(exc, PermissionError):
        return (f". This user may not create files in {folder}: make the directory writable "
                f"for the milter's user" + socket_unit)
    return ""


def systemd_listener() -> socket.socket | None:
    """With systemd socket activation (LISTEN_PID/LISTEN_FDS), the socket systemd passed."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if count < 1:
        return None
    sock = socket.socket(fileno=3)  # SD_LISTEN_FDS_START; one socket unit, one socket
    set_nodelay(sock)
    share_nonblocking(sock)
    return sock


def sd_notify(state: str) -> bool:
    """Tell systemd about our state (Type=notify); a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("sd_notify(%s) failed: %s", state, exc)
        return False
    return True


def apply_socket_permissions(settings: Settings) -> None:
    """Mode and group of a unix socket, so only the MTA's group can talk to us."""
    if not settings.socket.startswith(("unix:", "local:")):
        return
    path = settings.socket.split(":", 1)[1]
    if settings.socket_group:
        os.chown(path, -1, grp.getgrnam(settings.socket_group).gr_gid)
    os.chmod(path, settings.socket_mode)
    if settings.user:
        os.chown(path, pwd.getpwnam(settings.user).pw_uid, -1)


class PrivilegeError(RuntimeError):
    pass


def drop_privileges(user: str) -> None:
    """Become ``user`` (and its primary group, no supplementary groups) for good."""
    if os.geteuid() != 0:
        if user and pwd.getpwuid(os.geteuid()).pw_name != user:
            raise PrivilegeError(f"[milter] user = {user!r}, but we are not root and cannot "
                                 "switch users")
        return
    if not user:
        raise PrivilegeError("refusing to run as root: set [milter] user (a dedicated "
                             "unprivileged account, e.g. \"mailsec-milter\") or --user")
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"[milter] user {user!r} does not exist") from None
    if entry.pw_uid == 0:
        raise PrivilegeError(f"[milter] user {user!r} is root")
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    if os.getuid() == 0 or os.geteuid() == 0:
        raise PrivilegeError("privilege drop did not take")



class ChildProcess:
    """The few Popen-like operations the supervisor needs on a forked worker."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1
                return self.returncode
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, signo: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signo)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.returncode


@dataclass
class Worker:
    """One worker process and what the supervisor knows of it."""

    process: ChildProcess
    status: int  # read end of its status pipe
    control: int  # write end of its control pipe (reloads)
    generation: int
    index: int
    ready: bool = False
    buffer: bytearray = field(default_factory=bytearray)  # status bytes not yet parsed
    metrics: bytes = b""  # the exposition it pushed last (or its final one)
    replies: list[str] = field(default_factory=list)  # reload replies not yet consumed

    def take_status(self) -> None:
        """Parse whole messages off the buffer (see worker.StatusPipe for the format)."""
        while True:
            newline = self.buffer.find(b"\n")
            if newline < 0:
                return
            kind, _, argument = bytes(self.buffer[:newline]).decode(errors="replace") \
                .partition(" ")
            if kind in ("METRICS", "FINAL"):
                end = newline + 1 + int(argument)
                if len(self.buffer) < end:
                    return  # the rest of the frame is still in the pipe
                self.metrics = bytes(self.buffer[newline + 1:end])
                del self.buffer[:end]
                continue
            del self.buffer[:newline + 1]
            if kind == "READY":
                self.ready = True
            else:
                self.replies.append(f"{kind} {argument}".strip())


def read_config_text(path: str | None) -> str:
    return "" if path is None else read_config_file(path)


def config_unreadable_warning(path: str | None) -> str | None:
    """Checked once privileges are dropped: a file this process can no longer read makes
    every later reload fail, which is better said at start than at the first SIGHUP."""
    if path is None or os.access(path, os.R_OK):
        return None
    try:
        name = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        name = str(os.geteuid())
    return (f"{path} is not readable by user {name!r}, as which this daemon now runs: every "
            "reload (SIGHUP) will fail; make it readable by the [milter] user (e.g. owner root, "
            "group that user's group, mode 0640)")


class Supervisor:
    """The main process: see the module docstring."""

    def __init__(self, settings: Settings, config_path: str | None,
                 user_override: str | None = None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.user_override = user_override
        self.config_text = read_config_text(config_path)
        self.generation = 0
        self.workers: list[Worker] = []
        self.totals = WorkerTotals()
        self.restarts = 0
        self.own_metrics = SupervisorMetrics()
        # `reports send` runs in its own process (the timer): its counters come from the
        # status file it writes, read at each scrape, once here — not per worker.
        self.report_status = StatusCollector(status_path(settings.reports_store))
        self.own_metrics.registry.register(self.report_status)
        # [audit] posture gauges (issue 16): read the daily audit's result file at each scrape;
        # posture.py never imports checkdmarc
        self.own_metrics.registry.register(PostureCollector(
            lambda: self.settings.audit_domains,
            lambda: self.settings.audit_result_file or default_result_path()))
        self.stopping = False
        self.listener: socket.socket | None = None
        self.metrics_server: http.server.HTTPServer | None = None

    @property
    def worker_count(self) -> int:
        return self.settings.workers or (os.cpu_count() or 1)

    # --- start ---------------------------------------------------------------------------------
    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, SUPERVISOR_SIGNALS)
        try:
            activated = systemd_listener()
            self.listener = activated or open_listener(self.settings.socket)
            if activated is None and self.listener.family == socket.AF_UNIX:
                apply_socket_permissions(self.settings)
        except OSError as exc:
            log.error("cannot open milter socket %s: %s%s", self.settings.socket, exc,
                      socket_error_hint(self.settings.socket, exc))
            return 1
        if self.settings.metrics_listen:
            try:
                self.start_metrics_server(self.settings.metrics_listen)
            except OSError as exc:
                log.error("cannot serve metrics on %s: %s", self.settings.metrics_listen, exc)
                return 1
            log.info("metrics on http://%s/metrics", self.settings.metrics_listen)
        try:
            drop_privileges(self.settings.user)
        except (PrivilegeError, OSError) as exc:
            log.error("%s", exc)
            return 1
        unreadable = config_unreadable_warning(self.config_path)
        if unreadable:
            log.warning("%s", unreadable)
        where = "fd:3 (systemd)" if activated is not None else self.settings.socket
        if not self.start_generation(self.config_text, self.settings):
            log.error("workers did not start; giving up")
            self.stop_workers(self.workers)
            return 1
        log.info("mailsec-milter %s listening on %s with %d worker(s) (authserv-id %s, "
                 "python %s)", __version__, where, self.worker_count,
                 self.settings.authserv_id, sys.version.split()[0])
        sd_notify(f"READY=1\nSTATUS=listening on {where}\nMAINPID={os.getpid()}")
        status = self.loop()
        log.info("mailsec-milter stopped")
        return status

    def spawn(self, config_text: str, index: int, generation: int) -> Worker:
        """Fork a worker. Forked, not exec'd: the supervisor has already dropped privileges,
        and the service user need not be able to read the interpreter or the code again.
        The supervisor runs no threads, so forking is safe."""
        assert self.listener is not None
        status_read, status_write = os.pipe()
        control_read, control_write = os.pipe()
        listen_fd = self.listener.fileno()
        supervisor_pid = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.setsid()  # a terminal's Ctrl-C goes to the supervisor, which coordinates
                keep = {0, 1, 2, listen_fd, status_write, control_read, *log_fds()}
                for name in os.listdir("/proc/self/fd"):
                    if int(name) not in keep:
                        with contextlib.suppress(OSError):
                            os.close(int(name))
                with os.fdopen(status_write, "wb") as status:
                    code = run_worker(config_text, listen_fd, status,
                                      bool(self.settings.metrics_listen), control_read,
                                      supervisor_pid)
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(status_write)
        os.close(control_read)
        os.set_blocking(status_read, False)
        return Worker(ChildProcess(pid), status_read, control_write, generation, index)

    def start_generation(self, config_text: str, settings: Settings) -> bool:
        """Start ``workers`` new workers; True once all of them serve."""
        self.generation += 1
        count = settings.workers or (os.cpu_count() or 1)
        fresh = [self.spawn(config_text, i, self.generation) for i in range(count)]
        self.workers.extend(fresh)
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        while time.monotonic() < deadline and not all(w.ready for w in fresh):
            self.poll_status(0.2)
            if any(w.process.poll() is not None and not w.ready for w in fresh):
                break
        if all(w.ready for w in fresh):
            return True
        self.stop_workers(fresh)
        return False

    # --- the loop ------------------------------------------------------------------------------
    def loop(self) -> int:
        while True:
            info = signal.sigtimedwait(SUPERVISOR_SIGNALS, 0)
            if info is not None and info.si_signo == signal.SIGHUP:
                self.reload()
            elif info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
                log.info("received %s: finishing messages in flight, then stopping",
                         signal.Signals(info.si_signo).name)
                sd_notify("STOPPING=1")
                self.stopping = True
                self.stop_workers(list(self.workers))
                return 0
            self.poll_status(0.2)
            self.reap()

    def reap(self) -> None:
        """Collect ended workers; replace those of the current generation that died."""
        for worker in list(self.workers):
            code = worker.process.poll()
            if code is None:
                continue
            self.poll_status(0, [worker])
            self.retire(worker)
            if worker.generation == self.generation and not self.stopping:
                self.restarts += 1
                self.own_metrics.worker_restarts.inc()
                log.error("worker %d (pid %d) exited with %s; starting a new one",
                          worker.index, worker.process.pid, code)
                time.sleep(min(5.0, 0.2 * self.restarts))  # no tight crash loop
                replacement = self.spawn(self.config_text, worker.index, self.generation)
                self.workers.append(replacement)

    def retire(self, worker: Worker) -> None:
        """Forget an ended worker; its last metrics (final, or last pushed when it was killed)
        stay in the totals."""
        if worker.metrics:
            self.totals.retire(worker.metrics.decode(errors="replace"))
            worker.metrics = b""
        os.close(worker.status)
        with contextlib.suppress(OSError):
            os.close(worker.control)
        if worker in self.workers:
            self.workers.remove(worker)

    def poll_status(self, timeout: float, workers: list[Worker] | None = None) -> None:
        """Wait up to ``timeout`` for status pipes (READY, reload replies, metrics) and, in
        the main loop, for scrapes of /metrics — all on this one thread."""
        watched = workers if workers is not None else list(self.workers)
        with selectors.DefaultSelector() as selector:
            for worker in watched:
                selector.register(worker.status, selectors.EVENT_READ, worker)
            if workers is None and self.metrics_server is not None:
                selector.register(self.metrics_server.fileno(), selectors.EVENT_READ, None)
            if not selector.get_map():
                time.sleep(timeout)
                return
            for key, _ in selector.select(timeout):
                if key.data is None:
                    assert self.metrics_server is not None
                    self.metrics_server.handle_request()
                    continue
                worker = key.data
                while True:
                    try:
                        chunk = os.read(worker.status, 65536)
                    except BlockingIOError:
                        break
                    if not chunk:
                        break
                    worker.buffer.extend(chunk)
                worker.take_status()

    def stop_workers(self, workers: list[Worker]) -> None:
        """Drain: each worker refuses new connections and stops once its open sessions end
        (at most the message deadline plus a grace period); then SIGTERM, then SIGKILL."""
        limit = self.settings.message_deadline + SESSION_GRACE
        for worker in workers:
            try:
                os.write(worker.control, b"DRAIN %f\n" % limit)
            except OSError:
                worker.process.send_signal(signal.SIGTERM)
        drained = time.monotonic() + limit + 5
        for worker in workers:
            while worker.process.poll() is None and time.monotonic() < drained:
                self.poll_status(0.1, [worker])
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for worker in workers:
            while worker.process.poll() is None and time.monotonic() < deadline:
                self.poll_status(0.1, [worker])
            if worker.process.poll() is None:
                log.error("worker pid %d did not stop in time; killing it", worker.process.pid)
                worker.process.kill()
                worker.process.wait(5)
            self.poll_status(0, [worker])
            self.retire(worker)

    # --- reload --------------------------------------------------------------------------------
    def reload(self) -> bool:
        """Re-read the configuration; a broken one keeps the old running (and says why)."""
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            text = read_config_text(self.config_path)
            settings = load_settings(self.config_path)
            if self.user_override:
                settings = replace(settings, user=self.user_override)
        except (ConfigError, OSError, ValueError) as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            sd_notify("READY=1\nSTATUS=reload failed; old configuration kept")
            return False
        problems = [key for key in RESTART_KEYS
                    if getattr(settings, key) != getattr(self.settings, key)]
        payload = text.encode("utf-8")
        message = b"RELOAD %d\n" % len(payload) + payload
        current = [w for w in self.workers if w.generation == self.generation]
        for worker in current:
            worker.replies.clear()
            try:
                os.write(worker.control, message)
            except OSError as exc:
                log.error("worker pid %d did not take the reload: %s", worker.process.pid, exc)
        failed = self.await_reloads(current)
        if failed:
            log.error("%d worker(s) could not reload; they are restarted", len(failed))
            for worker in failed:
                worker.process.send_signal(signal.SIGTERM)
        self.settings = replace(settings, **{k: getattr(self.settings, k) for k in RESTART_KEYS})
        self.report_status.path = status_path(self.settings.reports_store)
        self.config_text = text
        if problems:
            log.warning("reloaded, but %s only change on restart",
                        ", ".join(dotted_name(key) for key in problems))
        for warning in config_warnings(settings):
            log.warning("%s", warning)
        log.info("configuration reloaded from %s", self.config_path or "embedded defaults")
        logging.getLogger().setLevel(self.settings.log_level.upper())  # after saying so
        sd_notify("READY=1\nSTATUS=configuration reloaded")
        return True

    def await_reloads(self, workers: list[Worker]) -> list[Worker]:
        """Wait for each worker's RELOADED; return those that failed or did not answer."""
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        pending = list(workers)
        failed: list[Worker] = []
        while pending and time.monotonic() < deadline:
            self.poll_status(0.1, pending)
            for worker in list(pending):
                if "RELOADED" in worker.replies:
                    pending.remove(worker)
                    worker.replies.clear()
                elif any(r.startswith("RELOAD-FAILED") for r in worker.replies) \
                        or worker.process.poll() is not None:
                    pending.remove(worker)
                    failed.append(worker)
        return failed + pending

    # --- metrics -------------------------------------------------------------------------------
    def start_metrics_server(self, listen: str) -> None:
        """Serve the sum of every worker's metrics on HOST:PORT (loopback by default)."""
        host, _, port = listen.rpartition(":")
        supervisor = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = supervisor.exposition().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        host = host.strip("[]")

        class Server(http.server.HTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            timeout = 2.0  # a client that connects and says nothing cannot stall the loop

        self.metrics_server = Server((host, int(port)), Handler)

    def exposition(self) -> str:
        """What /metrics serves: the workers' sums (never waiting for a worker: they push)
        and the supervisor's own metrics."""
        live = [w for w in self.workers if w.ready and w.process.poll() is None]
        self.own_metrics.workers.set(len(live))
        workers = self.totals.render(w.metrics.decode(errors="replace")
                                     for w in live if w.metrics)
        return workers + generate_latest(self.own_metrics.registry).decode()


# Settings the running process cannot change in place (socket, identity, metrics listener).
RESTART_KEYS = ("socket", "user", "socket_mode", "socket_group", "metrics_listen", "workers",
                "log_target", "log_facility", "log_syslog_socket")


def run(settings: Settings, config_path: str | None = None,
        user_override: str | None = None) -> int:
    """Run the milter in the foreground until SIGTERM/SIGINT; return the exit status."""
    for warning in config_warnings(settings):
        log.warning("%s", warning)
    return Supervisor(settings, config_path, user_override).run()
