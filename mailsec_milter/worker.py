"""One worker process: libmilter's main loop on a listening socket inherited from the supervisor.

Owns: the wiring inside a worker (runtime, callbacks, libmilter on ``fd:N``), its private
metrics endpoint, and reporting to the supervisor over a status pipe: ``READY <port>`` once it
serves, and its final metrics when libmilter's loop has ended.
Must not: open sockets to the MTA, change users, or handle reloads: the supervisor
(daemon.py) does those. libmilter's own signal thread handles SIGTERM here: it stops
accepting, lets sessions finish, and run_worker() returns.
"""

from __future__ import annotations

import ctypes
import encodings.idna  # noqa: F401
import logging
import os
import signal
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from typing import IO

# Modules that are otherwise imported lazily, on first use, while mail flows. Workers are forked
# after the supervisor dropped privileges; loading them now means no file is read later that
# the service user might not be allowed to read.
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA  # noqa: F401
import Milter
import milter as libmilter
from prometheus_client import disable_created_metrics, generate_latest, start_http_server

from .config import Settings, settings_from_mapping
from .dns import CachingResolver, ResolverSettings
from .engine import Engine
from .history import sender_history
from .metrics import Metrics
from .milter import MailsecMilter, Runtime, install_runtime, open_sessions, start_draining

log = logging.getLogger("mailsec_milter.worker")

# libmilter waits for these in its own signal thread. Every other thread must block them, or
# the kernel may hand SIGTERM to a thread with the default action and the process dies at once.
MILTER_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
PR_SET_PDEATHSIG = 1


def block_milter_signals() -> None:
    """Block the signals libmilter waits for, in this thread and every thread it starts later."""
    signal.pthread_sigmask(signal.SIG_BLOCK, MILTER_SIGNALS)


def die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the supervisor dies, so no worker is left orphaned
    holding the listening socket (libmilter then stops gracefully)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def build_runtime(settings: Settings, pool: ThreadPoolExecutor, metrics: Metrics) -> Runtime:
    resolver = CachingResolver(ResolverSettings(
        nameservers=settings.nameservers,
        timeout=settings.dns_timeout,
        cache_entries=settings.dns_cache_entries,
        max_ttl=int(settings.dns_max_ttl),
        negative_ttl=int(settings.dns_negative_ttl),
    ), observer=metrics.observe_dns)
    # issue 15: the worker's sending history (RFC 9989 §8 known-sender sign), refreshed in
    # the background; one per worker, kept across reloads with equal settings.
    history = sender_history(settings)
    return Runtime(settings, Engine(settings, resolver, pool, history=history), metrics)


def register_callbacks() -> None:
    """What ``Milter.runmilter`` does, split so the socket can come from the supervisor."""
    Milter.factory = MailsecMilter
    # An exception that escapes a callback (pymilter's own strict UTF-8 decoding of a header
    # *name* happens before our code runs) would by default answer TEMPFAIL to an event the
    # MTA expects no answer for; libmilter then drops the rest of the message and the MTA waits
    # for its timeout. CONTINUE skips that one event instead; our own callbacks catch their
    # errors themselves, and a message whose MAIL FROM failed is tempfailed at its end.
    libmilter.set_exception_policy(libmilter.CONTINUE)
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


def drain(limit: float) -> None:
    """Stop gracefully: refuse new MTA connections (tempfail), let the open ones finish
    (bounded by ``limit``), then stop libmilter's loop.

    libmilter's own stop (its reaction to SIGTERM) does not do this: sessions in flight stall
    and are cut when the process ends, leaving the MTA to its milter_default_action.
    """
    start_draining()
    deadline = time.monotonic() + limit
    while open_sessions() > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if open_sessions():
        log.warning("stopping with %d session(s) still open", open_sessions())
    libmilter.stop()


def follow_control(control_fd: int, status: IO[str], pool: ThreadPoolExecutor,
                   metrics: Metrics) -> None:
    """Reload on the supervisor's word: ``RELOAD <length>`` then that many bytes of
    configuration. The new runtime serves messages that start from now on; messages in flight
    keep the runtime they started with, and libmilter never stops, so no session is cut."""
    with os.fdopen(control_fd, "rb") as control:
        while True:
            line = control.readline()
            if not line:
                return  # the supervisor is gone (PR_SET_PDEATHSIG ends us too)
            if line.startswith(b"DRAIN "):
                drain(float(line.split()[1]))
                return
            if not line.startswith(b"RELOAD "):
                continue
            text = control.read(int(line.split()[1])).decode("utf-8")
            try:
                runtime = build_runtime(settings_from_mapping(tomllib.loads(text)), pool, metrics)
            except Exception as exc:  # validated by the supervisor: this would be a bug
                log.exception("reload failed in the worker")
                reply = f"RELOAD-FAILED {type(exc).__name__}\n"
            else:
                old = install_runtime(runtime)
                if old is not None:
                    old.engine.resolver.close()
                reply = "RELOADED\n"
            try:
                status.write(reply)
                status.flush()
            except OSError:
                return


def run_worker(config_text: str, listen_fd: int, status: IO[str], metrics_enabled: bool,
               control_fd: int | None = None) -> int:
    """Serve until libmilter's loop ends; return the exit status."""
    block_milter_signals()
    die_with_parent()
    # See daemon.py: one switch, process-global in prometheus_client.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    settings = settings_from_mapping(tomllib.loads(config_text))
    logging.getLogger().setLevel(getattr(logging, settings.log_level.upper(), logging.INFO))
    pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="checks")
    metrics = Metrics()
    install_runtime(build_runtime(settings, pool, metrics))
    port = 0
    if metrics_enabled:
        server, _thread = start_http_server(0, addr="127.0.0.1", registry=metrics.registry)
        port = int(server.server_port)
    register_callbacks()
    try:
        libmilter.setconn(f"fd:{listen_fd}")
        libmilter.opensocket(False)
    except libmilter.error as exc:
        log.error("worker cannot use the inherited socket fd:%d: %s", listen_fd, exc)
        return 1
    if control_fd is not None:
        threading.Thread(target=follow_control, args=(control_fd, status, pool, metrics),
                         name="control", daemon=True).start()
    status.write(f"READY {port}\n")
    status.flush()
    try:
        libmilter.main()
    except libmilter.error as exc:
        log.error("milter main loop failed: %s", exc)
        return 1
    finally:
        pool.shutdown(wait=False, cancel_futures=False)
        # The supervisor adds these to its totals, so counters never go backwards when a
        # worker retires (reload, restart after a crash).
        try:
            status.write("FINAL\n" + generate_latest(metrics.registry).decode())
            status.close()
        except OSError:
            pass
    return 0
