"""Composition root: wires settings, resolver, engine and the milter adapter, and runs libmilter.

Owns: the process — signal mask, the listening socket (with TCP_NODELAY), the thread pool, and
the libmilter main loop.
Must not: contain mail logic.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import signal
import socket
import stat
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import Milter
import milter as libmilter
from prometheus_client import disable_created_metrics, start_http_server

from . import __version__
from .config import ConfigError, Settings, load_settings
from .dns import CachingResolver, ResolverSettings
from .engine import Engine
from .metrics import Metrics
from .milter import MailsecMilter, Runtime, install_runtime

log = logging.getLogger("mailsec_milter.daemon")

# libmilter handles these in its own thread (sigwait). Any thread we start must have them
# blocked, or the kernel may deliver SIGTERM to it and the process dies without a clean stop.
MILTER_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def block_milter_signals() -> None:
    """Block the signals libmilter waits for, in this thread and every thread it starts later."""
    signal.pthread_sigmask(signal.SIG_BLOCK, MILTER_SIGNALS)


def set_nodelay_on_listeners() -> int:
    """Set TCP_NODELAY on every listening TCP socket of this process; return how many.

    libmilter never sets it, and at end of message writes the header edit and the reply
    separately, so Nagle holds the reply until the MTA's delayed ACK (~40 ms per message).
    Accepted sockets inherit the option from the listener on Linux.
    """
    count = 0
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            if sock.type != socket.SOCK_STREAM:
                continue
            if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            count += 1
        except OSError:
            continue
        finally:
            sock.close()
    return count


def build_runtime(settings: Settings, pool: ThreadPoolExecutor, metrics: Metrics) -> Runtime:
    resolver = CachingResolver(ResolverSettings(
        nameservers=settings.nameservers,
        timeout=settings.dns_timeout,
        cache_entries=settings.dns_cache_entries,
        max_ttl=int(settings.dns_max_ttl),
        negative_ttl=int(settings.dns_negative_ttl),
    ), observer=metrics.observe_dns)
    return Runtime(settings, Engine(settings, resolver, pool), metrics)


def start_metrics_server(listen: str, metrics: Metrics) -> None:
    """Serve /metrics on HOST:PORT (loopback by default; prometheus_client's own default
    would be 0.0.0.0). Runs in a daemon thread that inherits our blocked signal mask."""
    host, _, port = listen.rpartition(":")
    start_http_server(int(port), addr=host.strip("[]"), registry=metrics.registry)


# prometheus_client would export a *_created series beside every counter and histogram,
# doubling the series count for a timestamp nobody graphs. Its switch is process-global, so it
# is flipped here, in the composition root, once.
disable_created_metrics()  # type: ignore[no-untyped-call]


def register_callbacks() -> None:
    """What ``Milter.runmilter`` does, split so we can open the socket ourselves."""
    Milter.factory = MailsecMilter
    libmilter.set_connect_callback(Milter.connect_callback)
    libmilter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    libmilter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
    libmilter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    libmilter.set_header_callback(lambda ctx, f, v: ctx.getpriv().header_bytes(f, v))
    libmilter.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    libmilter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    libmilter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    libmilter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    libmilter.set_close_callback(Milter.close_callback)
    libmilter.register(
        "mailsec-milter",
        data=lambda ctx: ctx.getpriv().data(),
        unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
        negotiate=Milter.negotiate_callback,
    )


def open_socket(spec: str) -> None:
    """Open libmilter's listening socket now (before any worker starts) and fix TCP_NODELAY."""
    libmilter.setconn(spec)
    libmilter.opensocket(spec.startswith(("unix:", "local:")))
    set_nodelay_on_listeners()


def systemd_listen_spec() -> str | None:
    """With systemd socket activation (LISTEN_PID/LISTEN_FDS), the inherited socket as a
    libmilter ``fd:N`` spec; libmilter accepts on it instead of opening its own."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    if count < 1:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    return "fd:3"  # SD_LISTEN_FDS_START; one socket unit, one socket


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


class Daemon:
    """The running process: libmilter's loop on a thread, signals on the main thread.

    Why the main thread waits for signals itself: libmilter's own signal thread treats SIGHUP
    as "stop". On Linux a process-directed signal goes to the main thread whenever it is
    waiting for it, so sigwait() here takes every SIGHUP/SIGTERM/SIGINT before libmilter can.
    """

    def __init__(self, settings: Settings, config_path: str | None,
                 user_override: str | None = None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.user_override = user_override
        self.pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="checks")
        self.metrics = Metrics()
        self.runtime = build_runtime(settings, self.pool, self.metrics)
        self.loop_error: BaseException | None = None

    def run(self) -> int:
        install_runtime(self.runtime)
        if self.settings.metrics_listen:
            try:
                start_metrics_server(self.settings.metrics_listen, self.metrics)
            except OSError as exc:
                log.error("cannot serve metrics on %s: %s", self.settings.metrics_listen, exc)
                return 1
            log.info("metrics on http://%s/metrics", self.settings.metrics_listen)
        register_callbacks()
        spec = systemd_listen_spec() or self.settings.socket
        try:
            open_socket(spec)
            if not spec.startswith("fd:"):
                apply_socket_permissions(self.settings)
            drop_privileges(self.settings.user)
        except libmilter.error as exc:
            log.error("cannot open milter socket %s: %s", spec, exc)
            return 1
        except (PrivilegeError, OSError, KeyError) as exc:
            log.error("%s", exc)
            return 1
        loop = threading.Thread(target=self._main_loop, name="libmilter-main")
        loop.start()
        log.info("mailsec-milter %s listening on %s (authserv-id %s, python %s)", __version__,
                 spec, self.settings.authserv_id, sys.version.split()[0])
        sd_notify("READY=1\nSTATUS=listening on " + spec)
        status = self._wait_for_signals(loop)
        self.pool.shutdown(wait=False, cancel_futures=False)
        log.info("mailsec-milter stopped")
        return status

    def _main_loop(self) -> None:
        try:
            libmilter.main()
        except BaseException as exc:  # reported by the signal loop
            self.loop_error = exc

    def _wait_for_signals(self, loop: threading.Thread) -> int:
        while loop.is_alive():
            info = signal.sigtimedwait(MILTER_SIGNALS, 1.0)
            if info is None:
                continue
            if info.si_signo == signal.SIGHUP:
                self.reload()
                continue
            log.info("received %s: finishing messages in flight, then stopping",
                     signal.Signals(info.si_signo).name)
            sd_notify("STOPPING=1")
            libmilter.stop()
            loop.join(60)
            break
        if self.loop_error is not None:
            log.error("milter main loop failed: %s", self.loop_error)
            return 1
        return 0

    def reload(self) -> bool:
        """Re-read the configuration; a broken one keeps the old running (and says why)."""
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            settings = load_settings(self.config_path)
            if self.user_override:
                settings = replace(settings, user=self.user_override)
            problems = [key for key in RESTART_KEYS
                        if getattr(settings, key) != getattr(self.settings, key)]
            runtime = build_runtime(settings, self.pool, self.metrics)
        except (ConfigError, OSError, ValueError) as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            sd_notify("READY=1\nSTATUS=reload failed; old configuration kept")
            return False
        old = self.runtime
        self.runtime, self.settings = runtime, settings
        install_runtime(runtime)
        old.engine.resolver.close()  # lets lookups in flight finish; no new prefetches
        if problems:
            log.warning("reloaded, but %s only change on restart", ", ".join(problems))
        log.info("configuration reloaded from %s", self.config_path or "embedded defaults")
        sd_notify("READY=1\nSTATUS=configuration reloaded")
        return True


# Settings the running process cannot change in place (socket, identity, metrics listener).
RESTART_KEYS = ("socket", "user", "socket_mode", "socket_group", "metrics_listen")


def run(settings: Settings, config_path: str | None = None,
        user_override: str | None = None) -> int:
    """Run the milter in the foreground until SIGTERM/SIGINT; return the exit status."""
    block_milter_signals()
    return Daemon(settings, config_path, user_override).run()
