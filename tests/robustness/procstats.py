"""Process and reply helpers shared by the robustness tests (no fixtures here).

* ``ProcStats``: RSS, thread and file-descriptor counts of a process and its descendants,
  from ``/proc`` (Linux).
* ``read_outcome``: everything a milter still says on an abused connection, each reply decoded
  (so an illegal reply fails the test), and whether it then closed the connection.
* ``milter_running``: the daemon for the length of a ``with`` block, stopped by its PID and its
  temporary directory removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import milterclient as mc
from tests.support.milterproc import MilterProcess


@contextlib.contextmanager
def milter_running(config: dict[str, dict[str, Any]]) -> Iterator[MilterProcess]:
    process = MilterProcess(config)
    try:
        with process:
            yield process
    finally:
        shutil.rmtree(process.workdir, ignore_errors=True)


def children(pid: int) -> list[int]:
    """Direct children of a process (over all of its threads)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return sorted(set(found))


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (the daemon may be a supervisor with worker processes)."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children(current)
    return tree


@dataclass(frozen=True)
class ProcStats:
    """Summed over a process and its descendants."""

    rss_kb: int
    threads: int
    fds: int
    pids: tuple[int, ...]

    @classmethod
    def of(cls, pid: int) -> ProcStats:
        rss = threads = fds = 0
        pids = process_tree(pid)
        for member in pids:
            try:
                status = Path(f"/proc/{member}/status").read_text()
                fds += len(os.listdir(f"/proc/{member}/fd"))
            except OSError:  # exited meanwhile
                continue
            found_rss = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
            found_threads = re.search(r"^Threads:\s+(\d+)", status, re.M)
            rss += int(found_rss.group(1)) if found_rss else 0
            threads += int(found_threads.group(1)) if found_threads else 0
        return cls(rss, threads, fds, tuple(pids))


@dataclass(frozen=True)
class Outcome:
    replies: tuple[mc.Reply, ...]
    closed: bool

    @property
    def actions(self) -> list[str]:
        return [r.action for r in self.replies]


def read_outcome(client: mc.MilterClient, timeout: float = 1.0,
                 offered_actions: int = mc.ACTIONS_ALL) -> Outcome:
    """Read replies until the milter closes the connection or is quiet for ``timeout`` s.

    Each reply must decode (``MilterProtocolError`` fails the caller's test: an unknown reply
    command, a truncated packet, a malformed payload); a negotiation reply must not ask for
    actions that were not offered or a protocol version above 6 (Postfix refuses both)."""
    replies: list[mc.Reply] = []
    while True:
        try:
            reply = client.read_reply(timeout=timeout)
        except mc.ConnectionClosed:
            return Outcome(tuple(replies), True)
        except mc.MilterTimeoutError:
            return Outcome(tuple(replies), False)
        except ConnectionError:
            return Outcome(tuple(replies), True)
        if reply.command == mc.SMFIR_OPTNEG:
            assert (reply.version or 0) <= mc.SMFI_PROT_VERSION, reply
            assert not (reply.actions or 0) & ~offered_actions, (
                f"milter asks for actions {reply.actions:#x} outside {offered_actions:#x}")
        replies.append(reply)
