"""One worker process: libmilter's main loop on a listening socket inherited from the supervisor.

Owns: the wiring inside a worker (runtime, callbacks, libmilter on ``fd:N``) and reporting to
the supervisor over a status pipe: ``READY`` once it serves, its metrics (pushed about once a
second while they change, and a final push when libmilter's loop has ended), reload replies.
No network listener of its own: the supervisor serves /metrics from what the workers push.
Must not: open sockets to the MTA, change users, or handle reloads: the supervisor
(daemon.py) does those. libmilter's own signal thread handles SIGTERM here: it stops
accepting, lets sessions finish, and run_worker() returns. It must never outlive the
supervisor: the kernel kills it when the supervisor dies (PR_SET_PDEATHSIG), and it exits when
its control pipe reaches end of file.
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
from collections.abc import Callable
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
from prometheus_client import disable_created_metrics, generate_latest

from .config import Settings, settings_from_mapping
from .dns import CachingResolver, ResolverSettings
from .engine import Engine
from .history import sender_history
from .metrics import Metrics
from .milter import (
    MailsecMilter,
    Runtime,
    current_runtime,
    install_runtime,
    open_sessions,
    start_draining,
)
from .reports.recorder import Recorder, RecorderSettings
from .reports.store import default_store_path

log = logging.getLogger("mailsec_milter.worker")

# libmilter waits for these in its own signal thread. Every other thread must block them, or
# the kernel may hand SIGTERM to a thread with the default action and the process dies at once.
MILTER_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
PR_SET_PDEATHSIG = 1


def block_milter_signals() -> None:
    """Block the signals libmilter waits for, in this thread and every thread it starts later."""
    signal.pthread_sigmask(signal.SIG_BLOCK, MILTER_SIGNALS)


def die_with_parent(supervisor_pid: int) -> None:
    """Have the kernel SIGKILL this worker when the supervisor dies, so no worker is ever left
    orphaned holding the milter port (the next start could not bind it).

    SIGKILL, not SIGTERM: SIGTERM is blocked in every thread but libmilter's signal thread,
    which is gone once libmilter's loop has ended (e.g. while draining), so an orphan could
    ignore it forever. The death signal fires when the *thread* that forked us ends; the
    supervisor forks from its only thread, so that is the supervisor's death. If the
    supervisor died before the request took effect, the parent is already someone else: go.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the control pipe's end of file still ends us (follow_control)
    if os.getppid() != supervisor_pid:
        os._exit(1)


class StatusPipe:
    """The worker's end of the status pipe: one whole message at a time, from any thread.

    Lines (``READY``, ``RELOADED``, ``RELOAD-FAILED <why>``) and metrics frames
    (``METRICS <bytes>`` or ``FINAL <bytes>`` then the exposition text).
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def line(self, text: str) -> bool:
        return self._write(text.encode() + b"\n")

    def frame(self, kind: str, payload: bytes) -> bool:
        return self._write(b"%s %d\n" % (kind.encode(), len(payload)) + payload)

    def _write(self, data: bytes) -> bool:
        with self.lock:
            try:
                self.stream.write(data)
                self.stream.flush()
            except (OSError, ValueError):  # the supervisor is gone, or we are closing
                return False
        return True


# How often a worker pushes its metrics while they change. A worker killed with SIGKILL loses
# the increments of at most this long (its last push is kept); a clean exit loses nothing.
METRICS_PUSH_INTERVAL = 1.0


def push_metrics(status: StatusPipe, metrics: Metrics, stop: threading.Event) -> None:
    """Push the whole exposition when it changed since the last push (idle: nothing sent).

    Pushed, not pulled: a slow or stopped worker cannot delay /metrics, and the supervisor
    always has recent numbers of a worker that then dies.
    """
    last = b""
    while True:
        text = generate_latest(metrics.registry)
        if text != last and not status.frame("METRICS", text):
            return
        last = text
        if stop.wait(METRICS_PUSH_INTERVAL):
            return


def build_runtime(settings: Settings, pool: ThreadPoolExecutor, metrics: Metrics,
                  recorder: Recorder | None = None) -> Runtime:
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
    return Runtime(settings, Engine(settings, resolver, pool, history=history), metrics,
                   recorder)


def recorder_for(settings: Settings, metrics: Metrics, current: Recorder | None
                 ) -> Recorder | None:
    """The report recorder the settings ask for: the running one when nothing it depends on
    changed (a reload keeps its queue), else a new one (the caller stops the old one)."""
    if not settings.reports_record:
        return None
    wanted = RecorderSettings(settings.reports_store or default_store_path(),
                              settings.reports_queue_size, int(settings.reports_keep // 86400))
    if current is not None and current.settings == wanted:
        return current
    recorder = Recorder(wanted, observer=metrics).start()
    metrics.watch_report_queue(lambda: recorder.depth)
    return recorder


def _retire_recorder(old: Recorder | None, new: Recorder | None) -> None:
    """Flush and close a recorder a reload replaced, off the control thread's path."""
    if old is not None and old is not new:
        threading.Thread(target=old.stop, name="report-writer-retire", daemon=True).start()


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


# Set when libmilter's main loop has returned in this worker.
LOOP_ENDED = threading.Event()
# How long a drained worker waits for libmilter's loop to notice the stop: its listener checks
# the stop flag between polls of 5 s (MI_CHK_TIME), holding a lock that smfi_stop() waits for.
LOOP_STOP_GRACE = 8.0


def drain(limit: float, final_report: Callable[[], None]) -> None:
    """Stop gracefully: refuse new MTA connections (tempfail), let the open ones finish
    (bounded by ``limit``), then stop libmilter's loop.

    libmilter's own stop (its reaction to SIGTERM) does not do this: sessions in flight stall
    and are cut when the process ends, leaving the MTA to its milter_default_action.
    libmilter's stop is only a flag its listener checks between polls, under a lock the
    listener holds while it polls and accepts. Should the listener ever block (the shared
    socket is non-blocking so that it does not: see daemon.share_nonblocking), stop() would
    wait for ever and no signal would end the loop. So stop() runs on its own thread, and when
    the loop has not ended in time this worker reports its final numbers and exits by itself
    — no session is open any more.
    """
    start_draining()
    deadline = time.monotonic() + limit
    while open_sessions() > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if open_sessions():
        log.warning("stopping with %d session(s) still open", open_sessions())
    threading.Thread(target=libmilter.stop, name="stop", daemon=True).start()
    if not LOOP_ENDED.wait(LOOP_STOP_GRACE):
        log.warning("libmilter's loop did not end after the stop; exiting without it")
        final_report()
        logging.shutdown()
        os._exit(0)


def follow_control(control_fd: int, status: StatusPipe, pool: ThreadPoolExecutor,
                   metrics: Metrics, final_report: Callable[[], None]) -> None:
    """Follow the supervisor's word until it is gone.

    ``RELOAD <length>`` then that many bytes of configuration: the new runtime serves messages
    that start from now on; messages in flight keep the runtime they started with, and
    libmilter never stops, so no session is cut. ``DRAIN <seconds>``: stop gracefully (on its
    own thread, so this one keeps watching). End of file: the supervisor died (normally the
    kernel has killed us already, see die_with_parent): exit at once, whatever the other
    threads are blocked in — an orphan would hold the milter port.
    """
    with os.fdopen(control_fd, "rb") as control:
        while True:
            line = control.readline()
            if not line:
                log.error("the supervisor is gone; exiting")
                os._exit(1)
            if line.startswith(b"DRAIN "):
                threading.Thread(target=drain, args=(float(line.split()[1]), final_report),
                                 name="drain", daemon=True).start()
                continue
            if not line.startswith(b"RELOAD "):
                continue
            text = control.read(int(line.split()[1])).decode("utf-8")
            try:
                settings = settings_from_mapping(tomllib.loads(text))
                recorder = recorder_for(settings, metrics, current_runtime().recorder)
                runtime = build_runtime(settings, pool, metrics, recorder)
            except Exception as exc:  # validated by the supervisor: this would be a bug
                log.exception("reload failed in the worker")
                reply = f"RELOAD-FAILED {type(exc).__name__}"
            else:
                old = install_runtime(runtime)
                logging.getLogger().setLevel(runtime.settings.log_level.upper())
                if old is not None:
                    old.engine.resolver.close()
                    _retire_recorder(old.recorder, recorder)
                reply = "RELOADED"
            status.line(reply)


def run_worker(config_text: str, listen_fd: int, status_stream: IO[bytes],
               metrics_enabled: bool, control_fd: int | None = None,
               supervisor_pid: int | None = None) -> int:
    """Serve until libmilter's loop ends; return the exit status."""
    block_milter_signals()
    die_with_parent(os.getppid() if supervisor_pid is None else supervisor_pid)
    # See daemon.py: one switch, process-global in prometheus_client.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    settings = settings_from_mapping(tomllib.loads(config_text))
    logging.getLogger().setLevel(getattr(logging, settings.log_level.upper(), logging.INFO))
    pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="checks")
    metrics = Metrics()
    install_runtime(build_runtime(settings, pool, metrics,
                                  recorder_for(settings, metrics, None)))
    status = StatusPipe(status_stream)

    def final_report() -> None:
        """The last numbers: the supervisor folds them into its totals, so counters never go
        backwards when a worker retires (restart after a crash, stop). The report recorder is
        flushed first, so its counts are in them and graceful stop loses no record."""
        recorder = current_runtime().recorder
        if recorder is not None:
            recorder.stop()
        if metrics_enabled:
            status.frame("FINAL", generate_latest(metrics.registry))

    register_callbacks()
    try:
        libmilter.setconn(f"fd:{listen_fd}")
        libmilter.opensocket(False)
    except libmilter.error as exc:
        log.error("worker cannot use the inherited socket fd:%d: %s", listen_fd, exc)
        return 1
    if control_fd is not None:
        threading.Thread(target=follow_control,
                         args=(control_fd, status, pool, metrics, final_report),
                         name="control", daemon=True).start()
    stop_pushing = threading.Event()
    if metrics_enabled:
        threading.Thread(target=push_metrics, args=(status, metrics, stop_pushing),
                         name="metrics-push", daemon=True).start()
    status.line("READY")
    try:
        libmilter.main()
    except libmilter.error as exc:
        log.error("milter main loop failed: %s", exc)
        return 1
    finally:
        LOOP_ENDED.set()
        stop_pushing.set()
        pool.shutdown(wait=False, cancel_futures=False)
        final_report()
    return 0
