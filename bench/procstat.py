"""CPU and memory of process trees from /proc (Linux only).

CPU: ``utime + stime`` of every live process in the tree (all threads included) plus the root's
``cutime + cstime`` (children it already reaped), in seconds. Memory: ``Rss`` and ``Pss`` from
``/proc/PID/smaps_rollup`` summed over the tree, sampled by a background thread for the peak.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after ``pid (comm)``; index 0 is the state."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def process_tree(roots: Iterable[int]) -> list[int]:
    """The roots and all their live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields is not None and fields[0] not in ("Z", "X"):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [r for r in roots if _stat(r) is not None]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def tree_identities(roots: Iterable[int]) -> list[tuple[int, int]]:
    """(pid, start time) of every process in the trees: a PID plus its start time names one
    process even after it was re-parented or the PID was reused."""
    out = []
    for pid in process_tree(roots):
        fields = _stat(pid)
        if fields is not None:
            out.append((pid, int(fields[19])))
    return out


def kill_leftovers(identities: Iterable[tuple[int, int]], grace: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL after ``grace`` s, the listed processes that still run; returns
    the PIDs that had to be stopped (workers orphaned by a supervisor that was killed)."""
    def alive() -> list[int]:
        pids = []
        for pid, start in identities:
            fields = _stat(pid)
            if fields is not None and int(fields[19]) == start and fields[0] not in ("Z", "X"):
                pids.append(pid)
        return pids

    leftovers = alive()
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        for pid in alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)
    return leftovers


def tree_cpu_seconds(roots: Iterable[int]) -> float:
    """CPU seconds (user + system) used so far by the trees under ``roots``."""
    roots = list(roots)
    ticks = 0
    for pid in process_tree(roots):
        fields = _stat(pid)
        if fields is None:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
        if pid in roots:
            ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / CLK_TCK


def memory_kb(pid: int) -> tuple[int, int]:
    """(Rss, Pss) in KiB of one process, (0, 0) if it is gone."""
    rss = pss = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return total - idle, total


@dataclass
class MemoryPeak:
    """Peak RSS/PSS (MiB) of a set of trees, and the largest PSS of a single process."""

    rss_mb: float = 0.0
    pss_mb: float = 0.0
    max_process_pss_mb: float = 0.0
    processes: int = 0
    samples: int = 0
    first: tuple[float, float] | None = None
    last: tuple[float, float] = (0.0, 0.0)
    extra: dict[str, float] = field(default_factory=dict)

    def take(self, roots: Iterable[int]) -> None:
        rss_total = pss_total = 0
        pids = process_tree(roots)
        for pid in pids:
            rss, pss = memory_kb(pid)
            rss_total += rss
            pss_total += pss
            self.max_process_pss_mb = max(self.max_process_pss_mb, pss / 1024)
        rss_mb, pss_mb = rss_total / 1024, pss_total / 1024
        self.rss_mb = max(self.rss_mb, rss_mb)
        self.pss_mb = max(self.pss_mb, pss_mb)
        self.processes = max(self.processes, len(pids))
        self.samples += 1
        if self.first is None:
            self.first = (rss_mb, pss_mb)
        self.last = (rss_mb, pss_mb)


class MemorySampler:
    """Samples the trees under ``roots`` every ``interval`` seconds until stopped."""

    def __init__(self, roots: Iterable[int], interval: float = 0.25) -> None:
        self.roots = list(roots)
        self.interval = interval
        self.peak = MemoryPeak()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-memory", daemon=True)

    def __enter__(self) -> MemorySampler:
        self.peak.take(self.roots)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak.take(self.roots)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak.take(self.roots)
