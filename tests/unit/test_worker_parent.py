"""A worker never outlives its supervisor, whatever its threads are blocked in."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from mailsec_milter import worker
from mailsec_milter.metrics import Metrics
from mailsec_milter.worker import StatusPipe, follow_control


def wait_for_exit(pid: int, timeout: float) -> int | None:
    """The exit code once it has exited (reaped here), None while it runs."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def test_end_of_the_control_pipe_ends_a_worker_blocked_in_accept() -> None:
    """The orphan of the report: main thread blocked in accept(), SIGTERM of no use. When
    the supervisor's end of the control pipe closes, the worker exits anyway."""
    control_read, control_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the stand-in worker: only this code runs here, then _exit
        try:
            os.close(control_write)
            listener = socket.create_server(("127.0.0.1", 0))
            status = StatusPipe(open(os.devnull, "wb"))  # noqa: SIM115 (ends with the process)
            threading.Thread(target=follow_control,
                             args=(control_read, status, ThreadPoolExecutor(1), Metrics(),
                                   lambda: None),
                             daemon=True).start()
            listener.accept()  # blocks forever: nobody connects
        finally:
            os._exit(0)  # reached only if accept returned: the test then fails (status 0)
    os.close(control_read)
    exit_code: int | None = None
    try:
        time.sleep(0.2)  # let the child block in accept
        assert wait_for_exit(pid, 0) is None  # it is waiting
        os.close(control_write)  # the supervisor is gone
        exit_code = wait_for_exit(pid, 30)
        assert exit_code == 1
    finally:
        if exit_code is None and wait_for_exit(pid, 0) is None:
            os.kill(pid, 9)
            os.waitpid(pid, 0)


def test_a_drained_worker_whose_loop_does_not_end_reports_and_exits() -> None:
    """libmilter's stop() can wait for ever for its listener's lock; the drain does not."""
    report_read, report_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the stand-in worker
        try:
            os.close(report_read)
            worker.libmilter.stop = lambda: time.sleep(3600)  # a listener that never yields
            worker.LOOP_STOP_GRACE = 0.5
            worker.drain(0.0, lambda: os.write(report_write, b"FINAL"))
        finally:
            os._exit(3)  # reached only if drain returned: the test then fails
    os.close(report_write)
    exit_code = wait_for_exit(pid, 30)
    try:
        assert exit_code == 0
        assert os.read(report_read, 100) == b"FINAL"
    finally:
        os.close(report_read)
        if exit_code is None:
            os.kill(pid, 9)
            os.waitpid(pid, 0)


def test_the_kernel_is_asked_to_kill_the_worker_with_its_supervisor() -> None:
    """PR_SET_PDEATHSIG with SIGKILL: a signal no blocked or busy thread can ignore."""
    answer_read, answer_write = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            worker.die_with_parent(parent)
            libc = ctypes.CDLL(None, use_errno=True)
            value = ctypes.c_int(-1)
            libc.prctl(2, ctypes.byref(value), 0, 0, 0)  # PR_GET_PDEATHSIG
            os.write(answer_write, str(value.value).encode())
        finally:
            os._exit(0)
    os.close(answer_write)
    try:
        assert wait_for_exit(pid, 30) == 0
        assert os.read(answer_read, 16) == str(int(signal.SIGKILL)).encode()
    finally:
        os.close(answer_read)


def test_a_worker_whose_supervisor_is_already_gone_exits_at_once() -> None:
    pid = os.fork()
    if pid == 0:
        try:
            worker.die_with_parent(os.getppid() + 1_000_000)  # not our parent: it died
        finally:
            os._exit(0)  # reached only if die_with_parent returned: the test then fails
    assert wait_for_exit(pid, 30) == 1
