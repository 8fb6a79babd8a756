"""``--profile``: where mailsec-milter's CPU goes, sampled by py-spy while the driver runs c=8.

Two passes over the same work (so each tool runs alone): ``py-spy record --gil --nolineno
--format raw`` (only the thread holding the GIL is sampled, so time spent waiting for the GIL is
not counted as work), parsed here into top functions by self and by inclusive samples and self
samples by package; and ``--format flamegraph`` for the SVG. py-spy comes from PyPI
(``scripts/install-deps.sh --bench`` installs it); without it, or without ptrace permission,
the profile is reported as skipped.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .driver import DriverOptions, SessionWork, run_level
from .targets import Target

RATE = 500  # samples per second
_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]+)\)$")


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def _package(path: str) -> str:
    parts = path.replace("\\", "/").split("/")
    if parts[0] == "mailsec_milter" and len(parts) > 1:
        return "mailsec_milter." + parts[1].removesuffix(".py")
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    return parts[0].removesuffix(".py") or path


def parse_raw(text: str, top: int = 10) -> dict[str, Any]:
    """Top functions by self and inclusive samples, and self samples per package."""
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [m for m in (_FRAME.match(f.strip()) for f in stack.split(";")) if m]
        if not frames:
            continue
        total += count
        names = [f"{m['func']} ({m['file']})" for m in frames]
        self_counts[names[-1]] += count
        packages[_package(frames[-1]["file"])] += count
        for name in set(names):
            incl_counts[name] += count

    def rows(counter: Counter[str], key: str) -> list[dict[str, Any]]:
        return [{key: name, "samples": n, "percent": round(100.0 * n / max(1, total), 2)}
                for name, n in counter.most_common(top)]

    return {"samples": total, "top_self": rows(self_counts, "function"),
            "top_inclusive": rows(incl_counts, "function"),
            "by_package": rows(packages, "package")}


def _record(tool: str, pid: int, fmt: str, output: Path, extra: Sequence[str],
            run: Callable[[], object], log_path: Path) -> None:
    args = [tool, "record", "--pid", str(pid), "--subprocesses", "--rate", str(RATE),
            "--format", fmt, "--output", str(output), *extra]
    with log_path.open("ab") as log:
        recorder = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
    try:
        time.sleep(1.0)  # attach before the load starts
        if recorder.poll() is not None:
            raise RuntimeError(f"py-spy exited at once: {log_path.read_text()[-500:]}")
        run()
    finally:
        if recorder.poll() is None:
            recorder.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                recorder.wait(60)
            except subprocess.TimeoutExpired:
                recorder.kill()
                recorder.wait(5)


def profile(target: Target, work: Sequence[SessionWork], svg_work: Sequence[SessionWork],
            concurrency: int, options: DriverOptions, out_stem: Path,
            time_limit: float) -> dict[str, Any]:
    """Profile ``target`` under ``concurrency`` (``work`` for the numbers, ``svg_work`` for the
    flame graph); files go next to the JSON report."""
    tool = py_spy()
    if tool is None:
        return {"skipped": "py-spy not installed (scripts/install-deps.sh --bench)"}
    raw = out_stem.with_name(out_stem.name + f"-profile-c{concurrency}.txt")
    svg = out_stem.with_name(out_stem.name + f"-profile-c{concurrency}.svg")
    log_path = out_stem.with_name(out_stem.name + "-py-spy.log")
    version = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        version = subprocess.run([tool, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout.strip()
    pid = target.pids[0]
    messages = sum(len(w.messages) for w in work)
    try:
        _record(tool, pid, "raw", raw, ["--gil", "--nolineno"],
                lambda: run_level(target.addresses, work, concurrency, options, time_limit),
                log_path)
        _record(tool, pid, "flamegraph", svg, ["--gil"],
                lambda: run_level(target.addresses, svg_work, concurrency, options, time_limit),
                log_path)
    except (OSError, RuntimeError) as exc:
        return {"skipped": f"py-spy failed: {exc}"}
    if not raw.exists():
        return {"skipped": f"py-spy wrote no output (see {log_path})"}
    result = parse_raw(raw.read_text())
    log_path.unlink(missing_ok=True)
    return {"tool": f"{version or 'py-spy'} record --gil --rate {RATE}", "target": target.key,
            "concurrency": concurrency, "messages_per_pass": messages,
            "raw": raw.name, "svg": svg.name if svg.exists() else None, **result}
