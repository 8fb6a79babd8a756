"""Composition root: wires settings, resolver, engine and the milter adapter, and runs libmilter.

Owns: the process — signal mask, the listening socket (with TCP_NODELAY), the thread pool, and
the libmilter main loop.
Must not: contain mail logic.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import stat
import sys
from concurrent.futures import ThreadPoolExecutor

import Milter
import milter as libmilter
from prometheus_client import start_http_server

from . import __version__
from .config import Settings
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
    libmilter.opensocket(True)
    set_nodelay_on_listeners()


def run(settings: Settings) -> int:
    """Run the milter in the foreground until SIGTERM/SIGINT; return the exit status."""
    block_milter_signals()
    pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="checks")
    metrics = Metrics()
    runtime = build_runtime(settings, pool, metrics)
    install_runtime(runtime)
    if settings.metrics_listen:
        try:
            start_metrics_server(settings.metrics_listen, metrics)
        except OSError as exc:
            log.error("cannot serve metrics on %s: %s", settings.metrics_listen, exc)
            return 1
        log.info("metrics on http://%s/metrics", settings.metrics_listen)
    register_callbacks()
    try:
        open_socket(settings.socket)
    except libmilter.error as exc:
        log.error("cannot open milter socket %s: %s", settings.socket, exc)
        return 1
    log.info("mailsec-milter %s listening on %s (authserv-id %s, python %s)", __version__,
             settings.socket, settings.authserv_id, sys.version.split()[0])
    try:
        libmilter.main()
    except libmilter.error as exc:
        log.error("milter main loop failed: %s", exc)
        return 1
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    log.info("mailsec-milter stopped")
    return 0
